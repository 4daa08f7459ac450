"""Pieces of on-policy RL from human feedback, as pure tensor functions.

The InstructGPT recipe (Ouyang et al. 2022; Ziegler et al. 2019; Stiennon et
al. 2020): per-token KL penalty against the reference, a scalar score at the
last response token, GAE advantages (Schulman et al. 2016), whitening, and
PPO's clipped policy and value losses (Schulman et al. 2017). Every function
takes a response mask (N, G) — 1 on generated tokens up to and including EOS —
and ignores masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the entries where mask is 1. x, mask: same shape; returns ()."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked entries (Bessel-corrected by default, as trl's masked_var)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries; with shift_mean=False the mean is added back.

    Masked positions come back as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ---------------------------------------------------------------- KL estimators


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating KL").

    With log r = log pi_ref(x) - log pi(x):
      k1 = -log r                   unbiased, high variance, can be negative
      k2 = (log r)^2 / 2            biased, low variance, >= 0
      k3 = (r - 1) - log r          unbiased, low variance, >= 0
    logp, ref_logp: (N, G). Returns (N, G).
    """
    log_ratio = ref_logp - logp  # (N, G)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2 or k3)")


@dataclass
class AdaptiveKLController:
    """Adapts the KL coefficient towards a target KL (Ziegler et al. 2019, Sec. 2.2).

    e = clip(KL / target - 1, -0.2, 0.2);  coef <- coef * (1 + e * n_steps / horizon).
    With target None the coefficient stays fixed.
    """

    coef: float = 0.05
    target: float | None = 6.0
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * n_steps / self.horizon
        return self.coef


def per_sequence_kl(policy_logps: torch.Tensor, reference_logps: torch.Tensor, mask: torch.Tensor,
                    kind: str = "k1") -> torch.Tensor:
    """KL(pi || pi_ref) of each sampled sequence: the per-token estimate summed over its response.

    policy_logps, reference_logps, mask: (N, K) token log-probs of the sampled tokens under
    each model and the response mask. Returns (N,) in float32.
    """
    return (kl_estimate(policy_logps.float(), reference_logps.float(), kind) * mask).sum(-1)


# ---------------------------------------------------------------- rewards and advantages


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL at every response token, plus the score at the last one.

    score: (N,); kl, mask: (N, G). Returns (N, G).
    """
    rewards = -kl_coef * kl * mask  # (N, G)
    positions = torch.arange(mask.shape[1], device=mask.device)  # (G,)
    last = (mask * positions).argmax(-1)  # (N,) index of each row's final response token (may follow a prompt)
    rows = torch.arange(score.shape[0], device=score.device)
    rewards[rows, last] += score
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) over each response.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0);
    A_t = delta_t + gamma * lam * A_{t+1}.  Returns (advantages, returns = A + V), each (N, G),
    zero where masked. rewards, values, mask: (N, G), responses right-padded.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (N,)
    running = torch.zeros_like(rewards[:, 0])  # (N,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (N,)
        running = delta + gamma * lam * running
        running = running * mask[:, t]  # padding after EOS carries nothing back
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


# ---------------------------------------------------------------- PPO losses


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise.

    loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))) over response tokens.
    Returns (loss (), stats with clip_fraction and approx_kl, detached). approx_kl is the k3 estimate of
    KL(pi_old || pi) on the tokens, which were sampled from pi_old: (r - 1) - log r with r = pi / pi_old
    (Schulman 2020, "Approximating KL"); the inverted ratio would estimate chi^2(old || new) - KL instead.
    """
    log_ratio = logp - old_logp  # (N, G)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),  # k3 of KL(old || new), r = new/old
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss: 0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip within old_V +- clip."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask)}
    return loss, stats

