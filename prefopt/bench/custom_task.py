"""Custom tasks: the user's prompts file and gold function (or judge).

``resolve_task({"name": "mytask", "prompts": "path/prompts.jsonl", "gold": "package.module:function"})``

- ``prompts``: a .jsonl file, one JSON object per line with a non-empty
  ``"prompt"`` string and optionally ``"split"`` (``"train"`` or
  ``"heldout"``). A row without a split goes where
  :func:`prefopt.tasks.base.hash_split` puts its text (about 20% heldout).
  Blank lines are skipped; rows are numbered by line (1-based). A text seen
  again is dropped (the first occurrence decides its split), so the splits
  never share a text; prompts(split, n) gives the split's first n texts in
  file order.
- ``gold``: ``"package.module:function"``, called as ``fn(prompt, response)``
  and returning a number; or any judge spec that :func:`prefopt.judges.make_judge`
  accepts (``"reward:RUN_DIR"``, ``"gold:qa"``, ...), recognised by its kind
  before the ':'; gold_scores() then returns the judge's ``score(prompts,
  responses)``. The judge is built on first use.
- ``name``: a plain name (letters, digits, ``.``, ``_``, ``-``; see
  :func:`prefopt.bench.paths.check_name`): it becomes a folder name.
- optional ``description`` (one line).

Probes are the qa task's. Bad input is a one-line PrefoptError naming the
task, the file, the row and the field.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from prefopt.bench.paths import check_name
from prefopt.errors import PrefoptError
from prefopt.tasks.base import BUILTIN_TASKS, SPLITS, Task, get_task, hash_split

KEYS = ("name", "prompts", "gold", "description")


def resolve_task(spec: str | dict) -> Task:
    """A suite's task: a built-in one by name, or a custom one from its dict (name, prompts, gold)."""
    return custom_task(spec) if isinstance(spec, dict) else get_task(spec)


def custom_task(spec: dict) -> CustomTask:
    """A CustomTask from its dict (see the module docstring)."""
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PrefoptError(f"custom task: 'name' must be a non-empty string, got {name!r}")
    check_name(name, "custom task field 'name'")  # it becomes a folder name: <work>/<name>/prep
    where = f"custom task '{name}'"
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise PrefoptError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (expected: {', '.join(KEYS)})")
    if name in BUILTIN_TASKS:
        raise PrefoptError(f"{where}: the name is taken by a built-in task; choose another")
    for key in ("prompts", "gold"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise PrefoptError(f"{where}: '{key}' must be a non-empty string, got {spec.get(key)!r}")
    description = spec.get("description") or f"custom task from {spec['prompts']}"
    if not isinstance(description, str):
        raise PrefoptError(f"{where}: 'description' must be a string, got {description!r}")
    splits = _read_prompts(Path(spec["prompts"]).expanduser(), where)
    return CustomTask(name, description.strip(), splits, spec["gold"].strip(), where)


def _read_prompts(path: Path, where: str) -> dict[str, tuple[str, ...]]:
    if not path.is_file():
        raise PrefoptError(f"{where}: prompts file {path} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrefoptError(f"{where}: cannot read prompts file {path} ({e})") from None
    placed: dict[str, str] = {}  # text -> split, in file order
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        at = f"{where}: {path} row {row}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrefoptError(f"{at}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise PrefoptError(f"{at}: expected a JSON object with a 'prompt' field, got {type(record).__name__}")
        if "prompt" not in record:
            raise PrefoptError(f"{at} field 'prompt': missing")
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise PrefoptError(f"{at} field 'prompt': must be a non-empty string, got {text!r}")
        split = record.get("split")
        if split is not None and split not in SPLITS:
            raise PrefoptError(f"{at} field 'split': must be 'train' or 'heldout', got {split!r}")
        if text in placed:
            if split is not None and split != placed[text]:
                raise PrefoptError(f"{at} field 'split': this prompt appeared earlier in the {placed[text]} split")
            continue
        placed[text] = split or hash_split(text)
    if not placed:
        raise PrefoptError(f"{where}: prompts file {path} has no prompts")
    return {s: tuple(text for text, split in placed.items() if split == s) for s in SPLITS}


def _resolve_gold(gold: str, where: str):
    """('judge', spec) for a judge spec, else ('function', callable); errors name the field."""
    module_name, sep, attr = gold.partition(":")
    if not sep or not module_name or not attr:
        raise PrefoptError(
            f"{where} field 'gold': expected 'package.module:function' or a judge spec such as "
            f"'reward:RUN_DIR', got {gold!r}"
        )
    from prefopt.judges import judge_kinds

    if module_name in judge_kinds():
        return "judge", gold
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises on import is reported in one line
        raise PrefoptError(f"{where} field 'gold': cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise PrefoptError(f"{where} field 'gold': {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise PrefoptError(f"{where} field 'gold': {gold!r} is not callable (got {type(target).__name__})")
    return "function", target


class CustomTask(Task):
    """A task from the user's prompts file and gold function or judge."""

    gold_range = (float("-inf"), float("inf"))  # whatever the user's rule returns

    def __init__(self, name: str, description: str, splits: dict[str, tuple[str, ...]], gold: str, where: str):
        self.name, self.description, self._splits, self.gold_spec, self._where = name, description, splits, gold, where
        self._kind, target = _resolve_gold(gold, where)
        self._fn = target if self._kind == "function" else None
        self._judge = None

    def _split_prompts(self, split: str) -> tuple[str, ...]:
        return self._splits[split]

    def judge(self):
        """The judge named by gold (built on first use); None when gold is a function."""
        if self._kind != "judge":
            return None
        if self._judge is None:
            from prefopt.judges import make_judge

            self._judge = make_judge(self.gold_spec)
        return self._judge

    def gold(self, prompt: str, response: str) -> float:
        if self._kind == "judge":
            return self.gold_scores([prompt], [response])[0]
        value = self._fn(prompt, response)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PrefoptError(
                f"{self._where}: gold function {self.gold_spec} returned {value!r}, not a number"
            ) from None

    def gold_scores(self, prompts, responses) -> list[float]:
        if self._kind != "judge":
            return super().gold_scores(prompts, responses)
        if len(prompts) != len(responses):
            raise PrefoptError(
                f"task '{self.name}': gold_scores got {len(prompts)} prompts and {len(responses)} responses"
            )
        return [float(x) for x in self.judge().score(list(prompts), list(responses))]
