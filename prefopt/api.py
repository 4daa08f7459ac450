"""The Python API: the runs, checks and errors of the command line, from Python.

    import prefopt
    summary = prefopt.run(algo="dpo", data="pairs.jsonl", steps=100, beta=0.2)
    summary = prefopt.run(algo="sft", data=[{"prompt": "2+2?", "completion": " 4"}], steps=10)
    prefopt.list_algorithms()

``data`` is a path (or anything ``--data`` takes), a list of dicts, or a ``datasets.Dataset`` / ``DatasetDict``
(its ``train`` split). In-memory rows are written once to a content-addressed JSON-lines file under prefopt's
cache (``$PREFOPT_HOME/data/<hash>.jsonl``), so a run records a real path, resumes, and its errors name a file and
a row like any other. Options are ``prefopt run``'s (Hugging Face / trl names included); a bad one raises
:class:`prefopt.PrefoptError` with the CLI's one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from prefopt.errors import PrefoptError


def list_algorithms() -> list[str]:
    """The registered algorithms' names (built-in and plugins), sorted."""
    from prefopt.core.registry import discover

    return sorted(discover())


def run(algo: str = "dpo", data: Any = None, **options) -> dict:
    """Train one algorithm, as ``prefopt run --algo ALGO --data DATA key=value ...``; returns the run summary
    (the dict written to the run folder's summary.json)."""
    from prefopt.core import registry
    from prefopt.training.config import split_options
    from prefopt.training.runner import train

    values = dict(options)
    if data is not None:
        values["data"] = data_source(data)
    algo_cls = registry.get(algo)
    run_config, algo_config = split_options(values, algo_cls.Config, "prefopt.run()")
    return train(algo, algo_cls(algo_config), run_config)


def data_source(data: Any) -> str:
    """What ``--data`` would be for a path, a list of dicts or a datasets Dataset / DatasetDict."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise PrefoptError(f"data: a DatasetDict without a 'train' split (splits: {', '.join(data)})")
        data = data["train"]
    if datasets is not None and isinstance(data, datasets.Dataset):
        data = data.to_list()
    if not isinstance(data, (list, tuple)):
        raise PrefoptError(f"data: expected a path, a list of dicts or a datasets Dataset, got {type(data).__name__}")
    return _rows_file(list(data))


def _rows_file(rows: list) -> str:
    """The rows as a JSON-lines file named by their content hash (written once, atomically)."""
    from prefopt.core.models import prefopt_home
    from prefopt.io import atomic_write_text

    lines = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise PrefoptError(f"data row {i}: expected a dict, got {type(row).__name__}")
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise PrefoptError(f"data row {i}: not representable as JSON ({e})") from None
    text = "".join(line + "\n" for line in lines)
    path = prefopt_home() / "data" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.exists():
        atomic_write_text(path, text)
    return str(path)
