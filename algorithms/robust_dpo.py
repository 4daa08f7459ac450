"""Robust DPO, the unbiased loss for noisy labels (Chowdhury, Kini & Natarajan
2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
arXiv:2403.00409, ICML 2024).

If each preference label is flipped with known probability eps < 1/2, the
DPO loss l(h) = -log sigmoid(beta * h) is biased. The paper's de-biased rDPO
loss (trl's ``robust``) is

    loss = ((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 * eps)

so that its expectation over the label noise, (1 - eps) * loss(h) + eps * loss(-h),
equals the clean DPO loss l(h) exactly. Here h is the summed log-ratio margin
as in DPO. Note the MINUS sign: the loss can be negative and is unbounded
below in h for eps > 0, which is the price of unbiasedness.

The conservative form (cDPO, Mitchell 2023), a convex mixture
(1 - eps) * l(h) + eps * l(-h), is ``dpo label_smoothing=eps``, not this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.core.algorithm import (
    Algorithm,
    LossOutput,
    PairLogps,
    check_flip_rate,
    check_positive,
    logratios,
    pair_metrics,
)


def robust_dpo_loss(
    chosen_logratio: torch.Tensor,  # (B,) summed log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) summed log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Per-example unbiased robust-DPO loss (rDPO, Chowdhury et al. 2024). Returns (B,)."""
    eps = label_smoothing
    logits = beta * (chosen_logratio - rejected_logratio)  # (B,)
    as_labelled = -F.logsigmoid(logits)  # (B,) DPO loss if the label is right
    as_flipped = -F.logsigmoid(-logits)  # (B,) DPO loss if the label is flipped
    return ((1 - eps) * as_labelled - eps * as_flipped) / (1 - 2 * eps)


class RobustDPO(Algorithm):
    """Robust DPO: unbiased DPO loss under a known label-flip rate (Chowdhury et al. 2024)."""

    @dataclass
    class Config:
        beta: float = 0.1  # strength of the implicit KL constraint, as in DPO (trl's default)
        label_smoothing: float = 0.1  # assumed label-flip rate eps in [0, 0.5) (0.1: the value the paper recommends, per trl)

        def __post_init__(self):
            check_positive("beta", self.beta)
            check_flip_rate("label_smoothing", self.label_smoothing)

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        chosen, rejected = logratios(policy, reference)  # (B,), (B,)
        cfg = self.config
        losses = robust_dpo_loss(chosen, rejected, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        return LossOutput(losses=losses, metrics=pair_metrics(cfg.beta * chosen, cfg.beta * rejected, policy))
