"""What the trainer feeds an algorithm, chosen by its declared ``inputs`` and ``head``.

Each kind knows how its records are tokenised and batched and how the policy
and the reference are scored on a batch. The trainer asks :func:`inputs_for`
for one and never looks at an algorithm's name.

Batches always stack two blocks of rows, (2B, T): chosen then rejected for
pairs; for unpaired examples each example's own completion, then the same
prompt with another example's completion (KTO's reference point). That one
layout lets every reference mode, the precomputed cache included, serve all
kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, PairLogps, PairRewards, UnpairedLogps
from prefopt.core.heads import forward_rewards
from prefopt.core.logprobs import PADDING_FREE, SequenceLogps, forward_logps
from prefopt.data import TokenizedPair, collate_pairs, collate_unpaired, tokenize_pairs, tokenize_unpaired
from prefopt.errors import PrefoptError


def rows(batch: dict, start: int, stop: int) -> dict:
    """The rows start:stop of every (N, T) tensor of a batch, still padding-free if the batch is (its host
    layout describes the whole batch, so it stays behind)."""
    part = {k: batch[k][start:stop] for k in ("input_ids", "attention_mask", "loss_mask")}
    if batch.get(PADDING_FREE):
        part[PADDING_FREE] = True
    return part


class PairInputs:
    """(prompt, chosen, rejected) -> PairLogps."""

    data_kind = "paired"

    def tokenize(self, records, tokenizer, max_length, max_prompt_length, source):
        return tokenize_pairs(records, tokenizer, max_length, max_prompt_length, source)

    def collate(self, examples, pad_id: int) -> dict:
        return collate_pairs(examples, pad_id)

    def length(self, example) -> int:
        return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))

    def policy(self, model, batch: dict):
        return PairLogps.from_concatenated(forward_logps(model, batch))

    def reference(self, reference, batch: dict):
        return reference.pair_logps(batch)


class RewardPairInputs(PairInputs):
    """(prompt, chosen, rejected) -> PairRewards from a scalar head (no reference)."""

    def policy(self, model, batch: dict):
        rewards = forward_rewards(model, batch)  # (2B,)
        half = rewards.shape[0] // 2
        return PairRewards(chosen=rewards[:half], rejected=rewards[half:])


@dataclass
class LabelledPair(TokenizedPair):
    """An unpaired example in pair layout: chosen = own completion, rejected = mismatched one."""

    label: bool = True


class UnpairedInputs(PairInputs):
    """(prompt, completion, label) -> UnpairedLogps, in the pair layout (own, mismatched).

    Each example's mismatched completion is fixed at tokenisation: the
    completion of the example half the dataset away, so (for pairs split into
    two examples) it never shares the prompt. Being fixed per example, it can
    be precomputed and cached like any reference log-prob.
    """

    data_kind = "unpaired"

    def tokenize(self, records, tokenizer, max_length, max_prompt_length, source):
        examples, stats = tokenize_unpaired(records, tokenizer, max_length, max_prompt_length, source)
        n = len(examples)
        offset = max(1, n // 2)
        out = []
        for e in examples:
            partner = examples[(e.index + offset) % n].completion_ids
            room = max_length - len(e.prompt_ids)
            out.append(LabelledPair(e.index, e.prompt_ids, e.completion_ids, partner[:room], label=e.label))
        return out, stats

    def collate(self, examples, pad_id: int) -> dict:
        batch = collate_pairs(examples, pad_id)
        batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)  # (B,)
        return batch

    def policy(self, model, batch: dict):
        half = batch["input_ids"].shape[0] // 2
        completion = forward_logps(model, rows(batch, 0, half))  # (B,) with grad
        with torch.no_grad():  # the reference point carries no gradient (KTO, Eq. 8)
            mismatched = forward_logps(model, rows(batch, half, 2 * half)).detach()  # (B,)
        return UnpairedLogps(completion=completion, mismatched=mismatched)

    def reference(self, reference, batch: dict):
        pair = reference.pair_logps(batch)
        return UnpairedLogps(completion=pair.chosen, mismatched=pair.rejected)


class DemonstrationInputs:
    """(prompt, completion) demonstrations -> SequenceLogps (B,) (no reference)."""

    data_kind = "demonstrations"

    def tokenize(self, records, tokenizer, max_length, max_prompt_length, source):
        return tokenize_unpaired(records, tokenizer, max_length, max_prompt_length, source)

    def collate(self, examples, pad_id: int) -> dict:
        return collate_unpaired(examples, pad_id)

    def length(self, example) -> int:
        return len(example.prompt_ids) + len(example.completion_ids)

    def policy(self, model, batch: dict) -> SequenceLogps:
        return forward_logps(model, batch)


def inputs_for(algorithm: type[Algorithm] | Algorithm, name: str = "algorithm"):
    """The input kind an algorithm declares, or a one-line error."""
    kinds = {
        ("pairs", "lm"): PairInputs,
        ("pairs", "scalar"): RewardPairInputs,
        ("unpaired", "lm"): UnpairedInputs,
        ("demonstrations", "lm"): DemonstrationInputs,
    }
    key = (algorithm.inputs, algorithm.head)
    if key not in kinds:
        raise PrefoptError(f"algorithm '{name}' declares inputs={key[0]!r}, head={key[1]!r}; supported: "
                           + ", ".join(f"{i}/{h}" for i, h in kinds))
    if key[1] == "scalar" and algorithm.needs_reference:
        raise PrefoptError(f"algorithm '{name}': a scalar head cannot use a reference model")
    if key[0] == "demonstrations" and algorithm.needs_reference:
        raise PrefoptError(f"algorithm '{name}': demonstrations cannot use a reference model")
    return kinds[key]()
