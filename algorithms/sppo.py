"""Self-Play Preference Optimization, hard-label form (Wu et al. 2024,
"Self-Play Preference Optimization for Language Model Alignment",
arXiv:2405.00675).

SPPO's update (Algorithm 1; trl cites it as Eq. 4.7) regresses each response's
log-ratio onto eta * (P(y beats pi_t) - 1/2), where P is a win probability
estimated by a preference model and pi_t the previous iterate (here: the
reference). The hard version, trl's ``sppo_hard``, sets P = 1 for the chosen
and P = 0 for the rejected response, with eta = 1 / beta:

    loss = (lr_w - 1/(2 beta))^2 + (lr_l + 1/(2 beta))^2

where lr = log pi(y)/pi_ref(y) on summed log-probs. Each response is anchored
separately (unlike IPO, which only fixes their difference). The reported
reward is beta * lr, which the loss drives to +1/2 (chosen) and -1/2 (rejected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_positive, logratio_loss_output


def sppo_hard_loss(
    chosen_logratio: torch.Tensor,  # (B,) summed log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) summed log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-example hard-label SPPO loss (P = 1 for y_w, 0 for y_l; eta = 1/beta). Returns (B,)."""
    target = 0.5 / beta  # eta * (P - 1/2) with P = 1
    return (chosen_logratio - target) ** 2 + (rejected_logratio + target) ** 2


class SPPOHard(Algorithm):
    """SPPO (hard labels): regress the chosen log-ratio onto +1/(2 beta) and the rejected onto -1/(2 beta) (Wu et al. 2024)."""

    @dataclass
    class Config:
        beta: float = 0.1  # 1/eta; targets are +-1/(2 beta) nats of log-ratio (trl's default; the paper's eta is set for soft win rates)

        def __post_init__(self):
            check_positive("beta", self.beta)

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        return logratio_loss_output(sppo_hard_loss, policy, reference, self.config.beta)
