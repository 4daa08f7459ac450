"""Simple Preference Optimization (Meng, Xia & Chen 2024, "SimPO: Simple
Preference Optimization with a Reference-Free Reward", arXiv:2405.14734).

The implicit reward is the length-normalised log-likelihood scaled by beta,
r(x, y) = beta / |y| * log pi(y|x) (Eq. 4), with no reference model. The loss
(Eq. 6) asks the chosen reward to beat the rejected one by a margin gamma:

    loss = -log sigmoid(beta * mean_logp(y_w) - beta * mean_logp(y_l) - gamma)

With label smoothing eps (trl's CPO ``simpo`` option; 0 in the paper) the
target becomes soft as in conservative DPO:
(1 - eps) * l(z) + eps * l(-z) with l(z) = -log sigmoid(z).

gamma here is the ABSOLUTE margin in reward units, as trl's ``simpo_gamma``
(trl computes beta * (logits - gamma / beta), the same number). Later versions
of the paper report the ratio gamma / beta instead; multiply by beta to convert.
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
    check_nonnegative,
    check_positive,
    pair_metrics,
)


def simpo_loss(
    policy_chosen_mean: torch.Tensor,  # (B,) per-token mean log pi(y_w|x)
    policy_rejected_mean: torch.Tensor,  # (B,) per-token mean log pi(y_l|x)
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-example SimPO loss (Eq. 6). Returns (B,)."""
    z = beta * policy_chosen_mean - beta * policy_rejected_mean - gamma  # (B,)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


class SimPO(Algorithm):
    """SimPO: reference-free sigmoid loss on length-normalised log-likelihoods with a target margin (Meng et al. 2024)."""

    @dataclass
    class Config:
        beta: float = 2.0  # scale of the length-normalised reward (paper: 2.0-2.5)
        gamma: float = 0.5  # absolute target reward margin (trl's simpo_gamma default; the paper tunes it per model)
        label_smoothing: float = 0.0  # assumed label-flip rate in [0, 0.5), conservative form (paper: 0)

        def __post_init__(self):
            check_positive("beta", self.beta)
            check_nonnegative("gamma", self.gamma)
            check_flip_rate("label_smoothing", self.label_smoothing)

    needs_reference = False
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        cfg = self.config
        chosen, rejected = policy.chosen.mean, policy.rejected.mean  # (B,), (B,)
        losses = simpo_loss(chosen, rejected, beta=cfg.beta, gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)
        return LossOutput(losses=losses, metrics=pair_metrics(cfg.beta * chosen, cfg.beta * rejected, policy))
