"""Hinge loss on reference-normalised likelihoods: the SLiC calibration loss
(Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
Feedback", arXiv:2305.10425, its rank-calibration loss) in the form used by RSO (Liu et al. 2023,
"Statistical Rejection Sampling Improves Preference Optimization",
arXiv:2309.06657) and by trl's ``hinge`` loss:

    loss = max(0, 1 - beta * h)
    h    = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)     (summed log-probs)

Equivalently beta * max(0, 1/beta - h): a hinge with margin delta = 1/beta
nats on the log-ratio margin, scaled by beta. Pairs already separated by
more than 1/beta contribute neither loss nor gradient.

Differences from the SLiC-HF paper, matching trl: SLiC's calibration term uses
the policy's raw log-probs (no reference) and adds a separate regulariser
(cross-entropy on reference targets); here the log-probs are normalised by the
frozen reference, which plays the regulariser's role, and the margin is 1/beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_positive, logratio_loss_output


def hinge_loss(
    chosen_logratio: torch.Tensor,  # (B,) summed log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) summed log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-example hinge loss relu(1 - beta * h). Returns (B,)."""
    return torch.relu(1.0 - beta * (chosen_logratio - rejected_logratio))


class Hinge(Algorithm):
    """SLiC-style hinge loss on the reference-normalised margin, zero beyond 1/beta nats (Zhao et al. 2023; Liu et al. 2023)."""

    @dataclass
    class Config:
        beta: float = 0.1  # inverse margin: pairs whose log-ratio margin exceeds 1/beta nats get no loss (trl's default)

        def __post_init__(self):
            check_positive("beta", self.beta)

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        return logratio_loss_output(hinge_loss, policy, reference, self.config.beta)
