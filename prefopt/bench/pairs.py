"""Preference pairs from the starting model's own samples, labelled by a task's gold rule.

Every offline algorithm of a suite trains on the same pairs: per train prompt, the best vs the worst of its
samples by gold score (ties dropped), with a ``label_noise`` fraction swapped to model annotator disagreement.
"""

from __future__ import annotations

import random


def user_turn(text: str) -> list[dict]:
    """A prompt as the one-message conversation the samplers and judges take."""
    return [{"role": "user", "content": text}]


def make_pairs(prompts: list[str], samples: list[list[str]], scores: list[list[float]], noise: float,
               seed: int) -> list[dict]:
    """Best vs worst sample of each prompt by gold score; ties dropped; a `noise` fraction swapped.

    Returns rows in the standard pair format plus their gold scores and whether the label was swapped.
    """
    rng = random.Random(seed)
    rows = []
    for prompt, texts, values in zip(prompts, samples, scores):
        best = max(range(len(texts)), key=lambda i: values[i])
        worst = min(range(len(texts)), key=lambda i: values[i])
        if values[best] == values[worst]:
            continue
        flipped = rng.random() < noise
        chosen, rejected = (worst, best) if flipped else (best, worst)
        rows.append({
            "prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected],
            "gold_chosen": values[chosen], "gold_rejected": values[rejected], "label_swapped": flipped,
        })  # fmt: skip
    return rows
