"""Noise Contrastive Alignment, pairwise form (Chen et al. 2024, "Noise
Contrastive Alignment of Language Models with Explicit Rewards",
arXiv:2402.05369; NeurIPS 2024).

NCA treats each response's implicit reward r = beta * log pi(y)/pi_ref(y)
(summed log-probs) as the logit of a binary "data vs noise" classifier. For a
preference pair (K = 2 responses, the winner labelled as data) the NCA loss is
trl's ``nca_pair``:

    loss = -log sigmoid(r_w) - 1/2 * log sigmoid(-r_w) - 1/2 * log sigmoid(-r_l)

Unlike DPO it depends on each reward, not only on their difference: the
first term raises the chosen likelihood in absolute terms, which is how NCA
avoids DPO's tendency to lower the chosen likelihood along with the rejected
one. The paper's general form with K responses and explicit scalar rewards is
not this class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_positive, logratio_loss_output


def nca_pair_loss(
    chosen_logratio: torch.Tensor,  # (B,) summed log pi(y_w) - log pi_ref(y_w)
    rejected_logratio: torch.Tensor,  # (B,) summed log pi(y_l) - log pi_ref(y_l)
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-example pairwise NCA loss. Returns (B,)."""
    reward_chosen = beta * chosen_logratio  # (B,)
    reward_rejected = beta * rejected_logratio  # (B,)
    chosen_is_data = -F.logsigmoid(reward_chosen)  # (B,)
    both_are_noise = -0.5 * (F.logsigmoid(-reward_chosen) + F.logsigmoid(-reward_rejected))  # (B,)
    return chosen_is_data + both_are_noise


class NCA(Algorithm):
    """NCA (pairwise): noise-contrastive loss on each response's absolute implicit reward (Chen et al. 2024)."""

    @dataclass
    class Config:
        beta: float = 0.1  # reward scale r = beta * log-ratio, as in DPO (trl's default)

        def __post_init__(self):
            check_positive("beta", self.beta)

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        return logratio_loss_output(nca_pair_loss, policy, reference, self.config.beta)
