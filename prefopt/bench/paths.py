"""Names that become folders, removing only inside the bench's own folders, and one bench per results folder.

A suite file, its task files and a results folder are untrusted input, so:

- suite, task and algorithm names are plain names (:func:`check_name`): they become folder names
  (``runs/bench/<suite>/<task>/<algo>/seed<k>``, ``results/<suite>``) and must not climb out of them;
- every removal in :mod:`prefopt.bench` goes through :func:`remove_inside`, which refuses anything that is not
  strictly inside the folder it names as the root;
- :func:`results_lock` is an exclusive lock on ``results.csv.lock`` beside the CSV, held for a whole bench run,
  so a second bench on the same results folder is refused instead of rewriting the CSV under the first.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefopt.errors import PrefoptError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters"


def is_plain_name(name: object) -> bool:
    """Whether `name` can be one folder name: no separators, not '.' or '..', no leading dot or dash."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None and name not in (".", "..")


def check_name(name: object, where: str) -> str:
    """`name` if it is a plain name, else a one-line error naming `where` (the file and the field)."""
    if not is_plain_name(name):
        raise PrefoptError(f"{where}: must be a plain name ({NAME_RULE}), got {name!r}")
    return name


def _located(path: Path) -> Path:
    """`path` with its folders resolved (symlinks, '..') but its last component kept: a link is removed, not
    followed."""
    path = Path(path) if Path(path).is_absolute() else Path.cwd() / path  # no lexical '..' collapsing
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def remove_inside(root: Path, path: Path) -> None:
    """Remove `path` (a folder tree, a file or a link; nothing if absent), but only if it is strictly inside
    `root`; anything else is refused with a PrefoptError and left as it is."""
    root_resolved, target = Path(root).resolve(), _located(Path(path))
    if root_resolved not in target.parents:
        raise PrefoptError(f"refusing to remove {path}: it is not inside {root}")
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)
    elif target.is_dir():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink(missing_ok=True)


LOCK_SUFFIX = ".lock"


@contextmanager
def results_lock(csv: Path) -> Iterator[Path]:
    """Hold the exclusive lock of a results CSV (``<csv>.lock``, which records the holder's pid) while the body runs.

    Taken without waiting: when another process (or another bench in this one) holds it, a one-line PrefoptError
    names the lock file and the holder's pid. The lock ends with the process, so a killed bench never leaves a
    stale one.
    """
    import fcntl

    lock = Path(str(csv) + LOCK_SUFFIX)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PrefoptError(f"{lock}: cannot lock the results folder ({e.strerror})") from None
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise PrefoptError(
                f"{lock}: another prefopt bench (pid {holder}) is writing to {lock.parent}; "
                "wait for it to finish or use another --results folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
