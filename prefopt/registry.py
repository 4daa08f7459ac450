"""Algorithm discovery through the entry-point group ``prefopt.algorithms``.

Built-in objectives are registered in prefopt's own pyproject.toml exactly as a
third-party package registers its own, so both are found the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import entry_points

from prefopt.algorithm import Algorithm
from prefopt.errors import PrefoptError

GROUP = "prefopt.algorithms"


@dataclass
class Entry:
    name: str
    package: str  # the distribution that provides it
    target: str  # "module:Class"
    cls: type[Algorithm] | None = None
    error: str | None = None  # why it could not be loaded

    @property
    def description(self) -> str:
        return self.cls.description() if self.cls else f"error: {self.error}"


def _load(ep) -> Entry:
    package = ep.dist.name if ep.dist is not None else "?"
    entry = Entry(name=ep.name, package=package, target=ep.value)
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
        entry.error = f"failed to import {ep.value}: {type(exc).__name__}: {exc}".splitlines()[0]
        return entry
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        entry.error = f"{ep.value} is not a prefopt.algorithm.Algorithm subclass"
    else:
        entry.cls = cls
    return entry


def discover() -> dict[str, list[Entry]]:
    """Every registered name -> its entries (more than one means a clash)."""
    found: dict[str, list[Entry]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in entry_points(group=GROUP):
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        found.setdefault(ep.name, []).append(_load(ep))
    return found


def get(name: str) -> type[Algorithm]:
    """The algorithm class registered as `name`, or a one-line error."""
    found = discover()
    if name not in found:
        close = difflib.get_close_matches(name, sorted(found), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PrefoptError(f"unknown algorithm '{name}'{hint} (see: prefopt list)")
    entries = found[name]
    if len(entries) > 1:
        providers = ", ".join(f"{e.package} ({e.target})" for e in entries)
        raise PrefoptError(f"algorithm name '{name}' is registered more than once: {providers}")
    entry = entries[0]
    if entry.cls is None:
        raise PrefoptError(f"algorithm '{name}' from {entry.package}: {entry.error}")
    return entry.cls
