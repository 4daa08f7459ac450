"""PPO-RLHF: the InstructGPT recipe (Ouyang et al. 2022, arXiv:2203.02155; Ziegler et
al. 2019, arXiv:1909.08593; Stiennon et al. 2020, arXiv:2009.01325).

Each step: sample responses from the policy, score them with a judge (the
task's gold rule, or a reward model trained with ``--algo reward``), give every
response token the reward -kl_coef * KL(pi || pi_ref) (estimator k1 or k3)
and the last token the score too, compute GAE advantages (whitened) and
returns from a value head on the policy's backbone, then run ``ppo_epochs``
passes of the clipped policy loss (Schulman et al. 2017, Eq. 7) plus the
clipped value loss over minibatches. One backbone pass gives log-probs, values
(and entropies) on shared hidden states; with one minibatch (the default) and no
dropout, the experience (old log-probs and values) is the first update's forward,
detached, not a forward of its own. The KL coefficient is fixed, or adapted
towards ``kl_target`` (Ziegler et al. 2019, Sec. 2.2). All the maths lives in
``prefopt.core.rl`` as tested pure functions; this file only orders the steps.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch

from prefopt.core.algorithm import check_nonnegative
from prefopt.core.heads import policy_value_forward
from prefopt.core.logprobs import first_response_position
from prefopt.core.models import dropout_free, eval_mode
from prefopt.core.rl import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_estimate,
    masked_mean,
    token_rewards,
    whiten,
)
from prefopt.errors import PrefoptError
from prefopt.training.online import JudgedOnlineAlgorithm, OnlineContext, evaluate_samples


def unpermute(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of x, computed on batch rows idx (a permutation), back in batch order: out[idx] = x."""
    out = torch.empty_like(x)
    out[idx] = x
    return out


class PPO(JudgedOnlineAlgorithm):
    """PPO-RLHF: judge-scored rollouts, per-token KL penalty, GAE, clipped policy and value losses (Ouyang et al. 2022)."""

    @dataclass
    class Config:
        judge: str = "gold:qa"  # gold:<task>, reward:<run dir>, python:MODULE:FUNCTION, or several, comma-separated
        judge_weights: str = ""  # weights of comma-separated judges, e.g. "1,0.5" (empty: 1 each)
        gold: str = ""  # a second judge logged on every rollout ("gold" per step), never trained on: gold:<task>
        max_new_tokens: int = 32  # rollout length limit
        temperature: float = 1.0  # sampling temperature for rollouts
        top_p: float = 1.0  # nucleus sampling for rollouts
        ppo_epochs: int = 4  # passes over each rollout batch (InstructGPT / trl: 4)
        minibatches: int = 1  # updates per pass
        clip: float = 0.2  # policy ratio clip epsilon (Schulman et al. 2017)
        value_clip: float = 0.2  # value clip around the rollout's values
        vf_coef: float = 0.1  # weight of the value loss (trl: 0.1)
        kl_coef: float = 0.05  # initial KL penalty coefficient (trl: 0.05)
        kl_target: float | None = None  # target per-sequence KL for the adaptive controller (None: fixed; Ziegler: 6)
        kl_horizon: int = 10000  # adaptive controller horizon in samples (Ziegler et al. 2019)
        kl_estimator: Literal["k1", "k3"] = "k1"  # per-token KL estimator in the reward
        gamma: float = 1.0  # discount (1: undiscounted episodes, as in InstructGPT)
        lam: float = 0.95  # GAE lambda
        whiten_advantages: bool = True  # normalise advantages over each rollout batch

        def __post_init__(self):
            for name in ("max_new_tokens", "ppo_epochs", "minibatches"):
                if getattr(self, name) < 1:
                    raise PrefoptError(f"option '{name}': must be >= 1, got {getattr(self, name)}")
            if not 0 < self.clip < 1:
                raise PrefoptError(f"option 'clip': must be in (0, 1), got {self.clip}")
            for name in ("vf_coef", "kl_coef", "value_clip"):
                check_nonnegative(name, getattr(self, name))

    head = "scalar"  # the value head
    needs_reference = True

    def __init__(self, config=None):
        super().__init__(config)
        self.kl = AdaptiveKLController(self.config.kl_coef, self.config.kl_target, self.config.kl_horizon)

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl.coef}

    def load_state_dict(self, state: dict) -> None:
        self.kl.coef = state.get("kl_coef", self.kl.coef)

    def _score(self, messages, rollout, ctx) -> torch.Tensor:
        scores = self.judge.score(messages, rollout.texts(ctx.tokenizer))
        return torch.tensor(scores, dtype=torch.float32, device=ctx.device)  # (N,)

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        c = self.config
        t0 = time.perf_counter()
        rollout, batch = ctx.rollout(prompts, self.sampling())
        t_generated = time.perf_counter()
        score = self._score(messages, rollout, ctx)  # (N,)
        components = self.reward_parts()  # "reward/<judge>" of a weighted judge, for these scores
        first = first_response_position(batch["loss_mask"])
        n = score.shape[0]
        size = math.ceil(n / c.minibatches)
        gen = torch.Generator().manual_seed(ctx.run.seed * 7919 + ctx.step)
        orders = [torch.randperm(n, generator=gen).split(size) for _ in range(c.ppo_epochs)]  # minibatch rows

        with eval_mode(ctx.model), torch.no_grad(), ctx.autocast():
            ref_logps = ctx.reference_token_logps(batch)  # (N, K)
        # Experience: the policy's log-probs and values before any update. With one minibatch and no dropout,
        # the first update's forward (the whole batch, before the first optimizer step) computes exactly them:
        # take them from it, detached, instead of a separate forward.
        ctx.model.train()
        first_update = None
        if c.minibatches == 1 and dropout_free(ctx.model):
            idx = orders[0][0].to(ctx.device)  # (N,) a permutation of the rows
            with ctx.autocast():
                first_update = policy_value_forward(ctx.model, {k: v[idx] for k, v in batch.items()}, first,
                                                    return_entropy=True)
            old = {k: unpermute(v.detach(), idx) for k, v in first_update.items()}  # each (N, K), batch order
        else:
            with eval_mode(ctx.model), torch.no_grad(), ctx.autocast():
                old = policy_value_forward(ctx.model, batch, first, return_entropy=True)  # each (N, K)
        mask = old["mask"]
        kl = kl_estimate(old["logps"], ref_logps, c.kl_estimator) * mask  # (N, K)
        rewards = token_rewards(score, kl, mask, self.kl.coef)  # (N, K)
        advantages, returns = gae(rewards, old["values"], mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = whiten(advantages, mask)

        # Updates.
        sums: dict[str, float] = defaultdict(float)
        updates = 0
        for epoch, minibatches in enumerate(orders):
            for j, idx in enumerate(minibatches):
                idx = idx.to(ctx.device)
                if epoch == 0 and j == 0 and first_update is not None:
                    new = first_update
                else:
                    with ctx.autocast():
                        new = policy_value_forward(ctx.model, {k: v[idx] for k, v in batch.items()}, first)
                policy_loss, pstats = clipped_policy_loss(new["logps"], old["logps"][idx], advantages[idx], mask[idx], c.clip)
                value_loss, vstats = clipped_value_loss(new["values"], old["values"][idx], returns[idx], mask[idx], c.value_clip)
                loss = policy_loss + c.vf_coef * value_loss
                sums["grad_norm"] += ctx.update(loss)
                sums["loss"] += float(loss.detach())
                sums["policy_loss"] += float(policy_loss.detach())
                sums["value_loss"] += float(value_loss.detach())
                for key, value in {**pstats, **vstats}.items():
                    sums[key] += float(value)
                updates += 1
        t_updated = time.perf_counter()

        sequence_kl = float(kl.sum(-1).mean())
        kl_coef = self.kl.coef
        self.kl.update(sequence_kl, n)
        tracked = dict(components)
        if self.gold is not None:  # the oracle on the same rollouts: reward and gold over training, as Gao et al.
            tracked["gold"] = float(sum(self.gold.score(messages, rollout.texts(ctx.tokenizer))) / n)
        return {
            "reward": float(score.mean()),
            **tracked,
            "kl": sequence_kl,
            "kl_coef": kl_coef,
            "entropy": float(masked_mean(old["entropy"], mask)),
            "response_length": float(mask.sum(-1).mean()),
            **{k: v / updates for k, v in sums.items()},
            "generation_seconds": t_generated - t0,
            "update_seconds": t_updated - t_generated,
        }

    def evaluate(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        """Judge score and KL to the reference of samples on held-out prompts."""
        return evaluate_samples(ctx, prompts, messages, self.judge, self.sampling())
