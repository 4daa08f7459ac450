"""Odds Ratio Preference Optimization (Hong, Lee & Thorne 2024, "ORPO:
Monolithic Preference Optimization without Reference Model", arXiv:2403.07691).

One stage, no reference model: supervised fine-tuning on the chosen response
plus a penalty on the log odds ratio (Eqs. 6-7):

    loss     = nll(y_w) + lambda * (-log sigmoid(log_odds(y_w) - log_odds(y_l)))
    log_odds(y) = log(P / (1 - P)) = mean_logp(y) - log(1 - exp(mean_logp(y)))

where P = exp(mean_logp(y)) is the per-token geometric-mean likelihood of the
response (the paper's length-normalised P_theta(y|x)) and
nll(y_w) = -mean_logp(y_w) is the per-token negative log-likelihood (L_SFT).

Numerics: log(1 - exp(x)) is computed as log1p(-exp(x)) for x < -ln 2 and
log(-expm1(x)) above (the stable split trl also uses), with each branch's
input clamped to its own side so the unused branch never produces an inf
whose zero-weighted gradient would turn into NaN. mean_logp is capped at
-1e-6: at exactly 0 (a response the model is certain of, or an empty one)
the odds are infinite and the gradient would be NaN. This only differs from
trl when a response's per-token probability exceeds 0.999999.

Differences from trl's ORPOTrainer (the odds-ratio term itself is identical,
including its sign and scale: trl's ``odds_ratio_loss`` returns
beta * log sigmoid(...) and the trainer minimises nll - mean(that)):
- trl's nll is cross-entropy over the prompt AND the response tokens and is a
  token-level mean over the whole batch; here it is the per-example mean over
  response tokens only, as in the paper's L_SFT.
- trl calls lambda ``beta`` and logs beta * mean_logp as rewards; here the
  reported rewards are the log odds themselves, so ``margin`` is the log odds
  ratio the loss acts on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_nonnegative, pair_metrics

_LN_HALF = -math.log(2.0)  # where the two forms of log(1 - e^x) swap over
_MAX_MEAN_LOGP = -1e-6  # keeps the odds finite (see the module docstring)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends and NaN-free in backward."""
    x = x.clamp(max=_MAX_MEAN_LOGP)
    far = torch.log1p(-torch.exp(x.clamp(max=_LN_HALF)))  # accurate for x << 0
    near = torch.log(-torch.expm1(x.clamp(min=_LN_HALF)))  # accurate for x near 0
    return torch.where(x < _LN_HALF, far, near)


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """(B,) log(P / (1 - P)) with P = exp(mean_logp)."""
    mean_logp = mean_logp.float()
    return mean_logp.clamp(max=_MAX_MEAN_LOGP) - log1mexp(mean_logp)


def orpo_loss(
    policy_chosen_mean: torch.Tensor,  # (B,) per-token mean log pi(y_w|x)
    policy_rejected_mean: torch.Tensor,  # (B,) per-token mean log pi(y_l|x)
    lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example ORPO loss (Eqs. 6-7). Returns (losses, nll, log_odds_ratio), each (B,)."""
    nll = -policy_chosen_mean  # (B,) L_SFT
    log_odds_ratio = log_odds(policy_chosen_mean) - log_odds(policy_rejected_mean)  # (B,)
    odds_ratio_term = -F.logsigmoid(log_odds_ratio)  # (B,) L_OR
    return nll + lam * odds_ratio_term, nll, log_odds_ratio


class ORPO(Algorithm):
    """ORPO: reference-free SFT plus an odds-ratio preference penalty, in one stage (Hong et al. 2024)."""

    @dataclass
    class Config:
        lam: float = 0.1  # lambda, weight of the odds-ratio term against the NLL (paper: 0.1; trl calls it beta)

        def __post_init__(self):
            check_nonnegative("lam", self.lam)

    needs_reference = False
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        chosen, rejected = policy.chosen.mean, policy.rejected.mean  # (B,), (B,)
        losses, nll, log_odds_ratio = orpo_loss(chosen, rejected, lam=self.config.lam)
        metrics = pair_metrics(
            log_odds(chosen), log_odds(rejected), policy, nll=nll, log_odds_ratio=log_odds_ratio
        )
        return LossOutput(losses=losses, metrics=metrics)
