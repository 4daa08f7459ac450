"""Reward functions as judges: any Python callable (``python:MODULE:FUNCTION``), alone or in a weighted sum.

A reward function has trl's signature (GRPOTrainer's ``reward_funcs``)::

    def my_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]: ...

``prompts`` are the texts of each conversation's last user turn, ``completions`` the
responses, both passed by keyword; ``**kwargs`` must be accepted (dataset columns may be
passed there later). It returns one finite number per completion, higher is better.

The module is imported with :mod:`importlib`, with the current working directory put first
on ``sys.path`` for that import only (so ``prefopt run ... judge=python:my_rewards:brevity``
finds ``./my_rewards.py``, as ``python -m`` would), then taken out again.

:class:`WeightedJudge` scores with ``sum(weight_i * score_i)`` over scoring judges (gold,
reward, python, ...) and keeps each judge's scores of the last call in ``last_components``
so a training loop can log them apart. ``make_judge("python:a:f,gold:qa", weights=[1, 0.5])``
builds one.
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from prefopt.data.records import last_user_message
from prefopt.errors import PrefoptError, first_line
from prefopt.judges.base import Judge, check_same_length

USAGE = "python:MODULE:FUNCTION, e.g. python:my_rewards:brevity for brevity() in ./my_rewards.py"


def can_score(judge: Judge | type[Judge]) -> bool:
    """Whether a judge (or judge class) scores one response alone; the pairwise ones (lm, http) only compare."""
    cls = judge if isinstance(judge, type) else type(judge)
    return cls.score is not Judge.score


@contextmanager
def _cwd_first():
    """The current working directory first on sys.path for the duration of one import."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if sys.path and sys.path[0] == cwd:
            del sys.path[0]
        elif cwd in sys.path:  # the import reordered sys.path; drop the entry we added (the first one)
            sys.path.remove(cwd)


def _public_callables(module) -> list[str]:
    return [n for n, v in vars(module).items() if not n.startswith("_") and callable(v)]


def load_function(target: str, name: str) -> Callable:
    """The callable that 'MODULE:FUNCTION' names (FUNCTION may be dotted: Class.method); one-line errors naming `name`."""
    module_name, sep, attr = target.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not sep or not module_name or not attr:
        raise PrefoptError(f"{name}: a python judge is {USAGE}; got '{target}'")
    importlib.invalidate_caches()  # a module written since the interpreter started (a notebook, a test) is found
    try:
        with _cwd_first():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise PrefoptError(
                f"{name}: no module named '{module_name}' (looked in the current directory {os.getcwd()}, "
                "then sys.path)"
            ) from None
        raise PrefoptError(f"{name}: importing {module_name} failed: {type(e).__name__}: {first_line(e)}") from e
    except Exception as e:  # the module's own code raised (a syntax error, a failed import, ...)
        raise PrefoptError(f"{name}: importing {module_name} failed: {type(e).__name__}: {first_line(e)}") from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            close = difflib.get_close_matches(attr, _public_callables(module), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            where = getattr(module, "__file__", None) or module_name
            raise PrefoptError(f"{name}: module {module_name} ({where}) has no attribute '{attr}'{hint}") from None
    if not callable(obj):
        raise PrefoptError(f"{name}: {module_name}.{attr} is a {type(obj).__name__}, not a callable")
    return obj


def _as_float(value) -> float | None:
    """A finite or non-finite float from a number (bool, int, float, numpy scalar, 0-d tensor); None if not one."""
    if isinstance(value, numbers.Real):
        return float(value)
    if value is None or isinstance(value, (str, bytes)) or not hasattr(type(value), "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):  # e.g. a tensor of more than one element
        return None


def check_scores(out, n: int, name: str) -> list[float]:
    """A reward function's return value as n finite floats, or a one-line error naming `name` (and the row)."""
    if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # numpy arrays, torch tensors
        out = out.tolist()
    if not isinstance(out, Sequence) or isinstance(out, (str, bytes)):
        raise PrefoptError(f"{name} returned a {type(out).__name__}, expected a list of {n} numbers")
    if len(out) != n:
        raise PrefoptError(f"{name} returned {len(out)} scores for {n} completions")
    scores = []
    for i, value in enumerate(out, start=1):
        if value is None:
            raise PrefoptError(f"{name}: row {i} of {n}: None (return a number for every completion)")
        x = _as_float(value)
        if x is None:
            text = repr(value)
            text = text if len(text) <= 60 else text[:57] + "..."
            raise PrefoptError(f"{name}: row {i} of {n}: {text} is a {type(value).__name__}, not a number")
        if not math.isfinite(x):
            raise PrefoptError(f"{name}: row {i} of {n}: {x} (scores must be finite)")
        scores.append(x)
    return scores


class PythonJudge(Judge):
    """A Python reward function fn(prompts=[...], completions=[...], **kwargs) -> list[float], as trl takes them."""

    def __init__(self, function: str | Callable = ""):
        if callable(function):
            self.function = function
            module = getattr(function, "__module__", None) or "?"
            qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
            self.name = f"python:{module}:{qualname}"
        else:
            self.name = f"python:{function}"
            if not function:
                raise PrefoptError(f"the python judge needs a function: {USAGE}")
            self.function = load_function(function, self.name)

    def score(self, prompts, responses) -> list[float]:
        check_same_length(prompts, responses)
        n = len(responses)
        if n == 0:
            return []
        texts = [last_user_message(p) for p in prompts]
        try:
            out = self.function(prompts=texts, completions=list(responses))
        except Exception as e:  # the user's code: any error becomes one line naming it
            hint = ""
            if isinstance(e, TypeError) and "keyword argument" in str(e):
                hint = " (a reward function takes prompts=..., completions=... and **kwargs)"
            raise PrefoptError(
                f"{self.name} raised {type(e).__name__} on a batch of {n} rows: {first_line(e)}{hint}"
            ) from e
        return check_scores(out, n, self.name)

    def __repr__(self) -> str:
        return f"PythonJudge({self.name!r})"


def check_weights(weights: Sequence[float] | str | None, n: int, what: str = "") -> list[float]:
    """n finite weights (all 1.0 when None); a string is comma-separated ('1,0.5'). One-line errors."""
    if weights is None:
        return [1.0] * n
    items = [w.strip() for w in weights.split(",")] if isinstance(weights, str) else list(weights)
    values = []
    for w in items:
        try:
            x = float(w)
        except (TypeError, ValueError):
            raise PrefoptError(f"judge weight {w!r} is not a number") from None
        if not math.isfinite(x):
            raise PrefoptError(f"judge weight {w!r} is not a finite number")
        values.append(x)
    if len(values) != n:
        judges = "judge" if n == 1 else "judges"
        target = f" in '{what}'" if what else ""
        raise PrefoptError(f"{len(values)} judge weights for {n} {judges}{target}: give one weight per judge, in order")
    return values


def _unique(names: Sequence[str]) -> list[str]:
    """Names as keys: a repeated one gets '#2', '#3', ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _name_of(judge: Judge) -> str:
    return getattr(judge, "name", None) or repr(judge)


class WeightedJudge(Judge):
    """A weighted sum of scoring judges; each one's scores of the last call are kept in last_components."""

    def __init__(self, judges: Sequence[Judge], weights: Sequence[float] | str | None = None,
                 names: Sequence[str] | None = None):  # fmt: skip
        judges = list(judges)
        if not judges:
            raise PrefoptError("a weighted judge needs at least one judge")
        names = [_name_of(j) for j in judges] if names is None else list(names)
        if len(names) != len(judges):
            raise PrefoptError(f"{len(names)} names for {len(judges)} judges")
        for name, judge in zip(names, judges):
            if not can_score(judge):
                raise PrefoptError(compare_only_error(name))
        self.judges = judges
        self.weights = check_weights(weights, len(judges), " + ".join(names))
        self.names = _unique(names)
        self.last_components: dict[str, list[float]] = {}

    def score(self, prompts, responses) -> list[float]:
        check_same_length(prompts, responses)
        n = len(responses)
        total = [0.0] * n
        components: dict[str, list[float]] = {}
        for name, weight, judge in zip(self.names, self.weights, self.judges):
            scores = [float(x) for x in judge.score(prompts, responses)]
            if len(scores) != n:
                raise PrefoptError(f"judge {name} returned {len(scores)} scores for {n} responses")
            components[name] = scores
            total = [t + weight * x for t, x in zip(total, scores)]
        self.last_components = components
        return total

    def component_means(self) -> dict[str, float]:
        """Each judge's mean score over the last score() call (compare() calls score() twice: the b side)."""
        return {name: sum(s) / len(s) for name, s in self.last_components.items() if s}

    def __repr__(self) -> str:
        terms = " + ".join(f"{w:g}*{name}" for w, name in zip(self.weights, self.names))
        return f"WeightedJudge({terms})"


def compare_only_error(name: str) -> str:
    return (
        f"judge '{name}' only compares two responses (it gives no score), so it cannot be part of a weighted sum; "
        "combine judges that score (gold, reward, python)"
    )
