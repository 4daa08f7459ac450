"""Tokenised examples -> padded training batches, and the order batches come in.

Rows are RIGHT-padded (prompt, response, pads): the layout
:func:`prefopt.core.logprobs.forward_logps` assumes, with ``arange`` positions.
The padding itself lives in :mod:`prefopt.core.padding`.
"""

from __future__ import annotations

import torch

from prefopt.core.padding import pad_right
from prefopt.data.tokenize import TokenizedPair, TokenizedUnpaired
from prefopt.errors import PrefoptError


def _response_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response rows; loss_mask marks the response tokens only. Each (N, T)."""
    input_ids, attention_mask = pad_right([p + r for p, r in zip(prompts, responses)], pad_id)  # (N, T) each
    loss_mask, _ = pad_right([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0)  # (N, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_pairs(examples: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> one (2B, T) batch: rows 0..B-1 prompt+chosen, rows B..2B-1 prompt+rejected.

    One forward then serves both sides (see PairLogps.from_concatenated).
    """
    prompts = [e.prompt_ids for e in examples] * 2
    responses = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    batch = _response_rows(prompts, responses, pad_id)  # each (2B, T)
    batch["index"] = torch.tensor([e.index for e in examples], dtype=torch.long)  # (B,)
    return batch


def collate_unpaired(examples: list[TokenizedUnpaired], pad_id: int) -> dict[str, torch.Tensor]:
    """B unpaired examples -> (B, T) prompt+completion rows plus label (B,) bool and index (B,)."""
    prompts, completions = [e.prompt_ids for e in examples], [e.completion_ids for e in examples]
    batch = _response_rows(prompts, completions, pad_id)  # each (B, T)
    batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)  # (B,)
    batch["index"] = torch.tensor([e.index for e in examples], dtype=torch.long)  # (B,)
    return batch


def bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """A shuffled epoch of batches whose members have similar lengths.

    Indices are shuffled, cut into chunks of batch_size*50, each chunk sorted by
    length and cut into batches, and the batch order shuffled: short pairs then
    don't pay for the padding of long ones, while the order stays random.
    Deterministic for the same generator state; each index appears exactly once.
    """
    if batch_size < 1:
        raise PrefoptError(f"batch_size must be at least 1, got {batch_size}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        members = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]
