"""REINFORCE++: REINFORCE with PPO's token-level KL penalty, clip and a batch-normalised advantage (online).

Hu 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models",
arXiv:2501.03262. No critic and no group: each sampled token's advantage is the return from it on,

  A_t = r(x, y) * 1[t = last] - beta * sum_{s >= t} KL(s),   KL(s) = log pi_old(y_s) / pi_ref(y_s)   (Eq. 8, 9)

(gamma = 1), normalised over every response token of the batch (Eq. 10), then PPO's clipped surrogate
averaged over tokens. Defaults are OpenRLHF's (openrlhf/cli/train_ppo_ray.py, the reference
implementation, ``--advantage_estimator reinforce``): ``init_kl_coef`` 0.01, ``kl_estimator`` k1,
``eps_clip`` 0.2, ``gamma`` 1, ``n_samples_per_prompt`` 1, token-level loss (``PolicyLoss``).
The step (sampling, judge, logging) is :class:`prefopt.algorithms.grpo.GroupPolicyGradient`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prefopt.algorithms.grpo import GroupConfig, GroupPolicyGradient
from prefopt.core.advantages import batch_normalised_advantages, clipped_surrogate
from prefopt.core.rl import kl_estimate, token_rewards


def reinforce_pp_advantages(scores: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                            mask: torch.Tensor, beta: float) -> torch.Tensor:
    """REINFORCE++'s token advantages (Hu 2025, Eq. 8-10).

    Per-token reward -beta * k1 at every response token plus the score at the last one
    (:func:`prefopt.core.rl.token_rewards`), the undiscounted return G_t = sum_{s >= t} r_s, then
    :func:`prefopt.core.advantages.batch_normalised_advantages` over the masked tokens of the batch.
    scores: (N,); old_logps, ref_logps, mask: (N, K) (ref_logps may be None when beta is 0). Returns (N, K),
    0 off the mask.
    """
    mask = mask.float()
    if beta:
        kl = kl_estimate(old_logps.detach(), ref_logps.detach(), "k1") * mask  # (N, K)
    else:
        kl = torch.zeros_like(mask)
    rewards = token_rewards(scores, kl, mask, beta)  # (N, K)
    returns = rewards.flip(-1).cumsum(-1).flip(-1) * mask  # (N, K) G_t, gamma = 1
    return batch_normalised_advantages(returns, mask)


def reinforce_pp_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      eps_low: float = 0.2, eps_high: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++'s policy loss (Hu 2025, Sec. 3: PPO's clipped surrogate, Schulman et al. 2017 Eq. 7, on the
    normalised token advantages), averaged over every response token of the batch as OpenRLHF's PolicyLoss:

      L = -1/(sum_i |y_i|) sum_i sum_t min(rho_it A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) A_it)

    logps, old_logps, advantages, mask: (N, K). Returns (loss, detached stats).
    """
    return clipped_surrogate(logps, old_logps, advantages, mask, eps_low, eps_high, "token_mean")


class ReinforcePP(GroupPolicyGradient):
    """REINFORCE++: token-level k1 KL in the reward, returns, batch-normalised advantages, clipped (Hu 2025)."""

    @dataclass
    class Config(GroupConfig):
        MIN_GENERATIONS: ClassVar[int] = 1

        num_generations: int = 1  # completions per prompt (OpenRLHF n_samples_per_prompt: 1)
        eps_low: float = 0.2  # ratio clip below (OpenRLHF eps_clip: 0.2)
        eps_high: float = 0.2  # ratio clip above
        beta: float = 0.01  # k1 KL penalty per token in the reward (OpenRLHF init_kl_coef: 0.01)

    def advantages(self, samples, old_logps, ref_logps, mask):
        return reinforce_pp_advantages(samples.reward, old_logps, ref_logps, mask, self.config.beta), {}

    def loss(self, logps, old_logps, advantages, mask, ref_logps):
        return reinforce_pp_loss(logps, old_logps, advantages, mask, self.config.eps_low, self.config.eps_high)
