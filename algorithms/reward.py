"""Reward-model training with the Bradley-Terry loss.

A scalar head on the policy's backbone (LoRA by default) is trained so that
the chosen response scores higher (Ouyang et al. 2022, arXiv:2203.02155, Eq. 1):

    loss = -log sigmoid(r(x, y_w) - r(x, y_l) - m) + c * (r(x, y_w) + r(x, y_l))^2

with an optional fixed margin m (Touvron et al. 2023, Llama 2, Eq. 2, there a
per-pair margin) and the centering term of Eisenstein et al. 2023
("Helping or Herding", arXiv:2312.09244), which keeps rewards near zero
mean: the loss is otherwise blind to a constant shift of all rewards.

The trained model is saved as a peft adapter plus ``reward_head.safetensors``;
``prefopt.core.heads.load_reward_model`` loads it back as a reward function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.core.algorithm import Algorithm, LossOutput, PairRewards, check_nonnegative, preference_accuracy


def bradley_terry_loss(
    chosen: torch.Tensor,  # (B,) r(x, y_w)
    rejected: torch.Tensor,  # (B,) r(x, y_l)
    margin: float = 0.0,
    center_coefficient: float = 0.0,
) -> torch.Tensor:
    """(B,) per-pair Bradley-Terry loss with margin and centering."""
    losses = -F.logsigmoid(chosen - rejected - margin)  # (B,)
    return losses + center_coefficient * (chosen + rejected) ** 2


class Reward(Algorithm):
    """Reward model: Bradley-Terry loss on a scalar head (Ouyang et al. 2022)."""

    @dataclass
    class Config:
        margin: float = 0.0  # required reward gap m between chosen and rejected (Llama 2 uses 0-1)
        center_coefficient: float = 0.01  # weight of (r_w + r_l)^2 (Eisenstein et al. 2023 use 0.01)

        def __post_init__(self):
            check_nonnegative("center_coefficient", self.center_coefficient)

    inputs = "pairs"
    head = "scalar"
    produces = "reward_model"
    needs_reference = False

    def loss(self, policy: PairRewards, reference: None, batch: dict) -> LossOutput:
        losses = bradley_terry_loss(policy.chosen, policy.rejected, self.config.margin, self.config.center_coefficient)
        margin = (policy.chosen - policy.rejected).detach()  # (B,)
        return LossOutput(
            losses=losses,
            metrics={
                "reward_chosen": policy.chosen.detach(),
                "reward_rejected": policy.rejected.detach(),
                "margin": margin,
                "accuracy": preference_accuracy(margin),
            },
        )
