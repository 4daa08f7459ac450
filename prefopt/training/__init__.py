"""Training: typed run options (:mod:`.config`), the run lifecycle (:mod:`.run`),
checkpoints, several processes, and the offline and online loops."""
