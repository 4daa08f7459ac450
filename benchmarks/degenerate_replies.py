"""Degenerate replies against the built-in tasks' gold rules: can a reply that ignores the prompt score well?

For every built-in task, the mean gold score over the first N held-out prompts
of a battery of degenerate replies: empty, whitespace only, an echo of the
prompt, "YES", "NO", 300-token fillers, the old tone hack "Thank you, sorry,
please.", every word of the task's own vocabulary (its lexicons or answer
words) alone and repeated ten times (the best such word is shown), all of those
words together, and the best constant reply a search over the task's
vocabulary finds (:func:`prefopt.tasks.degenerate.search_constant`, a beam
search over replies of 1-6 words, on the first 128 prompts; the search lives in
the package, where the benchmark harness also uses it). Prints a markdown table
(reply -> mean gold per task).

    python benchmarks/degenerate_replies.py                 # the rules in the working tree, 256 prompts
    python benchmarks/degenerate_replies.py --rev HEAD      # the gold rules of a git revision (read-only)

tests/test_degenerate_replies.py runs the same battery and checks that every
reply stays well below the starting model's mean gold.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefopt.tasks.degenerate import (
    MAX_SEARCH_WORDS,
    Gold,
    mean_gold,
    search_constant,
    search_vocabulary,
    vocabulary,
)

TASKS = ("constraints", "qa", "tone")
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "
    "consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur."
)
__all__ = [  # the search itself lives in prefopt.tasks.degenerate; re-exported for scripts that load this file
    "MAX_SEARCH_WORDS",
    "Gold",
    "battery",
    "current_gold",
    "gold_of_revision",
    "mean_gold",
    "search_constant",
    "search_vocabulary",
    "vocabulary",
]


# ---------------------------------------------------------------- the battery


def battery(
    task: str, gold: Gold, prompts: list[str], search_prompts: int = 128, pool_size: int = 24
) -> list[tuple[str, str, float]]:
    """(label, reply shown, mean gold) for every degenerate reply; the searched constant last."""
    fixed: list[tuple[str, str | Callable[[str], str]]] = [
        ("empty", ""),
        ("whitespace only", " \n\t "),
        ("echo of the prompt", lambda p: p),
        ("YES", "YES"),
        ("NO", "NO"),
        ('filler "the " x 300', "the " * 300),
        ("lorem ipsum, 300 words", " ".join((LOREM.split() * 5)[:300])),
        ("Thank you, sorry, please.", "Thank you, sorry, please."),
    ]
    rows = [(label, "(the prompt)" if callable(r) else r, mean_gold(gold, prompts, r)) for label, r in fixed]
    words = vocabulary(task, prompts)
    alone, repeated = (
        ("best vocabulary word alone", lambda w: w),
        ("best vocabulary word x10", lambda w: " ".join([w] * 10)),
    )
    for label, make in (alone, repeated):
        scored = [(w, mean_gold(gold, prompts, make(w))) for w in words]
        word, value = max(scored, key=lambda x: x[1])
        rows.append((label, make(word), value))
    rows.append(("all vocabulary words together", f"({len(words)} words)", mean_gold(gold, prompts, " ".join(words))))
    tokens = search_vocabulary(task, prompts[:search_prompts])
    reply, _ = search_constant(gold, prompts[:search_prompts], tokens, pool_size=pool_size)
    rows.append(("searched best constant", reply, mean_gold(gold, prompts, reply)))
    return rows


# ---------------------------------------------------------------- gold rules of a git revision


def _module_of_revision(name: str, rev: str, file: str, renames: dict[str, str]):
    source = subprocess.run(["git", "show", f"{rev}:{file}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout  # fmt: skip
    for old, new in renames.items():
        source = source.replace(old, new)
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def gold_of_revision(task: str, rev: str) -> Gold:
    """The gold_score(prompt, response) of prefopt/tasks/<task>.py as of git revision `rev` (read with git show).

    The revision's own prefopt/tasks/base.py comes with it (its names may have changed since)."""
    base = f"_rev_{rev}_base".replace("-", "_")
    if base not in sys.modules:
        _module_of_revision(base, rev, "prefopt/tasks/base.py", {})
    renames = {"from prefopt.tasks.base import": f"from {base} import"}
    return _module_of_revision(f"_rev_{task}", rev, f"prefopt/tasks/{task}.py", renames).gold_score


def current_gold(task: str) -> Gold:
    from prefopt.tasks import get_task

    return get_task(task).gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts per task (default 256)")
    parser.add_argument("--rev", default=None, help="score with the gold rules of this git revision instead")
    args = parser.parse_args()

    from prefopt.tasks import get_task

    results = {}
    for task in TASKS:
        prompts = get_task(task).prompts("heldout", args.prompts)
        gold = gold_of_revision(task, args.rev) if args.rev else current_gold(task)
        results[task] = battery(task, gold, prompts)
    labels = [label for label, _, _ in results[TASKS[0]]]
    rules = f"gold rules of {args.rev}" if args.rev else "gold rules of the working tree"
    print(f"Mean gold over {args.prompts} held-out prompts per task ({rules}).\n")
    print("| reply | " + " | ".join(TASKS) + " |")
    print("| --- |" + " --- |" * len(TASKS))
    for i, label in enumerate(labels):
        cells = []
        for task in TASKS:
            _, reply, value = results[task][i]
            words = reply.split()
            if len(words) == 10 and len(set(words)) == 1:  # a word x10
                reply = f"{words[0]} x10"
            shown = reply if i >= 8 and len(reply) <= 60 and not reply.startswith("(") else ""
            cells.append(f"{value:.3f}" + (f' ("{shown}")' if shown else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
