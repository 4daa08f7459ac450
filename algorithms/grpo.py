"""Group policy gradient: GRPO and the successors that change one piece of it (online, critic-free).

Each step samples ``num_generations`` (k) completions of every prompt from the current policy, scores
each with the judge, and turns the k scores of a prompt (a *group*) into advantages relative to each
other, so no value model is needed. The registered names differ only in the pieces below, all pure
functions of :mod:`prefopt.core.advantages` (tested there on hand-worked values):

==========  ==================  ====================  =============================  ==========================
name        advantage           ratio and clip         aggregation                    extra
==========  ==================  ====================  =============================  ==========================
grpo        (r - mean) / std    token, 0.2 / 0.2       sequence_mean                  k3 KL to the reference
dr-grpo     r - mean            token, 0.2 / 0.2       constant (max_new_tokens)
dapo        (r - mean) / std    token, 0.2 / 0.28      token_mean                     dynamic sampling, overlong
gspo        (r - mean) / std    sequence, 3e-4 / 4e-4  per sequence
==========  ==================  ====================  =============================  ==========================

RLOO (:mod:`prefopt.algorithms.rloo`) and REINFORCE++ (:mod:`prefopt.algorithms.reinforce_pp`) use
the same base, :class:`GroupPolicyGradient`, with their own advantages and losses.

One step: sample (k completions of each of the step's prompts, groups consecutive, in one ``ctx.rollout``
call that prefills each prompt once: :meth:`GroupPolicyGradient.sample`), score, shape, compute advantages, then
``updates_per_batch`` passes over ``minibatches`` random minibatches, one optimizer update each.
The "old" log-probs of the ratio: with a single update per step they are the current ones detached
(the ratio is exactly 1 and its gradient the policy gradient, so no extra forward is done); with more
updates, one no-grad forward before the first update gives them. The rollout's own sampling
log-probs are not used: they are under softmax(logits / temperature), from a cached left-padded
decode, so they match the training forward only at temperature 1 and only to ~1e-4.

The reference model is built when ``beta > 0`` or ``measure_kl`` (the default: every step logs the k3 KL
it has spent, at the cost of one reference forward); with ``beta=0 measure_kl=false`` there is none, and
evaluation (``evaluate``, as PPO's) reports the held-out reward and length but no KL.

The policy's entropy per response token comes from the same forward as the old log-probs: the fused
log-prob function makes it from each chunk of logits as it goes (no logits are stored).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from prefopt.core.advantages import (
    clipped_surrogate,
    group_advantages,
    overlong_penalty,
    sequence_ratio_surrogate,
    token_loss,
    zero_variance_groups,
)
from prefopt.core.algorithm import check_at_least, check_finite, check_in_range, check_nonnegative
from prefopt.core.logprobs import first_response_position, forward_token_logps
from prefopt.core.rl import kl_estimate, masked_mean, per_sequence_kl
from prefopt.core.shared_prompt import consecutive_groups
from prefopt.errors import PrefoptError
from prefopt.training.online import JudgedOnlineAlgorithm, OnlineContext, evaluate_samples

# A resampling attempt seeds its rollout as step + attempt * RESAMPLE_STRIDE: never a training step's seed
# (steps stay below 2**31) nor evaluation's (-1), and the same on a resumed run.
RESAMPLE_STRIDE = 2**31


# ---------------------------------------------------------------- the losses (pure functions)


def _kl_term(logps: torch.Tensor, ref_logps: torch.Tensor | None, mask: torch.Tensor, beta: float,
             aggregation: str, max_tokens: int | None = None) -> torch.Tensor | None:
    """beta * k3(pi || pi_ref) per token, aggregated like the policy term (None when beta is 0)."""
    if beta == 0:
        return None
    if ref_logps is None:
        raise PrefoptError("beta > 0 needs the reference log-probs (ref_logps)")
    kl = kl_estimate(logps, ref_logps.detach(), "k3")  # (N, K)
    kl = torch.where(mask > 0, kl, torch.zeros_like(kl))
    return beta * token_loss(kl, mask, aggregation, max_tokens)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              eps_low: float = 0.2, eps_high: float | None = None, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's objective (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, Eq. 3), as a loss to minimise:

      L = -1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i) - beta D_KL,it ]

    rho_it = pi(o_it) / pi_old(o_it); D_KL is the k3 estimator of Eq. 4,
    pi_ref/pi - log(pi_ref/pi) - 1. logps, old_logps, ref_logps, mask: (N, K); advantages: (N,).
    Returns (loss, detached stats: clip_fraction_low/high, ratio_mean).
    """
    loss, stats = clipped_surrogate(logps, old_logps, advantages, mask, eps_low, eps_high, "sequence_mean")
    kl = _kl_term(logps, ref_logps, mask, beta, "sequence_mean")
    return (loss if kl is None else loss + kl), stats


def dr_grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                 max_tokens: int, eps: float = 0.2, beta: float = 0.0,
                 ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783, Sec. 3.2 and Fig. 1):
    GRPO's Eq. 3 with the per-response 1/|o_i| replaced by one constant,

      L = -1/(G * max_tokens) sum_i sum_t min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i),

    with A_i = r_i - mean(r_group) (no division by the std; see group_advantages(scale="none")).
    max_tokens is the generation budget (trl's dr_grpo uses max_completion_length). Shapes as grpo_loss.
    """
    loss, stats = clipped_surrogate(logps, old_logps, advantages, mask, eps, eps, "constant", max_tokens)
    kl = _kl_term(logps, ref_logps, mask, beta, "constant", max_tokens)
    return (loss if kl is None else loss + kl), stats


def dapo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              eps_low: float = 0.2, eps_high: float = 0.28, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DAPO's objective (Yu et al. 2025, arXiv:2503.14476, Sec. 3, Eq. 8), as a loss:

      L = -1/(sum_i |o_i|) sum_i sum_t min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)

    the token-level mean (Sec. 3.3) with the decoupled Clip-Higher bounds (Sec. 3.1: 0.2 and 0.28). Zero-variance
    groups (Sec. 3.2) and truncated completions (Sec. 3.4) are removed before this, by the caller: dropped
    groups are left out of the batch, masked completions have mask 0. DAPO has no KL term (Sec. 2.3);
    beta > 0 adds GRPO's k3 term, averaged per token. Shapes as grpo_loss.
    """
    loss, stats = clipped_surrogate(logps, old_logps, advantages, mask, eps_low, eps_high, "token_mean")
    kl = _kl_term(logps, ref_logps, mask, beta, "token_mean")
    return (loss if kl is None else loss + kl), stats


def gspo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              eps_low: float = 3e-4, eps_high: float = 4e-4, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's objective (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071, Eq. 5):

      L = -1/G sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i),
      s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|)   (Eq. 7, the length-normalised sequence ratio)

    clipped per sequence at 3e-4 / 4e-4 (Sec. 5.1). GSPO uses no KL term; beta > 0 adds GRPO's k3 term,
    averaged per sequence. Shapes as grpo_loss; the clip fractions are shares of sequences.
    """
    loss, stats = sequence_ratio_surrogate(logps, old_logps, advantages, mask, eps_low, eps_high)
    kl = _kl_term(logps, ref_logps, mask, beta, "sequence_mean")
    return (loss if kl is None else loss + kl), stats


# ---------------------------------------------------------------- options


def check_group_options(config, min_generations: int = 2) -> None:
    """The options every group policy-gradient Config shares, each within its range (one-line errors)."""
    if not config.judge.strip():
        raise PrefoptError("option 'judge': give a judge spec, e.g. gold:qa or python:my_rewards:brevity")
    if config.num_generations < min_generations:
        why = " (a group needs two completions to compare)" if min_generations == 2 else ""
        raise PrefoptError(f"option 'num_generations': must be >= {min_generations}{why}, got {config.num_generations}")
    for name in ("max_new_tokens", "updates_per_batch", "minibatches"):
        check_at_least(name, getattr(config, name), 1)
    if not config.temperature > 0 or not math.isfinite(config.temperature):
        raise PrefoptError(f"option 'temperature': must be > 0 (the k completions of a prompt are sampled), "
                           f"got {config.temperature}")
    if not 0 < config.top_p <= 1:
        raise PrefoptError(f"option 'top_p': must be in (0, 1], got {config.top_p}")
    check_nonnegative("beta", config.beta)
    check_finite("beta", config.beta)
    for name in ("eps_low", "eps", "eps_high"):
        if hasattr(config, name):
            check_in_range(name, getattr(config, name), 0.0, 1.0, include_high=False)


@dataclass
class GroupConfig:
    """The options every group method shares; each method's Config derives from it and sets its own defaults."""

    judge: str = "gold:qa"  # gold:<task>, reward:<run dir>, python:MODULE:FUNCTION, or several, comma-separated
    judge_weights: str = ""  # weights of comma-separated judges, e.g. "1,0.5" (empty: 1 each)
    gold: str = ""  # a second judge logged on every step's samples ("gold"), never trained on
    num_generations: int = 4  # completions per prompt, the group size G (trl: num_generations)
    max_new_tokens: int = 32  # rollout length limit
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    updates_per_batch: int = 1  # passes over each step's samples
    minibatches: int = 1  # optimizer updates per pass
    beta: float = 0.0  # k3 KL-to-reference coefficient in the loss
    mask_truncated: bool = False  # completions cut at max_new_tokens get no loss
    measure_kl: bool = True  # build the reference to log KL(policy || reference) even when beta is 0 (one more forward)

    MIN_GENERATIONS: ClassVar[int] = 2  # a group needs two completions to compare (REINFORCE++: 1)

    def __post_init__(self):
        check_group_options(self, self.MIN_GENERATIONS)


# ---------------------------------------------------------------- samples


@dataclass
class Samples:
    """k scored completions of each of B prompts; rows of a group are consecutive (N = B * k)."""

    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, loss_mask: (N, T) right-padded, on the device
    score: torch.Tensor  # (N,) the judge's score
    reward: torch.Tensor  # (N,) the reward trained on (the score after any shaping)
    lengths: torch.Tensor  # (N,) response tokens, the stop token included
    truncated: torch.Tensor  # (N,) bool: cut at max_new_tokens without a stop token
    texts: list[str]
    messages: list

    def __len__(self) -> int:
        return self.score.shape[0]

    def rows(self, rows: list[int]) -> Samples:
        index = torch.tensor(rows, dtype=torch.long, device=self.score.device)
        return Samples({k: v[index] for k, v in self.batch.items()}, self.score[index], self.reward[index],
                       self.lengths[index], self.truncated[index], [self.texts[i] for i in rows],
                       [self.messages[i] for i in rows])

    @staticmethod
    def cat(parts: list[Samples], pad_id: int) -> Samples:
        """Samples of several rollouts as one batch (rows right-padded to the widest)."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.batch["input_ids"].shape[1] for p in parts)
        fill = {"input_ids": pad_id, "attention_mask": 0, "loss_mask": 0}

        def padded(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        batch = {k: torch.cat([padded(p.batch[k], v) for p in parts]) for k, v in fill.items()}
        return Samples(batch, torch.cat([p.score for p in parts]), torch.cat([p.reward for p in parts]),
                       torch.cat([p.lengths for p in parts]), torch.cat([p.truncated for p in parts]),
                       [t for p in parts for t in p.texts], [m for p in parts for m in p.messages])


# ---------------------------------------------------------------- the shared step


class GroupPolicyGradient(JudgedOnlineAlgorithm):
    """Base of the critic-free group methods: sample k completions per prompt, score, advantages, clipped updates.

    A subclass sets its Config (see :func:`check_group_options`) and implements :meth:`advantages` and
    :meth:`loss`; it may override :meth:`shape_rewards` and set ``dynamic_sampling`` (DAPO).
    """

    dynamic_sampling: ClassVar[bool] = False  # drop zero-variance groups, resampling them first (DAPO)
    shares_prompts = True  # a group's forwards run its prompt once (run option share_prompt)

    def __init__(self, config=None):
        super().__init__(config)
        # the reference is built when training uses it, or (measure_kl) to log the KL the run spends
        self.needs_reference = self.uses_reference() or self.config.measure_kl
        self._judge_seconds = 0.0

    # ---- hooks

    def uses_reference(self) -> bool:
        """Whether training needs reference log-probs (any KL term)."""
        return self.config.beta > 0

    def shape_rewards(self, score: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(N,) judge scores -> (N,) rewards to train on, and metrics; identity by default."""
        return score, {}

    def advantages(self, samples: Samples, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                   mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(N,) per-sequence or (N, K) per-token advantages (no grad), and metrics. old_logps, ref_logps (None
        without a reference) and mask are (N, K); the mask covers every response token, truncated ones too."""
        raise NotImplementedError

    def loss(self, logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             ref_logps: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # ---- OnlineAlgorithm

    def evaluate(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        """Judge score, KL to the reference (k1, k3) and length of one sample per held-out prompt (as PPO)."""
        return evaluate_samples(ctx, prompts, messages, self.judge, self.sampling())

    # ---- sampling

    def sample(self, ctx: OnlineContext, prompts: list[list[int]], messages: list, attempt: int = 0) -> Samples:
        """k completions of each prompt, scored. The one place rollouts are made: one ``ctx.rollout`` call with
        num_samples=k, which prefills each prompt once and decodes its k completions from copies of its KV
        cache (rows prompt0 x k, prompt1 x k, ...: the layout, and the draws, of the prompts repeated k times).
        Attempt 0 is seeded by the step, as every online rollout; a resampling attempt by (step, attempt)."""
        c = self.config
        k = c.num_generations
        msgs = [m for m in messages for _ in range(k)]
        step = ctx.step
        ctx.step = step + attempt * RESAMPLE_STRIDE
        try:
            rollout, batch = ctx.rollout(prompts, self.sampling(), num_samples=k)
        finally:
            ctx.step = step
        texts = rollout.texts(ctx.tokenizer)
        t0 = time.perf_counter()
        score = torch.tensor(self.judge.score(msgs, texts), dtype=torch.float32, device=ctx.device)  # (N,)
        self._judge_seconds += time.perf_counter() - t0
        lengths = rollout.lengths().to(ctx.device)  # (N,)
        if rollout.stopped is not None:
            truncated = ~rollout.stopped.to(ctx.device)
        else:  # a hand-built rollout: a response at the length limit counts as cut
            truncated = lengths >= c.max_new_tokens
        reward, _ = self.shape_rewards(score, lengths)
        return Samples(batch, score, reward, lengths, truncated, texts, msgs)

    def _dynamic_sampling(self, ctx, first: Samples) -> tuple[Samples | None, dict[str, float]]:
        """DAPO's dynamic sampling (Yu et al. 2025, Sec. 3.2, Algorithm 1): a group whose k rewards are all equal
        gives no gradient, so it is replaced by the group of a new prompt from the run's prompt stream
        (``ctx.more_prompts``), up to max_resample rounds; a slot still degenerate after them is dropped.
        Round r draws with the seed of (step, r), so a resumed run repeats the uninterrupted one."""
        k = self.config.num_generations
        degenerate = zero_variance_groups(first.reward, k).tolist()  # (B,)
        pending = [g for g, d in enumerate(degenerate) if d]
        if not pending:
            return first, {"resampled_groups": 0.0, "dropped_share": 0.0}
        if ctx.more_prompts is None:
            raise PrefoptError("dynamic sampling refills groups from the run's prompt stream, and this context has "
                               "none (ctx.more_prompts is set by the online run loop)")
        slots = len(degenerate)
        groups = [first.rows(list(range(g * k, (g + 1) * k))) for g in range(slots)]
        resampled = 0
        for attempt in range(1, self.config.max_resample + 1):
            if not pending:
                break
            ids, messages = ctx.more_prompts(len(pending))
            new = self.sample(ctx, ids, messages, attempt)
            resampled += len(pending)
            still = zero_variance_groups(new.reward, k).tolist()
            for j, g in enumerate(pending):
                if not still[j]:
                    groups[g] = new.rows(list(range(j * k, (j + 1) * k)))
            pending = [g for j, g in enumerate(pending) if still[j]]
        dropped = set(pending)
        kept = [groups[g] for g in range(slots) if g not in dropped]
        metrics = {"resampled_groups": float(resampled), "dropped_share": len(dropped) / slots}
        pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        return (Samples.cat(kept, pad_id) if kept else None), metrics

    # ---- the step

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        c = self.config
        k = c.num_generations
        self._judge_seconds = 0.0
        t0 = time.perf_counter()
        first = self.sample(ctx, prompts, messages)
        _, shaping = self.shape_rewards(first.score, first.lengths)
        metrics: dict[str, float] = {
            "reward": float(first.score.mean()),
            **self.reward_parts(),
            **shaping,
        }
        if self.gold is not None:  # the oracle on the same samples, never trained on
            t_gold = time.perf_counter()
            metrics["gold"] = float(sum(self.gold.score(first.messages, first.texts)) / len(first))
            self._judge_seconds += time.perf_counter() - t_gold
        if k > 1:
            metrics["zero_variance_share"] = float(zero_variance_groups(first.reward, k).float().mean())
        train = first
        if self.dynamic_sampling:
            train, dynamic = self._dynamic_sampling(ctx, first)
            metrics.update(dynamic)
        t_generated = time.perf_counter()

        metrics.update(self._update(ctx, train, first))
        t_updated = time.perf_counter()
        metrics.update({
            "response_length": float(first.lengths.float().mean()),
            "truncated_share": float(first.truncated.float().mean()),
            "generation_seconds": t_generated - t0 - self._judge_seconds,
            "judge_seconds": self._judge_seconds,
            "update_seconds": t_updated - t_generated,
        })
        return metrics

    def _update(self, ctx: OnlineContext, samples: Samples | None, first_draw: Samples) -> dict[str, float]:
        """Advantages and the optimizer updates on `samples` (None: every group was dropped, nothing to learn;
        the KL to the reference is then measured on the step's first draw, so every step logs the same keys)."""
        c = self.config
        empty = {"advantage_mean": 0.0, "advantage_std": 0.0, "loss": 0.0, "grad_norm": 0.0,
                 "clip_fraction_low": 0.0, "clip_fraction_high": 0.0, "ratio_mean": 1.0, "updates": 0.0}
        if samples is None:  # the entropy (and KL) of the policy on the step's first draw
            batch = first_draw.batch
            with torch.no_grad(), ctx.autocast():
                logps, mask, entropy = forward_token_logps(ctx.lm, batch, return_entropy=True)  # (N, K) x 3
            empty["entropy"] = float(masked_mean(entropy, mask))
            if self.needs_reference:
                ref_logps = ctx.reference_token_logps(batch)  # (N, K)
                empty["kl"] = float(per_sequence_kl(logps, ref_logps, mask, "k3").mean())
            return empty
        # each prompt once for its group's completions, where the run shares prompts (the same values)
        batch = ctx.with_shared_prompts(samples.batch, consecutive_groups(len(samples), c.num_generations))
        first = first_response_position(batch["loss_mask"])
        ref_logps = ctx.reference_token_logps(batch) if self.needs_reference else None  # (N, K), no grad
        single = c.updates_per_batch == 1 and c.minibatches == 1
        if single:  # the old log-probs are the current ones, detached: one forward, kept for the update
            with ctx.autocast():
                logps, response_mask, entropy = forward_token_logps(ctx.lm, batch, first, return_entropy=True)
            old_logps = logps.detach()  # (N, K)
        else:  # fixed before the first update
            with torch.no_grad(), ctx.autocast():
                old_logps, response_mask, entropy = forward_token_logps(ctx.lm, batch, first, return_entropy=True)
        # the sampling policy's mean next-token entropy over response tokens (a collapse shows here first)
        metrics: dict[str, float] = {"entropy": float(masked_mean(entropy, response_mask))}
        if ref_logps is not None:  # per sequence, summed over its tokens, as the evaluation's kl_k3
            metrics["kl"] = float(per_sequence_kl(old_logps, ref_logps, response_mask, "k3").mean())
        with torch.no_grad():
            advantages, extra = self.advantages(samples, old_logps, ref_logps, response_mask)  # (N,) or (N, K)
        metrics.update(extra)
        if advantages.dim() == 1:
            metrics["advantage_mean"] = float(advantages.mean())
            metrics["advantage_std"] = float(advantages.std(unbiased=False))
        else:
            mean = masked_mean(advantages, response_mask)
            metrics["advantage_mean"] = float(mean)
            metrics["advantage_std"] = float(masked_mean((advantages - mean) ** 2, response_mask).sqrt())
        mask = response_mask
        if c.mask_truncated:  # overlong filtering (DAPO Sec. 3.4): a completion cut short gets no loss
            mask = mask * (~samples.truncated).float()[:, None]
        if float(mask.sum()) == 0:  # every completion masked: no optimizer step
            return {**empty, **metrics}
        sums = dict.fromkeys(("loss", "grad_norm", "clip_fraction_low", "clip_fraction_high", "ratio_mean"), 0.0)
        n = len(samples)
        size = math.ceil(n / c.minibatches)
        gen = torch.Generator().manual_seed(ctx.run.seed * 7919 + ctx.step)
        updates = 0
        for _ in range(c.updates_per_batch):
            for idx in (torch.arange(n) if single else torch.randperm(n, generator=gen)).split(size):
                idx = idx.to(ctx.device)
                if not single:
                    with ctx.autocast():
                        part = {k: samples.batch[k][idx] for k in ("input_ids", "attention_mask", "loss_mask")}
                        logps, _ = forward_token_logps(ctx.lm, part, first)
                loss, stats = self.loss(logps, old_logps[idx], advantages[idx], mask[idx],
                                        None if ref_logps is None else ref_logps[idx])
                sums["grad_norm"] += ctx.update(loss)
                sums["loss"] += float(loss.detach())
                for key in ("clip_fraction_low", "clip_fraction_high", "ratio_mean"):
                    sums[key] += float(stats[key])
                updates += 1
        return {**metrics, **{key: value / updates for key, value in sums.items()}, "updates": float(updates)}


# ---------------------------------------------------------------- the registered names


class GRPO(GroupPolicyGradient):
    """GRPO: k samples per prompt, group-normalised advantages, clipped token ratio, k3 KL (Shao et al. 2024)."""

    @dataclass
    class Config(GroupConfig):
        updates_per_batch: int = 1  # passes over each step's samples (GRPO's mu; 1 in DeepSeekMath Sec. 4.2)
        eps_low: float = 0.2  # ratio clip below: 1 - eps_low (Schulman et al. 2017)
        eps_high: float = 0.2  # ratio clip above: 1 + eps_high
        beta: float = 0.0  # k3 KL-to-reference coefficient (DeepSeekMath: 0.04; trl: 0.0)

    def advantages(self, samples, old_logps, ref_logps, mask):
        return group_advantages(samples.reward, self.config.num_generations, "std"), {}

    def loss(self, logps, old_logps, advantages, mask, ref_logps):
        c = self.config
        return grpo_loss(logps, old_logps, advantages, mask, c.eps_low, c.eps_high, c.beta, ref_logps)


class DrGRPO(GroupPolicyGradient):
    """Dr. GRPO: GRPO without the std and 1/|o| normalisations, a constant denominator (Liu et al. 2025)."""

    @dataclass
    class Config(GroupConfig):
        max_new_tokens: int = 32  # rollout length limit, also the loss's constant denominator
        eps: float = 0.2  # ratio clip: [1 - eps, 1 + eps]

    def advantages(self, samples, old_logps, ref_logps, mask):
        return group_advantages(samples.reward, self.config.num_generations, "none"), {}

    def loss(self, logps, old_logps, advantages, mask, ref_logps):
        c = self.config
        return dr_grpo_loss(logps, old_logps, advantages, mask, c.max_new_tokens, c.eps, c.beta, ref_logps)


class DAPO(GroupPolicyGradient):
    """DAPO: Clip-Higher, dynamic sampling, token-level loss, overlong shaping and masking (Yu et al. 2025)."""

    dynamic_sampling = True

    @dataclass
    class Config(GroupConfig):
        max_new_tokens: int = 32  # rollout length limit (L_max of the overlong shaping)
        eps_low: float = 0.2  # ratio clip below (DAPO Sec. 3.1: 0.2)
        eps_high: float = 0.28  # ratio clip above, Clip-Higher (DAPO Sec. 3.1: 0.28)
        beta: float = 0.0  # k3 KL-to-reference coefficient (DAPO removes the KL term, Sec. 2.3)
        max_resample: int = 3  # rounds refilling zero-variance groups with new prompts before one is dropped (Sec. 3.2)
        overlong_buffer: int = 0  # L_cache of the soft overlong punishment, in tokens (Sec. 3.4; 0: off)
        mask_truncated: bool = True  # overlong filtering: completions cut at max_new_tokens get no loss (Sec. 3.4)

        def __post_init__(self):
            super().__post_init__()
            check_at_least("max_resample", self.max_resample, 0)
            check_at_least("overlong_buffer", self.overlong_buffer, 0)
            if self.overlong_buffer > self.max_new_tokens:
                raise PrefoptError(f"option 'overlong_buffer': must not exceed max_new_tokens ({self.max_new_tokens}), "
                                   f"got {self.overlong_buffer}")

    def shape_rewards(self, score, lengths):
        if not self.config.overlong_buffer:
            return score, {}
        penalty = overlong_penalty(lengths, self.config.max_new_tokens, self.config.overlong_buffer)  # (N,)
        return score + penalty, {"overlong_penalty": float(penalty.mean())}

    def advantages(self, samples, old_logps, ref_logps, mask):
        return group_advantages(samples.reward, self.config.num_generations, "std"), {}

    def loss(self, logps, old_logps, advantages, mask, ref_logps):
        c = self.config
        return dapo_loss(logps, old_logps, advantages, mask, c.eps_low, c.eps_high, c.beta, ref_logps)


class GSPO(GroupPolicyGradient):
    """GSPO: group advantages, a length-normalised sequence ratio clipped per sequence (Zheng et al. 2025)."""

    @dataclass
    class Config(GroupConfig):
        minibatches: int = 4  # optimizer updates per pass (GSPO Sec. 5.1: each rollout batch in 4 minibatches)
        eps_low: float = 3e-4  # sequence-ratio clip below (GSPO Sec. 5.1: 3e-4)
        eps_high: float = 4e-4  # sequence-ratio clip above (GSPO Sec. 5.1: 4e-4)
        beta: float = 0.0  # k3 KL-to-reference coefficient (GSPO uses none)

    def advantages(self, samples, old_logps, ref_logps, mask):
        return group_advantages(samples.reward, self.config.num_generations, "std"), {}

    def loss(self, logps, old_logps, advantages, mask, ref_logps):
        c = self.config
        return gspo_loss(logps, old_logps, advantages, mask, c.eps_low, c.eps_high, c.beta, ref_logps)
