"""The one entry to training, used by the command line, the benchmark and the Python API.

It picks the loop from the algorithm's declared capability (``online``), never
from its name; both loops run the same lifecycle (:mod:`prefopt.training.lifecycle`).
"""

from __future__ import annotations

from pathlib import Path

from prefopt.core.algorithm import Algorithm
from prefopt.training.config import RunConfig
from prefopt.training.lifecycle import default_output_dir
from prefopt.training.offline import train_offline
from prefopt.training.online import train_online


def train(algo_name: str, algorithm: Algorithm, run: RunConfig, resume_dir: Path | None = None) -> dict:
    """Train `algorithm` as configured by `run` (or resume the run in `resume_dir`); returns the run summary."""
    out = Path(resume_dir) if resume_dir else Path(run.output_dir or default_output_dir(algo_name))
    loop = train_online if algorithm.online else train_offline
    return loop(algo_name, algorithm, run, out, resume=resume_dir is not None)
