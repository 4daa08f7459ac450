"""The core every objective shares: the algorithm contract and its public helpers
(:mod:`.algorithm`), token log-probs (:mod:`.logprobs`, the one place that shifts,
masks and reduces them), models and adapters (:mod:`.models`, :mod:`.heads`), the
reference (:mod:`.reference`), sampling (:mod:`.generate`), RL estimators
(:mod:`.rl`; the group-based ones of GRPO, RLOO, REINFORCE++, DAPO and GSPO in :mod:`.advantages`) and
plugin discovery (:mod:`.registry`)."""
