"""Token-id rows -> padded (N, T) tensors: the one place padding is written.

Two layouts, both with an attention mask of 1 on real tokens:

- right padding (real tokens first): the training forward, the collators and
  the reward model, which reads each row's last real token;
- left padding (rows end together): generation and next-token scoring, where
  every row's next token sits in the last column. Models do not derive
  position ids from a left-padded mask, so :func:`position_ids` gives them.

Kept in core (the lowest layer that pads: the sampler in
:mod:`prefopt.core.generate`) so data, judges and every layer above can reach it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, width): row i in columns 0..len(row)-1, pad_id after.

    width defaults to the longest row.
    """
    return _pad(rows, pad_id, width, left=False)


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, width): rows right-aligned, pad_id before them.

    width defaults to the longest row; an empty row is all padding.
    """
    return _pad(rows, pad_id, width, left=True)


# The (N, T) tensors of a right-padded training batch and what their added columns hold (input ids: the pad id).
WIDENED_COLUMNS = {"input_ids": None, "attention_mask": 0, "loss_mask": 0}


def widen_right(batch: dict, multiple: int, pad_id: int) -> dict:
    """`batch` with its right-padded (N, T) tensors (WIDENED_COLUMNS) widened to the next multiple of `multiple`.

    The added columns are padding (attention and loss mask 0), after every real token, so under causal attention
    no real token's result changes; a run then meets at most max_length / multiple distinct batch widths, which
    matters where each new width costs setup (on a GPU, cuDNN attention builds and caches a plan per shape).
    """
    width = batch["input_ids"].shape[1]
    wider = -(-width // multiple) * multiple
    if wider == width:
        return batch
    out = dict(batch)
    for key, fill in WIDENED_COLUMNS.items():
        if key in batch:
            t = batch[key]  # (N, T)
            pad = torch.full((t.shape[0], wider - width), pad_id if fill is None else fill, dtype=t.dtype)
            out[key] = torch.cat([t, pad], dim=1)  # (N, wider)
    return out


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) positions counting real tokens only (0 on left padding), so a padded row computes what it would alone."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, width: int | None, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if width is None:
        width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, width)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, width)
    for i, row in enumerate(rows):
        if not row:
            continue
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, cols] = torch.tensor(row, dtype=torch.long)  # (len(row),)
        attention_mask[i, cols] = 1
    return input_ids, attention_mask
