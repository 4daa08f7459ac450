"""The task contract: prompts in two fixed splits and a gold rule.

A :class:`Task` gives user-message texts for a ``"train"`` and a ``"heldout"``
split (deterministic, never sharing a text) and a gold score for any (prompt,
response) computed from those two strings alone. (Sycophancy is measured on
probes of its own, not a task's: :mod:`prefopt.evaluation.sycophancy`.)

Built-in tasks: ``qa`` (:mod:`prefopt.tasks.qa`), ``constraints``
(:mod:`prefopt.tasks.constraints`) and ``tone`` (:mod:`prefopt.tasks.tone`);
a benchmark suite can add its own from a prompts file and a gold function or
judge (:mod:`prefopt.bench.custom_task`).

Splits of the built-in tasks: each has a fixed, ordered pool of distinct
prompts; :func:`hash_split` puts a text in heldout when the first 8 bytes of
its SHA-256 (big-endian) are 0 modulo 5 (about 20%), else in train.
``prompts(split, n)`` is the first n texts of that split in pool order, so a
smaller n is a prefix of a larger one.
"""

from __future__ import annotations

import hashlib

from prefopt.data.records import last_user_message
from prefopt.errors import PrefoptError

SPLITS = ("train", "heldout")
HELDOUT_MODULUS = 5  # one text in HELDOUT_MODULUS (by hash) is heldout


def hash_split(text: str) -> str:
    """'heldout' for about 1 text in 5 (a stable hash of the text), else 'train'."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0 else "train"


class Task:
    """A benchmark task: prompts in a train and a heldout split, and a gold rule.

    Subclasses set name, description and gold_range, and implement gold() and
    either _split_prompts() (a fixed ordered pool per split) or prompts().
    """

    name: str = ""
    description: str = ""  # one line
    gold_range: tuple[float, float] = (0.0, 1.0)  # the documented range of gold()

    def _split_prompts(self, split: str) -> tuple[str, ...]:
        raise NotImplementedError(f"task '{self.name}' does not define its prompts")

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise PrefoptError(f"task '{self.name}': unknown split {split!r} (expected train or heldout)")

    def available(self, split: str) -> int:
        """How many prompts the split has."""
        self._check_split(split)
        return len(self._split_prompts(split))

    def prompts(self, split: str, n: int) -> list[str]:
        """The first n user-message texts of `split` ("train" or "heldout"); deterministic."""
        self._check_split(split)
        pool = self._split_prompts(split)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PrefoptError(f"task '{self.name}': the number of prompts must be at least 1, got {n!r}")
        if n > len(pool):
            raise PrefoptError(f"task '{self.name}': the {split} split has {len(pool)} prompts, asked for {n}")
        return list(pool[:n])

    def gold(self, prompt: str, response: str) -> float:
        """The gold score of one response (higher is better; range gold_range)."""
        raise NotImplementedError(f"task '{self.name}' does not define its gold rule")

    def gold_scores(self, prompts, responses) -> list[float]:
        """gold() per (prompt, response); prompts are strings (or message lists: the last user message counts)."""
        if len(prompts) != len(responses):
            raise PrefoptError(
                f"task '{self.name}': gold_scores got {len(prompts)} prompts and {len(responses)} responses"
            )
        return [float(self.gold(last_user_message(p), r)) for p, r in zip(prompts, responses)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# name -> "module:Class" of the built-in tasks (imported on first use)
BUILTIN_TASKS = {
    "constraints": "prefopt.tasks.constraints:ConstraintsTask",
    "qa": "prefopt.tasks.qa:QATask",
    "tone": "prefopt.tasks.tone:ToneTask",
}


def task_names() -> list[str]:
    """The built-in task names."""
    return sorted(BUILTIN_TASKS)


def get_task(spec: str) -> Task:
    """A built-in task by name ("qa", "constraints", "tone").

    A benchmark suite may also define its own task from a prompts file and a gold
    function or judge: see :mod:`prefopt.bench.custom_task`.
    """
    available = ", ".join(task_names())
    if not isinstance(spec, str):
        raise PrefoptError(f"a task is a name ({available}) or a dict for a custom task, got {type(spec).__name__}")
    name = spec.strip()
    if name not in BUILTIN_TASKS:
        raise PrefoptError(
            f"unknown task '{name}' (available: {available}; or a dict with name, prompts and gold for a custom task)"
        )
    import importlib

    module, _, cls = BUILTIN_TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
