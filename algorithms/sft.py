"""Supervised fine-tuning: maximise the likelihood of demonstrations.

The first stage of the RLHF pipeline (Ouyang et al. 2022, arXiv:2203.02155,
Sec. 3.5) and what the other objectives start from. Trained on demonstrations
(prompt + completion), the desirable examples of unpaired data, or the chosen
side of preference pairs.

Each example's loss is its per-token mean negative log-likelihood, so every
demonstration weighs the same whatever its length. (TRL's SFTTrainer averages
over all tokens of a batch instead, which weighs long responses more and is
not a sum of per-example terms; the per-example mean keeps gradient
accumulation exact.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, LossOutput
from prefopt.core.logprobs import SequenceLogps


def sft_loss(logps: SequenceLogps) -> torch.Tensor:
    """(B,) per-token mean NLL of each response."""
    return -logps.mean


class SFT(Algorithm):
    """Supervised fine-tuning: per-token NLL of demonstrations (or the chosen side of pairs)."""

    @dataclass
    class Config:
        pass

    inputs = "demonstrations"
    needs_reference = False

    def loss(self, policy: SequenceLogps, reference: None, batch: dict) -> LossOutput:
        losses = sft_loss(policy)  # (B,)
        return LossOutput(losses=losses, metrics={"nll": losses.detach(), "tokens": policy.tokens.detach()})
