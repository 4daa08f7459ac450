"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt (online, critic-free).

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs", arXiv:2402.14740. The whole completion is one action (Sec. 3.1); the gradient
estimate (Sec. 3.2) is

  1/k sum_i [R(y_i, x) - 1/(k-1) sum_{j != i} R(y_j, x)] grad log pi(y_i | x),

each completion's baseline being the mean reward of the other k - 1 (``leave_one_out_advantages``).
The KL penalty is folded into the reward, R = r - beta * sum_t log(pi(y_t) / pi_ref(y_t)) (the k1
estimate, summed over the sequence; ``kl_in_reward``, the default, as in the paper and trl's
RLOOTrainer), or added to the loss as beta * sum_t k3. One update per step is plain REINFORCE; with more
(``updates_per_batch`` or ``minibatches`` > 1) the sequence ratio is clipped as trl's RLOOTrainer does.
The step (sampling, judge, logging) is :class:`prefopt.algorithms.grpo.GroupPolicyGradient`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.algorithms.grpo import GroupConfig, GroupPolicyGradient
from prefopt.core.advantages import leave_one_out_advantages
from prefopt.core.rl import kl_estimate
from prefopt.errors import PrefoptError


def kl_shaped_rewards(scores: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """RLOO's KL-penalised sequence reward (Ahmadian et al. 2024, Sec. 2, the RLHF reward with its KL term):

      R_i = r_i - beta * sum_t (log pi_old(y_it) - log pi_ref(y_it))   (k1, summed over the response)

    scores: (N,); old_logps, ref_logps, mask: (N, K) (log-probs of the sampling policy). Returns (N,).
    """
    kl = torch.where(mask > 0, old_logps.detach() - ref_logps.detach(), torch.zeros_like(old_logps))  # (N, K)
    return scores - beta * kl.sum(-1)


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              eps: float | None = None, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO's REINFORCE loss (Ahmadian et al. 2024, Sec. 3.2), the completion as one action:

      L = -1/N sum_i rho_i A_i,   rho_i = pi(y_i|x) / pi_old(y_i|x) = exp(sum_t logp_it - old_logp_it)

    On policy rho_i = 1 and grad L = -1/N sum_i A_i grad log pi(y_i|x), the estimator above. With ``eps``
    (several updates per batch) rho_i is clipped pessimistically, -min(rho_i A_i, clip(rho_i, 1 - eps,
    1 + eps) A_i), as trl's RLOOTrainer does (a sequence-level, unnormalised ratio). With beta > 0 and
    ref_logps, the KL-as-loss variant adds beta * 1/N sum_i sum_t k3_it.

    logps, old_logps, ref_logps, mask: (N, K); advantages: (N,). Returns (loss, detached stats, shares of
    sequences: clip_fraction_low/high, ratio_mean).
    """
    if mask.shape != logps.shape or old_logps.shape != logps.shape:
        raise PrefoptError(f"logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)} and mask "
                           f"{tuple(mask.shape)} must have one shape (N, K)")
    if advantages.shape != logps.shape[:1]:
        raise PrefoptError(f"advantages must be (N,) = {tuple(logps.shape[:1])}, got {tuple(advantages.shape)}")
    mask = mask.float()
    log_ratio = torch.where(mask > 0, logps - old_logps.detach(), torch.zeros_like(logps)).sum(-1)  # (N,)
    ratio = torch.exp(log_ratio)  # (N,)
    per_sequence = ratio * advantages  # (N,)
    low = high = torch.zeros_like(ratio, dtype=torch.bool)
    if eps is not None:
        if not 0 <= eps < 1:
            raise PrefoptError(f"eps must be in [0, 1), got {eps}")
        per_sequence = torch.minimum(per_sequence, torch.clamp(ratio, 1 - eps, 1 + eps) * advantages)
        low, high = (ratio < 1 - eps) & (advantages < 0), (ratio > 1 + eps) & (advantages > 0)
    loss = -per_sequence.mean()
    if beta:
        if ref_logps is None:
            raise PrefoptError("beta > 0 needs the reference log-probs (ref_logps)")
        kl = torch.where(mask > 0, kl_estimate(logps, ref_logps.detach(), "k3"), torch.zeros_like(logps))
        loss = loss + beta * kl.sum(-1).mean()
    with torch.no_grad():
        stats = {"clip_fraction_low": low.float().mean(), "clip_fraction_high": high.float().mean(),
                 "ratio_mean": ratio.mean()}
    return loss, stats


class RLOO(GroupPolicyGradient):
    """RLOO: REINFORCE with a leave-one-out baseline over k samples, KL in the reward (Ahmadian et al. 2024)."""

    @dataclass
    class Config(GroupConfig):
        num_generations: int = 4  # completions per prompt, k (the paper: 2 and 4)
        updates_per_batch: int = 1  # passes over each step's samples (1: plain REINFORCE, as the paper)
        eps: float = 0.2  # sequence-ratio clip, used only with more than one update per step (trl: 0.2)
        beta: float = 0.05  # KL coefficient (trl RLOOConfig: 0.05)
        kl_in_reward: bool = True  # True: r - beta * sum_t k1 (the paper); False: beta * sum_t k3 in the loss

    def advantages(self, samples, old_logps, ref_logps, mask):
        c = self.config
        reward = samples.reward
        metrics = {}
        if c.beta > 0 and c.kl_in_reward:
            reward = kl_shaped_rewards(reward, old_logps, ref_logps, mask, c.beta)
            metrics["kl_penalty"] = float((samples.reward - reward).mean())
        return leave_one_out_advantages(reward, c.num_generations), metrics

    def loss(self, logps, old_logps, advantages, mask, ref_logps):
        c = self.config
        several = c.updates_per_batch * c.minibatches > 1
        beta = 0.0 if c.kl_in_reward else c.beta
        return rloo_loss(logps, old_logps, advantages, mask, c.eps if several else None, beta, ref_logps)

