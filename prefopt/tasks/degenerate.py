"""The best constant reply: how well can one reply that ignores the prompt score on a task's gold rule?

A sanity check on a gold rule (and a row in every benchmark report): a rule
that a fixed string can satisfy is a rule a policy can game. The search
(:func:`search_constant`) is a deterministic beam search over replies of 1-6
tokens drawn from a task's vocabulary:

- built-in tasks (qa, constraints, tone): :func:`search_vocabulary`, the
  task's own words (lexicons, answer words), the prompts' topical words and a
  few function words;
- any other task: :func:`custom_vocabulary`, the prompts' topical words, the
  words most often found in sample replies (e.g. the starting model's own) and
  the function words.

:func:`best_constant_reply` runs it for a task object. ``benchmarks/degenerate_replies.py``
prints a whole battery of degenerate replies (empty, echo, fillers, ...) with it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from prefopt.errors import PrefoptError

__all__ = [
    "BUILTIN_VOCABULARIES",
    "FUNCTION_WORDS",
    "MAX_SEARCH_WORDS",
    "best_constant_reply",
    "custom_vocabulary",
    "mean_gold",
    "search_constant",
    "search_vocabulary",
    "topical_words",
    "vocabulary",
]

Gold = Callable[[str, str], float]

MAX_SEARCH_WORDS = 6
FUNCTION_WORDS = ("the", "is", "a", "and", "we", "you", "your", "it")
BUILTIN_VOCABULARIES = ("constraints", "qa", "tone")  # the tasks :func:`vocabulary` knows
TOPICAL_WORDS = 40  # prompt words (and reply words) a vocabulary takes


# ---------------------------------------------------------------- vocabularies


def _words(text: str) -> list[str]:
    from prefopt.tasks.constraints import words

    return words(text)


def _frequent(texts: Iterable[str], limit: int, max_share: float | None = None) -> list[str]:
    """The `limit` lowercase words found in the most texts (a word counts once per text); with max_share only
    words found in at most that share of the texts. Ties keep first-seen order, so the result is deterministic."""
    texts = list(texts)
    seen = Counter(w for t in texts for w in dict.fromkeys(w.lower() for w in _words(t)))
    return [w for w, n in seen.most_common() if max_share is None or n <= len(texts) * max_share][:limit]


def topical_words(prompts: Sequence[str], limit: int = TOPICAL_WORDS) -> list[str]:
    """The `limit` most frequent words of the prompts among those found in at most a third of them (the words that
    say what a prompt is about, not the template every prompt shares)."""
    return _frequent(prompts, limit, max_share=1 / 3)


def vocabulary(task: str, prompts: list[str]) -> list[str]:
    """A built-in task's own words (lowercase, distinct): its lexicons or answer words, and its subject words."""
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
    raise PrefoptError(f"no built-in vocabulary for task {task!r} (built in: {', '.join(BUILTIN_VOCABULARIES)})")


def search_vocabulary(task: str, prompts: list[str]) -> list[str]:
    """Tokens the constant search may use on a built-in task: the task's vocabulary, the 40 most frequent words of
    the prompts that occur in at most a third of them (:func:`topical_words`), and a few function words; for
    constraints also each token in capitals and with a trailing comma."""
    tokens = vocabulary(task, prompts) + topical_words(prompts) + list(FUNCTION_WORDS)
    if task == "constraints":
        tokens = [v for w in tokens for v in (w, w.upper(), w + ",")]
    return list(dict.fromkeys(tokens))


def custom_vocabulary(prompts: Sequence[str], replies: Sequence[str] = ()) -> list[str]:
    """Tokens the constant search may use on a task without a built-in vocabulary: the prompts' 40 topical words
    (:func:`topical_words`), the 40 words found in the most `replies`, and the function words; lowercase,
    distinct, in that order."""
    tokens = topical_words(prompts) + _frequent(replies, TOPICAL_WORDS) + list(FUNCTION_WORDS)
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
    Pool: the pool_size tokens that score best alone, the pool_size of the 4 * pool_size best that score best after
    the best single token, and the first pool_size other tokens of `tokens`. Beam search: keep the `beam` best
    sequences of each length, extend each by every pool token, max_words times; ties keep the earlier candidate.
    Deterministic."""
    if not tokens:
        raise PrefoptError("search_constant: no tokens to search over")
    if not prompts:
        raise PrefoptError("search_constant: no prompts")
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


def best_constant_reply(
    task, prompts: list[str], replies: Sequence[str] = (), search_prompts: int = 96
) -> tuple[str, float]:
    """The best constant reply the search finds for this task, and its mean gold over `prompts[:search_prompts]`.

    `task`: anything with ``.name`` and ``.gold(prompt, response) -> float`` (a :class:`prefopt.tasks.base.Task`,
    a custom task). Its vocabulary is :func:`search_vocabulary` for a built-in task (qa, constraints, tone), else
    :func:`custom_vocabulary` of the prompts and `replies` (e.g. the starting model's own replies). Deterministic;
    it scores a few thousand candidate replies on every prompt, so its cost is that many gold calls (a few seconds
    for 96 prompts with the built-in rules; a gold rule that runs a model costs accordingly).
    """
    if isinstance(search_prompts, bool) or not isinstance(search_prompts, int) or search_prompts < 1:
        raise PrefoptError(f"best_constant_reply: search_prompts must be a positive integer, got {search_prompts!r}")
    prompts = list(prompts)[:search_prompts]
    name = getattr(task, "name", "")
    if not prompts:
        raise PrefoptError(f"best_constant_reply: task {name!r} has no prompts to search on")
    if name in BUILTIN_VOCABULARIES:
        tokens = search_vocabulary(name, prompts)
    else:
        tokens = custom_vocabulary(prompts, list(replies))
    if not tokens:  # pragma: no cover - the function words are always there
        raise PrefoptError(f"best_constant_reply: task {name!r} gives no words to search over")

    def gold(prompt: str, response: str) -> float:
        return float(task.gold(prompt, response))

    return search_constant(gold, prompts, tokens)
