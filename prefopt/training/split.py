"""The held-out split every run makes of its data, before anything else is done with it."""

from __future__ import annotations

import torch

from prefopt.errors import PrefoptError

EVAL_SPLIT_SEED = 12345  # fixed, so every seed of a sweep is judged on the same held-out pairs


def split_records(records: list, eval_size: int, source: str) -> tuple[list, list]:
    """A fixed random held-out split of the source rows (independent of the run's seed).

    The split is made on the rows as the file holds them, before pairs are
    turned into unpaired examples or demonstrations, so every algorithm is
    judged on the same held-out rows.
    """
    n = len(records)
    if n - eval_size < 1:
        raise PrefoptError(f"{source}: only {n} rows, not enough for eval_size={eval_size} held-out rows plus training")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SPLIT_SEED)).tolist()
    held = set(perm[:eval_size])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]
