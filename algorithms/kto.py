"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306).

Learns from unpaired examples labelled desirable or undesirable. With the
implicit reward r = log pi(y|x) - log pi_ref(y|x) and a reference point z0
(Eq. 8 and Sec. 4.1):

    v(x, y) = lambda_D * sigmoid(beta * (r - z0))   if y is desirable
            = lambda_U * sigmoid(beta * (z0 - r))   if y is undesirable
    loss    = lambda_y - v(x, y)

z0 estimates KL(pi || pi_ref) from mismatched pairs in the batch: the same
prompts with other examples' completions, z0 = max(0, mean(log pi - log pi_ref)),
with no gradient through it. It is estimated over each micro-batch (TRL does
the same over each device batch), so unlike the paired losses KTO's update
depends slightly on how a global batch is split. Paired data is split into one
desirable and one undesirable example per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, LossOutput, UnpairedLogps, check_positive


def kto_reference_point(policy_mismatched: torch.Tensor, reference_mismatched: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean KL estimate) from mismatched completions, detached. Inputs (B,), output ()."""
    return (policy_mismatched - reference_mismatched).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,  # (B,) log pi(y|x) of each example's own completion
    reference_logps: torch.Tensor,  # (B,) log pi_ref(y|x)
    desirable: torch.Tensor,  # (B,) bool label
    z0: torch.Tensor,  # () reference point
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO loss and the implicit rewards beta * r. Returns (losses (B,), rewards (B,))."""
    logratio = policy_logps - reference_logps  # (B,)
    value_desirable = desirable_weight * torch.sigmoid(beta * (logratio - z0))  # (B,)
    value_undesirable = undesirable_weight * torch.sigmoid(beta * (z0 - logratio))  # (B,)
    losses = torch.where(desirable, desirable_weight - value_desirable, undesirable_weight - value_undesirable)
    return losses, beta * logratio.detach()


class KTO(Algorithm):
    """Kahneman-Tversky Optimization: unpaired desirable/undesirable labels (Ethayarajh et al. 2024)."""

    @dataclass
    class Config:
        beta: float = 0.1  # scale of the implicit reward (paper default 0.1)
        desirable_weight: float = 1.0  # lambda_D (paper: keep lambda_D*n_D / lambda_U*n_U in [1, 4/3])
        undesirable_weight: float = 1.0  # lambda_U

        def __post_init__(self):
            for name in ("beta", "desirable_weight", "undesirable_weight"):
                check_positive(name, getattr(self, name))

    inputs = "unpaired"
    needs_reference = True

    def loss(self, policy: UnpairedLogps, reference: UnpairedLogps | None, batch: dict) -> LossOutput:
        z0 = kto_reference_point(policy.mismatched.sum, reference.mismatched.sum)
        desirable = batch["label"].to(policy.completion.sum.device)  # (B,)
        losses, rewards = kto_loss(
            policy.completion.sum,
            reference.completion.sum,
            desirable,
            z0,
            beta=self.config.beta,
            desirable_weight=self.config.desirable_weight,
            undesirable_weight=self.config.undesirable_weight,
        )
        return LossOutput(
            losses=losses,
            metrics={"reward": rewards, "kl": z0.expand_as(rewards), "desirable": desirable.float()},
        )
