"""Degenerate replies against the built-in tasks' gold rules: can a reply that ignores the prompt score well?

For every built-in task, the mean gold score over the first N held-out prompts
of a battery of degenerate replies: empty, whitespace only, an echo of the
prompt, "YES", "NO", 300-token fillers, the old tone hack "Thank you, sorry,
please.", every word of the task's own vocabulary (its lexicons or answer
words) alone and repeated ten times (the best such word is shown), all of those
words together, and the best constant reply a search over the task's
vocabulary finds (:func:`search_constant`: a beam search over replies of 1-6
words, on the first 128 prompts). Prints a
markdown table (reply -> mean gold per task).

    python benchmarks/degenerate_replies.py                 # the rules in the working tree, 256 prompts
    python benchmarks/degenerate_replies.py --rev HEAD      # the gold rules of a git revision (read-only)

tests/test_degenerate_replies.py runs the same battery and checks that every
reply stays well below the starting model's mean gold.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS = ("constraints", "qa", "tone")
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "
    "consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur."
)
MAX_SEARCH_WORDS = 6

Gold = Callable[[str, str], float]


# ---------------------------------------------------------------- vocabularies


def vocabulary(task: str, prompts: list[str]) -> list[str]:
    """The task's own words (lowercase, distinct): its lexicons or answer words, and its subject words."""
    from prefopt.tasks import constraints as ct
    from prefopt.tasks import qa, tone

    if task == "qa":
        questions = [qa.parse_question(p) for p in prompts]
        counted = Counter(w for q in questions for w in (q.answer, *q.distractors))
        return [w.lower() for w, _ in counted.most_common()]
    if task == "constraints":
        words = [*ct.INCLUDE_WORDS, *ct.EXCLUDE_WORDS, *ct.START_WORDS, "yes", "no"]
        words += [w for t in ct.TOPICS for w in t.split() if w not in ("the", "a", "your", "at")]
        words += [a for accepted in getattr(ct, "ANSWERS", {}).values() for a in accepted]
        return list(dict.fromkeys(w.lower() for w in words))
    if task == "tone":
        lexicon = [w for phrase in tone.POSITIVE + tone.NEGATIVE for w in phrase.split()]
        return list(dict.fromkeys(w.lower() for w in lexicon))
    raise ValueError(task)


def search_vocabulary(task: str, prompts: list[str]) -> list[str]:
    """Tokens the constant search may use: the task's vocabulary, the 40 most frequent words of the prompts that
    occur in at most a third of them (the words that say what a prompt is about), and a few function words; for
    constraints also each token in capitals and with a trailing comma."""
    from prefopt.tasks.constraints import words as split_words

    seen = Counter(w for p in prompts for w in {w.lower() for w in split_words(p)})
    topical = [w for w, n in seen.most_common() if n <= len(prompts) / 3][:40]
    tokens = vocabulary(task, prompts) + topical + ["the", "is", "a", "and", "we", "you", "your", "it"]
    if task == "constraints":
        tokens = [v for w in tokens for v in (w, w.upper(), w + ",")]
    return list(dict.fromkeys(tokens))


# ---------------------------------------------------------------- scoring and search


def mean_gold(gold: Gold, prompts: list[str], reply: str | Callable[[str], str]) -> float:
    """Mean gold of one reply (a string, or a function of the prompt) over the prompts."""
    return statistics.fmean(gold(p, reply(p) if callable(reply) else reply) for p in prompts)


def search_constant(
    gold: Gold,
    prompts: list[str],
    tokens: list[str],
    pool_size: int = 24,
    beam: int = 3,
    max_words: int = MAX_SEARCH_WORDS,
    pad: str = "ok",
) -> tuple[str, float]:
    """The best constant reply of 1..max_words tokens found, and its mean gold over the prompts.

    A token sequence stands for two replies, the tokens alone and the tokens padded to max_words with `pad` (so a
    rule that wants a sentence of a few words does not hide what a keyword is worth); it scores the better one.
    Pool: the pool_size tokens that score best alone, the pool_size of the 4 * pool_size best that score best after the
    best single token, and
    the first pool_size other tokens of `tokens`. Beam search: keep the `beam` best sequences of each length, extend
    each by every pool token, max_words times; ties keep the earlier candidate. Deterministic."""
    cache: dict[tuple[str, ...], tuple[float, str]] = {}

    def scored(seq: tuple[str, ...]) -> tuple[float, str]:
        if seq not in cache:
            replies = [" ".join(seq), " ".join(seq + (pad,) * (max_words - len(seq)))]
            cache[seq] = max(((mean_gold(gold, prompts, r), r) for r in dict.fromkeys(replies)), key=lambda x: x[0])
        return cache[seq]

    def score(seq: tuple[str, ...]) -> float:
        return scored(seq)[0]

    singles = sorted(tokens, key=lambda t: -score((t,)))  # stable: ties keep the order of `tokens`
    pairs = sorted(singles[: 4 * pool_size], key=lambda t: -score((singles[0], t)))
    pool = list(dict.fromkeys(singles[:pool_size] + pairs[:pool_size]))
    pool += [t for t in tokens if t not in pool][:pool_size]
    best: tuple[str, ...] = (singles[0],)
    frontier: list[tuple[str, ...]] = [()]
    for _ in range(max_words):
        candidates = list(dict.fromkeys(seq + (t,) for seq in frontier for t in pool))
        frontier = sorted(candidates, key=lambda seq: -score(seq))[:beam]
        if score(frontier[0]) > score(best):
            best = frontier[0]
    return scored(best)[1], score(best)


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


def gold_of_revision(task: str, rev: str) -> Gold:
    """The gold_score(prompt, response) of prefopt/tasks/<task>.py as of git revision `rev` (read with git show)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:prefopt/tasks/{task}.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"_rev_{task}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"_rev_{task}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.gold_score


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
