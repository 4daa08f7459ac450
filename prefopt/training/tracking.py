"""Experiment trackers (``report_to=tensorboard,wandb,...``) through Accelerate's tracker classes.

A run logs the same rows to its trackers as to metrics.jsonl (numbers only, at their step) and its resolved
options as the tracker's configuration. TensorBoard writes into ``<run>/tracking/``; wandb, MLflow and trackio use
their own settings (``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``, ...). Only the process that writes the run
folder logs.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from prefopt.errors import PrefoptError

# tracker name -> the package it needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
TRACKING_DIR = "tracking"


def parse_report_to(spec: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' or '' -> []; unknown names and trackers whose
    package is not installed are one-line errors."""
    names = [n.strip().lower() for n in str(spec or "").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    for name in names:
        if name not in TRACKERS:
            raise PrefoptError(f"option 'report_to': unknown tracker '{name}' (choose from {', '.join(TRACKERS)}, "
                               "comma-separated, or none)")  # fmt: skip
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise PrefoptError(f"option 'report_to': {name} is not installed (pip install {TRACKERS[name]})")
    if len(set(names)) != len(names):
        raise PrefoptError(f"option 'report_to': a tracker is named twice ({spec})")
    return names


def _make(name: str, run_dir: Path, run_name: str):
    from accelerate import tracking

    if name == "tensorboard":
        return tracking.TensorBoardTracker(run_name, str(run_dir / TRACKING_DIR))
    if name == "wandb":
        return tracking.WandBTracker(run_name)
    if name == "mlflow":
        return tracking.MLflowTracker(run_name)
    return tracking.TrackioTracker(run_name)


class Trackers:
    """The run's trackers: started with its options, fed every metrics row, finished with the run."""

    def __init__(self, names: list[str], run_dir: Path, config: dict):
        from accelerate import PartialState

        PartialState()  # Accelerate's trackers log through its logger, which needs its state (joins an existing
        # process group; creates a one-process state otherwise)
        self.trackers = []
        for name in names:
            tracker = _make(name, Path(run_dir), Path(run_dir).name)
            tracker.main_process_only = False  # only the run folder's writer makes trackers at all
            tracker.start()
            tracker.store_init_configuration({k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
                                              for k, v in config.items()})  # fmt: skip
            self.trackers.append(tracker)

    def log(self, row: dict) -> None:
        values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))
                  and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip
        if not values:
            return
        for tracker in self.trackers:
            tracker.log(values, step=row.get("step"))
            writer = getattr(tracker, "writer", None)
            if writer is not None and hasattr(writer, "flush"):
                writer.flush()  # a killed run keeps every step it logged

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
