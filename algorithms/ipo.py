"""Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical
Paradigm to Understand Learning from Human Preferences", arXiv:2310.12036).

DPO pushes the log-ratio difference h towards infinity on deterministic
preferences; IPO instead regresses it onto a finite target (Eq. 17):

    loss = (h - 1 / (2 * tau))^2
    h    = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)

Length normalisation: h is built from per-token MEAN log-probs
(``SequenceLogps.mean``), as the IPO authors intend and as trl's ``ipo`` loss
does (trl notes it confirmed with the authors that the paper's results use the
averaged form). With summed log-probs the fixed target 1/(2 tau) would mean a
different per-token shift for every response length.

The implicit reward reported is tau * (mean log-ratio), so the loss drives the
margin towards 1/2. (trl logs beta * summed log-ratios for every DPO-family
loss; the loss values agree, only that logged metric differs.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_positive, logratios, pair_metrics


def ipo_loss(
    chosen_logratio: torch.Tensor,  # (B,) per-token mean log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) per-token mean log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-example IPO loss (Eq. 17, beta = tau). Returns (B,)."""
    h = chosen_logratio - rejected_logratio  # (B,)
    return (h - 1.0 / (2.0 * beta)) ** 2


class IPO(Algorithm):
    """Identity Preference Optimisation: regress the length-normalised log-ratio margin onto 1/(2 beta) (Azar et al. 2023)."""

    @dataclass
    class Config:
        beta: float = 0.1  # tau, the regularisation strength; target margin 1/(2 tau) in per-token nats (trl's default; the paper sweeps tau)

        def __post_init__(self):
            check_positive("beta", self.beta)

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        chosen, rejected = logratios(policy, reference, per_token=True)  # (B,), (B,)
        losses = ipo_loss(chosen, rejected, beta=self.config.beta)
        beta = self.config.beta
        return LossOutput(losses=losses, metrics=pair_metrics(beta * chosen, beta * rejected, policy))
