"""Plugin discovery through entry points: algorithms (group ``prefopt.algorithms``)
and judges (group ``prefopt.judges``) are found the same way.

Built-in objectives and judges are registered in prefopt's own pyproject.toml
exactly as a third-party package registers its own, so both are found alike.
A plugin that fails to import becomes an entry with an error (the others
still work); two providers of one name make that name an error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import entry_points

from prefopt.core.algorithm import Algorithm
from prefopt.errors import PrefoptError

GROUP = "prefopt.algorithms"


@dataclass
class Entry:
    name: str
    package: str  # the distribution that provides it
    target: str  # "module:Class"
    cls: type | None = None
    error: str | None = None  # why it could not be loaded

    @property
    def description(self) -> str:
        if self.cls is None:
            return f"error: {self.error}"
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""


def _load(ep, base: type) -> Entry:
    package = ep.dist.name if ep.dist is not None else "?"
    entry = Entry(name=ep.name, package=package, target=ep.value)
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
        entry.error = f"failed to import {ep.value}: {type(exc).__name__}: {exc}".splitlines()[0]
        return entry
    if not (isinstance(cls, type) and issubclass(cls, base)):
        entry.error = f"{ep.value} is not a {base.__module__}.{base.__qualname__} subclass"
    else:
        entry.cls = cls
    return entry


def discover(group: str = GROUP, base: type = Algorithm) -> dict[str, list[Entry]]:
    """Every name registered in `group` -> its entries (more than one means a clash)."""
    found: dict[str, list[Entry]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in entry_points(group=group):
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        found.setdefault(ep.name, []).append(_load(ep, base))
    return found


def resolve(found: dict[str, list[Entry]], name: str, what: str, see: str = "") -> type:
    """The class registered as `name`, or a one-line error naming `what` it is."""
    if name not in found:
        close = difflib.get_close_matches(name, sorted(found), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PrefoptError(f"unknown {what} '{name}'{hint}{see}")
    entries = found[name]
    if len(entries) > 1:
        providers = ", ".join(f"{e.package} ({e.target})" for e in entries)
        raise PrefoptError(f"{what} '{name}' is registered more than once: {providers}")
    entry = entries[0]
    if entry.cls is None:
        raise PrefoptError(f"{what} '{name}' from {entry.package}: {entry.error}")
    return entry.cls


def get(name: str) -> type[Algorithm]:
    """The algorithm class registered as `name`, or a one-line error."""
    return resolve(discover(), name, "algorithm", " (see: prefopt list)")
