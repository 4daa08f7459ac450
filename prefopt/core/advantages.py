"""Group-based policy-gradient estimators (GRPO and its successors), as pure tensor functions.

Critic-free RL for LMs samples k completions of each prompt and scores each with one
scalar reward. A *group* is the k completions of one prompt, laid out consecutively:
rewards (B*k,) reshape to (B, k), as in trl's GRPOTrainer (``rewards.view(-1, num_generations)``)
and OpenRLHF (``rewards.reshape(-1, n_samples_per_prompt)``).

  advantages      group_advantages (GRPO / Dr. GRPO), leave_one_out_advantages (RLOO),
                  batch_normalised_advantages (REINFORCE++)
  sampling        zero_variance_groups (DAPO dynamic sampling), overlong_penalty (DAPO reward shaping)
  losses          clipped_surrogate (token-level ratio: GRPO, DAPO, Dr. GRPO),
                  sequence_ratio_surrogate (sequence-level ratio: GSPO), token_loss (their aggregation)

GRPO's KL penalty (Shao et al. 2024, Eq. 4) is the k3 estimator, already in
:func:`prefopt.core.rl.kl_estimate` (``kind="k3"``): it is not repeated here.
Token tensors are (N, K) with a response mask (N, K), 1 on generated tokens; masked positions
are ignored, whatever they hold (padding log-probs may be -inf).
"""

from __future__ import annotations

from typing import Literal

import torch

from prefopt.core.rl import masked_mean, masked_var
from prefopt.errors import PrefoptError

Aggregation = Literal["sequence_mean", "token_mean", "constant"]
AGGREGATIONS = ("sequence_mean", "token_mean", "constant")


# ---------------------------------------------------------------- validation


def _check_eps(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise PrefoptError(f"{name} must be >= 0, got {value}")


def _grouped(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """rewards (B*k,) -> (B, k), after checking that they split into whole groups."""
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise PrefoptError(f"rewards must be a 1-D tensor (B*k,), got shape {shape}")
    if not rewards.is_floating_point():
        raise PrefoptError(f"rewards must be a float tensor, got {rewards.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PrefoptError(f"group size k must be a positive integer, got {k!r}")
    if rewards.numel() == 0 or rewards.numel() % k:
        raise PrefoptError(f"group size k={k} does not divide the {rewards.numel()} rewards into whole groups")
    return rewards.view(-1, k)  # (B, k)


def _check_tokens(mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    """Every tensor must be (N, K) like the mask; returns the mask as a float tensor."""
    if mask.dim() != 2:
        raise PrefoptError(f"mask must be (N, K), got shape {tuple(mask.shape)}")
    for name, x in tensors.items():
        if x.shape != mask.shape:
            raise PrefoptError(f"{name} has shape {tuple(x.shape)}, the mask {tuple(mask.shape)}")
    return mask.float() if not mask.is_floating_point() else mask


def _check_advantages(advantages: torch.Tensor, mask: torch.Tensor, per_token: bool) -> None:
    allowed = [(mask.shape[0],)] + ([tuple(mask.shape)] if per_token else [])
    if tuple(advantages.shape) not in allowed:
        want = " or ".join(str(s) for s in allowed)
        raise PrefoptError(f"advantages must be {want} for a mask of shape {tuple(mask.shape)}, "
                           f"got {tuple(advantages.shape)}")


def _masked_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi/pi_old on response tokens, 0 on padding (so -inf or NaN padding cannot leak into the loss)."""
    return torch.where(mask > 0, logps - old_logps.detach(), torch.zeros_like(logps))  # (N, K)


# ---------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, k: int, scale: Literal["std", "none"] = "std",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome-supervision advantage (Shao et al. 2024, DeepSeekMath, Sec. 4.1.2).

    scale="std":  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)
    scale="none": A_i = r_i - mean(r_group)   (Dr. GRPO, Liu et al. 2025: dividing by the std
                  favours too-easy and too-hard prompts, a question-level difficulty bias)

    std is the *sample* (Bessel-corrected, n - 1) standard deviation of the group and eps 1e-4 is
    added to it, as trl's GRPOTrainer does (``nanstd`` in trl/trainer/utils.py divides by
    count - 1; ``advantages / (std_rewards + 1e-4)`` in trl/trainer/grpo_trainer.py). With k = 1
    the advantage is 0 (trl sets the std of a one-completion group to 0).
    rewards: (B*k,), groups consecutive. Returns (B*k,).
    """
    grouped = _grouped(rewards, k)  # (B, k)
    if scale not in ("std", "none"):
        raise PrefoptError(f"unknown advantage scale {scale!r} (std or none)")
    _check_eps("eps", eps)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (B, k)
    if scale == "std":
        std = grouped.std(dim=1, keepdim=True) if k > 1 else torch.zeros_like(grouped[:, :1])  # (B, 1)
        advantages = advantages / (std + eps)
    return advantages.reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO's advantage (Ahmadian et al. 2024, "Back to Basics", Sec. 3: the REINFORCE leave-one-out estimator).

    A_i = r_i - 1/(k-1) * sum_{j != i} r_j, the baseline of each completion being the mean reward of
    the other k - 1 in its group; equal to k/(k-1) * (r_i - mean(r_group)). The same form as
    OpenRLHF's ``(rewards.sum(-1) - rewards) / (n_samples_per_prompt - 1)`` baseline.
    rewards: (B*k,), groups consecutive, k >= 2. Returns (B*k,).
    """
    grouped = _grouped(rewards, k)  # (B, k)
    if k < 2:
        raise PrefoptError(f"leave-one-out needs k >= 2 completions per prompt, got k={k}")
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)  # (B, k)
    return (grouped - baseline).reshape(-1)


def batch_normalised_advantages(advantages: torch.Tensor, mask: torch.Tensor | None = None,
                                eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++'s global advantage normalisation (Hu 2025, Eq. 10).

    A_norm = (A - mean_batch(A)) / std_batch(A), the statistics over the whole batch rather than
    per group. Implemented as OpenRLHF does (openrlhf/trainer/ppo_utils/experience_maker.py,
    ``compute_advantages_and_returns``): *population* variance (divide by n), and
    ``rsqrt(var.clamp(min=eps))``, so eps floors the variance (a constant batch gives 0, not NaN).

    advantages: (N,) one per sequence, statistics over all N; or (N, K) per-token with mask (N, K),
    statistics over the masked tokens, so a sequence weighs by its length, as in OpenRLHF, and
    masked positions come back 0. For REINFORCE++-baseline subtract the group mean first
    (``group_advantages(r, k, scale="none")``), then normalise the batch.
    """
    _check_eps("eps", eps)
    if not advantages.is_floating_point():
        raise PrefoptError(f"advantages must be a float tensor, got {advantages.dtype}")
    if mask is None:
        if advantages.dim() != 1 or advantages.numel() == 0:
            raise PrefoptError(f"advantages must be a non-empty (N,) tensor without a mask, "
                               f"got shape {tuple(advantages.shape)}")
        mask = torch.ones_like(advantages)
    else:
        mask = _check_tokens(mask, advantages=advantages)
        advantages = torch.where(mask > 0, advantages, torch.zeros_like(advantages))  # (N, K)
    mean = masked_mean(advantages, mask)  # ()
    var = masked_var(advantages, mask, unbiased=False)  # ()
    return (advantages - mean) * torch.rsqrt(var.clamp(min=eps)) * mask


def zero_variance_groups(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Groups whose k rewards are all equal (Yu et al. 2025, DAPO, Sec. 3.2 "Dynamic Sampling").

    Their group-relative advantages are all 0, so they carry no gradient; DAPO drops them and
    samples more prompts. Equality is exact. rewards: (B*k,). Returns a bool tensor (B,).
    """
    grouped = _grouped(rewards, k)  # (B, k)
    return (grouped == grouped[:, :1]).all(dim=1)


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, Sec. 3.4 "Overlong Reward Shaping", R_length).

    With L_max = max_tokens and L_cache = buffer:
      0                                  L <= L_max - L_cache
      ((L_max - L_cache) - L) / L_cache  L_max - L_cache < L <= L_max   (linear from 0 down to -1)
      -1                                 L > L_max
    added to the task reward. OpenRLHF applies the same (``overlong_buffer_len``, with an extra
    ``overlong_penalty_factor``). lengths: (N,) response lengths in tokens. Returns (N,) float.
    """
    for name, value in (("max_tokens", max_tokens), ("buffer", buffer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PrefoptError(f"{name} must be a positive integer, got {value!r}")
    if buffer > max_tokens:
        raise PrefoptError(f"buffer ({buffer}) must not exceed max_tokens ({max_tokens})")
    if lengths.dim() != 1:
        raise PrefoptError(f"lengths must be (N,), got shape {tuple(lengths.shape)}")
    lengths = lengths if lengths.is_floating_point() else lengths.float()
    return ((max_tokens - buffer - lengths) / buffer).clamp(min=-1.0, max=0.0)  # (N,)


# ---------------------------------------------------------------- losses


def token_loss(per_token: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation,
               max_tokens: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (N, K) over the response tokens to a scalar.

    sequence_mean  1/N sum_i 1/|o_i| sum_t l_it          GRPO (Shao et al. 2024, Eq. 3); trl's "grpo"
    token_mean     1/sum_i |o_i| sum_i sum_t l_it        DAPO (Yu et al. 2025, Sec. 3.3); trl's "bnpo"
    constant       1/(N * max_tokens) sum_i sum_t l_it   Dr. GRPO (Liu et al. 2025); trl's "dr_grpo"
                                                         with max_tokens = max_completion_length
    sequence_mean weighs every sequence equally, so a token of a long sequence counts less (a
    length bias); the other two weigh every token equally. A sequence with no response token
    adds 0 (and still counts in N).
    """
    mask = _check_tokens(mask, per_token=per_token)
    if aggregation not in AGGREGATIONS:
        raise PrefoptError(f"unknown loss aggregation {aggregation!r} ({', '.join(AGGREGATIONS)})")
    masked = torch.where(mask > 0, per_token, torch.zeros_like(per_token))  # (N, K)
    if aggregation == "sequence_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if aggregation == "token_mean":
        return masked_mean(masked, mask)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise PrefoptError(f"aggregation 'constant' needs max_tokens, a positive integer; got {max_tokens!r}")
    longest = int(mask.sum(-1).max().item()) if mask.numel() else 0
    if longest > max_tokens:
        raise PrefoptError(f"a response has {longest} tokens, more than max_tokens={max_tokens}")
    return masked.sum() / (mask.shape[0] * max_tokens)


def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    aggregation: Aggregation = "sequence_mean",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The token-level clipped objective of GRPO (Shao et al. 2024, Eq. 3) and DAPO (Yu et al. 2025), as a loss.

    l_it = -min(rho_it * A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) * A_i), rho_it = exp(logp - old_logp),
    reduced by :func:`token_loss`. eps_high defaults to eps_low (PPO's symmetric clip, Schulman et
    al. 2017, Eq. 7); a larger eps_high is DAPO's Clip-Higher (Sec. 3.1; 0.2 / 0.28 in the paper).
    A clipped token has zero gradient. KL (GRPO's beta term) is not included: add
    beta * kl_estimate(logps, ref_logps, "k3") to the per-token loss before aggregating if wanted.

    logps, old_logps, mask: (N, K) (old_logps is treated as a constant); advantages: (N,) one per
    sequence, broadcast over its tokens, or (N, K). Stats (detached, shares of response tokens, as
    trl's clip_ratio/low_mean and high_mean): clip_fraction_low (rho < 1 - eps_low and A < 0),
    clip_fraction_high (rho > 1 + eps_high and A > 0), ratio_mean.
    """
    mask = _check_tokens(mask, logps=logps, old_logps=old_logps)
    _check_advantages(advantages, mask, per_token=True)
    eps_high = eps_low if eps_high is None else eps_high
    _check_eps("eps_low", eps_low)
    _check_eps("eps_high", eps_high)
    if eps_low >= 1:
        raise PrefoptError(f"eps_low must be below 1 (the ratio's lower bound is 1 - eps_low), got {eps_low}")
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, K)
    ratio = torch.exp(_masked_log_ratio(logps, old_logps, mask))  # (N, K)
    unclipped = ratio * adv  # (N, K)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # (N, K)
    per_token = -torch.minimum(unclipped, clipped)  # (N, K)
    loss = token_loss(per_token, mask, aggregation, max_tokens)
    with torch.no_grad():
        stats = {
            "clip_fraction_low": masked_mean(((ratio < 1.0 - eps_low) & (adv < 0)).float(), mask),
            "clip_fraction_high": masked_mean(((ratio > 1.0 + eps_high) & (adv > 0)).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def sequence_ratio_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's sequence-level clipped objective (Zheng et al. 2025, Eq. 5), as a loss.

    s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(1/|y_i| sum_t (logp_it - old_logp_it)), the
    length-normalised sequence ratio; loss = -1/N sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i).
    A whole sequence is clipped or not. This is trl's ``importance_sampling_level="sequence"``
    with ``loss_type="grpo"`` (trl/trainer/grpo_trainer.py: ``(log_ratio * mask).sum(-1) /
    mask.sum(-1).clamp(min=1.0)``, then the per-sequence loss averaged over sequences; a sequence
    with no response token adds 0). The paper clips at eps_low 3e-4, eps_high 4e-4 (Sec. 5.1).

    logps, old_logps, mask: (N, K) (old_logps is a constant); advantages: (N,). Stats (detached,
    shares of sequences): clip_fraction_low, clip_fraction_high, ratio_mean (mean s_i).
    """
    mask = _check_tokens(mask, logps=logps, old_logps=old_logps)
    _check_advantages(advantages, mask, per_token=False)
    _check_eps("eps_low", eps_low)
    _check_eps("eps_high", eps_high)
    if eps_low >= 1:
        raise PrefoptError(f"eps_low must be below 1 (the ratio's lower bound is 1 - eps_low), got {eps_low}")
    lengths = mask.sum(-1)  # (N,)
    log_s = _masked_log_ratio(logps, old_logps, mask).sum(-1) / lengths.clamp(min=1)  # (N,)
    s = torch.exp(log_s)  # (N,)
    unclipped = s * advantages  # (N,)
    clipped = torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high) * advantages  # (N,)
    per_sequence = -torch.minimum(unclipped, clipped) * (lengths > 0)  # (N,)
    loss = per_sequence.mean()
    with torch.no_grad():
        has_tokens = (lengths > 0).float()  # (N,)
        stats = {
            "clip_fraction_low": masked_mean(((s < 1.0 - eps_low) & (advantages < 0)).float(), has_tokens),
            "clip_fraction_high": masked_mean(((s > 1.0 + eps_high) & (advantages > 0)).float(), has_tokens),
            "ratio_mean": masked_mean(s, has_tokens),
        }
    return loss, stats
