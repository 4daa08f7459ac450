"""Anchored Preference Optimization (D'Oosterlinck et al. 2024, "Anchored
Preference Optimization and Contrastive Revisions: Addressing
Underspecification in Alignment", arXiv:2408.06266; TACL 2025).

DPO only constrains the reward margin, so both likelihoods may drift down
together. APO anchors each response's reward r = beta * log pi(y)/pi_ref(y)
(summed log-probs) to zero and says explicitly which way each should move:

APO-zero (Eq. 7), for chosen outputs better than the model's own: raise the
chosen reward and lower the rejected one,

    loss = (1 - sigmoid(r_w)) + sigmoid(r_l)

APO-down (Eq. 8), for chosen outputs worse than the model's own: lower the
chosen reward, and the rejected one more,

    loss = sigmoid(r_w) + (1 - sigmoid(r_w - r_l))

The paper writes them without the constant 1 (e.g. -sigmoid(r_w) + sigmoid(r_l));
the constant only shifts the value into [0, 2] and is kept here to match
trl's ``apo_zero`` / ``apo_down`` exactly. Gradients are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_positive, logratio_loss_output


def apo_zero_loss(
    chosen_logratio: torch.Tensor,  # (B,) summed log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) summed log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-example APO-zero loss (Eq. 7, shifted by +1). Returns (B,)."""
    push_up = 1 - torch.sigmoid(beta * chosen_logratio)  # (B,) chosen reward above 0
    push_down = torch.sigmoid(beta * rejected_logratio)  # (B,) rejected reward below 0
    return push_up + push_down


def apo_down_loss(
    chosen_logratio: torch.Tensor,  # (B,) summed log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) summed log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-example APO-down loss (Eq. 8, shifted by +1). Returns (B,)."""
    chosen_down = torch.sigmoid(beta * chosen_logratio)  # (B,) chosen reward below 0
    keep_margin = 1 - torch.sigmoid(beta * (chosen_logratio - rejected_logratio))  # (B,) rejected further below
    return chosen_down + keep_margin


@dataclass
class APOConfig:
    beta: float = 0.1  # reward scale r = beta * log-ratio, as in DPO (trl's default)

    def __post_init__(self):
        check_positive("beta", self.beta)


class APOZero(Algorithm):
    """APO-zero: raise the chosen and lower the rejected likelihood, each anchored at the reference (D'Oosterlinck et al. 2024)."""

    Config = APOConfig
    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        return logratio_loss_output(apo_zero_loss, policy, reference, self.config.beta)


class APODown(Algorithm):
    """APO-down: lower the chosen likelihood, and the rejected one more, for chosen outputs worse than the model's (D'Oosterlinck et al. 2024)."""

    Config = APOConfig
    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        return logratio_loss_output(apo_down_loss, policy, reference, self.config.beta)
