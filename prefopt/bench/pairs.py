"""Preference pairs from the starting model's own samples, labelled by a task's gold rule.

Every offline algorithm of a suite trains on the same pairs: per train prompt, the best vs the worst of its
samples by gold score (ties dropped), with a ``label_noise`` fraction swapped to model annotator disagreement.
An empty (or whitespace-only) sample is never part of a pair, nor are two samples with the same text: a prompt
gives a pair only if it has two distinct non-empty samples with different gold scores.
"""

from __future__ import annotations

import random


def user_turn(text: str) -> list[dict]:
    """A prompt as the one-message conversation the samplers and judges take."""
    return [{"role": "user", "content": text}]


def is_empty(text: str) -> bool:
    """Whether a sampled response is empty or whitespace only (the pair loader rejects such a response)."""
    return not str(text).strip()


def empty_samples(samples: list[list[str]]) -> int:
    """How many samples make_pairs skips for being empty."""
    return sum(is_empty(t) for texts in samples for t in texts)


def make_pairs(prompts: list[str], samples: list[list[str]], scores: list[list[float]], noise: float,
               seed: int) -> list[dict]:
    """Best vs worst non-empty sample of each prompt by gold score; empty samples skipped; ties and identical
    texts dropped; a `noise` fraction swapped.

    Returns rows in the standard pair format plus their gold scores and whether the label was swapped.
    """
    rng = random.Random(seed)
    rows = []
    for prompt, texts, values in zip(prompts, samples, scores):
        kept = [i for i in range(len(texts)) if not is_empty(texts[i])]
        if not kept:
            continue
        best = max(kept, key=lambda i: values[i])
        others = [i for i in kept if texts[i].strip() != texts[best].strip()]  # the loader rejects identical texts
        if not others:
            continue
        worst = min(others, key=lambda i: values[i])
        if values[best] == values[worst]:
            continue
        flipped = rng.random() < noise
        chosen, rejected = (worst, best) if flipped else (best, worst)
        rows.append({
            "prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected],
            "gold_chosen": values[chosen], "gold_rejected": values[rejected], "label_swapped": flipped,
        })  # fmt: skip
    return rows
