"""Finding judges: kinds come from the entry-point group ``prefopt.judges`` only.

prefopt registers its built-in judges there (pyproject.toml) exactly as a
plugin package registers its own, so one registry serves both.
"""

from __future__ import annotations

import difflib
import inspect

from prefopt.core import registry
from prefopt.core.registry import Entry
from prefopt.errors import PrefoptError
from prefopt.judges.base import Judge

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


def make_judge(spec: str, model_options: dict | None = None, **options) -> Judge:
    """A judge from 'kind:arg' ('gold:qa', 'reward:RUN_DIR', 'lm:MODEL', 'http:URL'); options go to its constructor.

    model_options (e.g. device, precision) go to it too, but only when it runs a local model
    (``runs_model``): a caller can pass them for any judge spec.
    """
    kind, arg = split_spec(spec)
    kinds = judge_kinds()
    cls = registry.resolve(kinds, kind, "judge kind", f" (available: {', '.join(sorted(kinds))})")
    if cls.runs_model and model_options:
        options = {**model_options, **options}
    _check_options(kind, cls, options)
    return cls.from_spec(arg, **options)
