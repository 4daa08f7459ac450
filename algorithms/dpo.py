"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290).

The implicit reward of a response is r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)).
DPO minimises -log sigmoid(r(x, y_w) - r(x, y_l)) (Eq. 7). With label smoothing
epsilon (the probability that a pair's label is flipped) the target becomes soft,
the "conservative DPO" form (Mitchell 2023, "A note on DPO with noisy
preferences"):

    loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

where h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_flip_rate, check_positive, pair_metrics


def dpo_loss(
    policy_chosen: torch.Tensor,  # (B,) summed log pi(y_w|x)
    policy_rejected: torch.Tensor,  # (B,) summed log pi(y_l|x)
    reference_chosen: torch.Tensor,  # (B,) summed log pi_ref(y_w|x)
    reference_rejected: torch.Tensor,  # (B,) summed log pi_ref(y_l|x)
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example sigmoid DPO loss and the implicit rewards. Returns (losses, r_w, r_l), each (B,)."""
    chosen_logratio = policy_chosen - reference_chosen  # (B,)
    rejected_logratio = policy_rejected - reference_rejected  # (B,)
    logits = beta * (chosen_logratio - rejected_logratio)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


class DPO(Algorithm):
    """Direct Preference Optimization: sigmoid loss on implicit reward margins (Rafailov et al. 2023)."""

    @dataclass
    class Config:
        beta: float = 0.1  # strength of the implicit KL constraint to the reference (paper: 0.1-0.5)
        label_smoothing: float = 0.0  # assumed label-flip rate eps in [0, 0.5) (conservative DPO)

        def __post_init__(self):
            check_positive("beta", self.beta)
            check_flip_rate("label_smoothing", self.label_smoothing)

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        losses, reward_chosen, reward_rejected = dpo_loss(
            policy.chosen.sum,
            policy.rejected.sum,
            reference.chosen.sum,
            reference.rejected.sum,
            beta=self.config.beta,
            label_smoothing=self.config.label_smoothing,
        )
        return LossOutput(losses=losses, metrics=pair_metrics(reward_chosen, reward_rejected, policy))
