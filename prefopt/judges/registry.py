"""Finding judges: kinds come from the entry-point group ``prefopt.judges`` only.

prefopt registers its built-in judges there (pyproject.toml) exactly as a
plugin package registers its own, so one registry serves both.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Sequence

from prefopt.core import registry
from prefopt.core.registry import Entry
from prefopt.errors import PrefoptError
from prefopt.judges.base import Judge
from prefopt.judges.python import WeightedJudge, can_score, check_weights, compare_only_error

GROUP = "prefopt.judges"


def judge_kinds() -> dict[str, list[Entry]]:
    """Every judge kind -> its entries in group prefopt.judges (more than one provider is a clash).

    The built-ins are there only once prefopt is installed (``pip install -e .``
    for a source tree), like any plugin.
    """
    return registry.discover(GROUP, Judge)


def split_spec(spec: str) -> tuple[str, str]:
    """'kind:arg' -> (kind, arg); a bare http(s) URL is the http judge."""
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        return "http", spec
    kind, _, arg = spec.partition(":")
    return kind.strip(), arg.strip()


def _check_options(kind: str, cls: type[Judge], options: dict) -> None:
    """Unknown option names are a one-line error with a suggestion, not a TypeError deep inside."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n in params if n != "self"]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (options: {', '.join(known)})"
            raise PrefoptError(f"judge '{kind}' has no option '{name}'{hint}")


def split_specs(spec: str, kinds: Iterable[str]) -> list[str]:
    """'python:a:f,gold:qa' -> ['python:a:f', 'gold:qa'].

    Splits only at a comma followed by a judge kind ('kind:...', a bare 'kind', or an http(s) URL), so a
    comma inside a path, a URL or a function name stays; a spec without such a comma is one judge.
    """
    names = "|".join(re.escape(k) for k in sorted(kinds, key=len, reverse=True))
    kind = rf"(?:{names})(?::|\s*,|\s*$)" if names else r"(?!)"
    parts = re.split(rf",(?=\s*(?:https?://|{kind}))", spec)
    return [p.strip() for p in parts]


def _resolve(spec: str, kinds: dict[str, list[Entry]]) -> tuple[str, str, type[Judge]]:
    kind, arg = split_spec(spec)
    cls = registry.resolve(kinds, kind, "judge kind", f" (available: {', '.join(sorted(kinds))})")
    return kind, arg, cls


def _build(kind: str, arg: str, cls: type[Judge], model_options: dict | None, options: dict) -> Judge:
    if cls.runs_model and model_options:
        options = {**model_options, **options}
    _check_options(kind, cls, options)
    return cls.from_spec(arg, **options)


def make_judge(spec: str, model_options: dict | None = None, weights: Sequence[float] | str | None = None,
               **options) -> Judge:  # fmt: skip
    """A judge from 'kind:arg' ('gold:qa', 'reward:RUN_DIR', 'lm:MODEL', 'http:URL', 'python:MODULE:FUNCTION');
    options go to its constructor.

    model_options (e.g. device, precision) go to it too, but only when it runs a local model
    (``runs_model``): a caller can pass them for any judge spec.

    Several comma-separated specs ('python:my_rewards:brevity,gold:qa'), or any ``weights``, give a
    :class:`~prefopt.judges.python.WeightedJudge`: the weighted sum of their scores (weights default to 1.0,
    one per spec, in order; a string '1,0.5' is read too). Every part must score (not lm or http, which only
    compare): that is checked before any judge is built. Options go to one judge, so a combination takes none
    (model_options still reach each part that runs a model).
    """
    kinds = judge_kinds()
    specs = split_specs(spec, kinds)
    if len(specs) == 1 and weights is None:
        kind, arg, cls = _resolve(specs[0], kinds)
        return _build(kind, arg, cls, model_options, options)
    if any(not s for s in specs):
        raise PrefoptError(
            f"empty judge spec in '{spec}' (comma-separated specs, e.g. python:my_rewards:brevity,gold:qa)"
        )
    values = check_weights(weights, len(specs), spec)
    if options:
        raise PrefoptError(
            f"judge options ({', '.join(options)}) apply to one judge, and '{spec}' combines {len(specs)}; "
            "give the options in each judge's own constructor instead"
        )
    resolved = [_resolve(s, kinds) for s in specs]
    for s, (_, _, cls) in zip(specs, resolved):
        if not can_score(cls):
            raise PrefoptError(compare_only_error(s))
    parts = [_build(kind, arg, cls, model_options, {}) for kind, arg, cls in resolved]
    return WeightedJudge(parts, values, names=specs)
