"""Pieces shared by the DPO-family objectives: log-ratios, metrics, option checks.

Kept deliberately small: each objective's formula lives in its own file; only
the bookkeeping that would otherwise be repeated in every file lives here.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from prefopt.algorithm import Algorithm, LossOutput, PairLogps, preference_accuracy
from prefopt.errors import PrefoptError


def logratios(policy: PairLogps, reference: PairLogps, per_token: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) - log pi_ref(y|x) for the chosen and the rejected response, each (B,).

    per_token: use per-token mean log-probs (the length-normalised log-ratio).
    Both models score the same response tokens, so this equals the summed
    log-ratio divided by the response length.
    """
    if per_token:
        return policy.chosen.mean - reference.chosen.mean, policy.rejected.mean - reference.rejected.mean
    return policy.chosen.sum - reference.chosen.sum, policy.rejected.sum - reference.rejected.sum


def pair_metrics(
    reward_chosen: torch.Tensor,  # (B,) implicit reward of y_w, in the objective's own units
    reward_rejected: torch.Tensor,  # (B,) implicit reward of y_l
    policy: PairLogps,
    **extra: torch.Tensor,  # further (B,) metrics, e.g. nll
) -> dict[str, torch.Tensor]:
    """The standard detached (B,) metrics: rewards, margin, accuracy, policy log-probs, extras."""
    reward_chosen, reward_rejected = reward_chosen.detach(), reward_rejected.detach()
    margin = reward_chosen - reward_rejected  # (B,)
    return {
        "reward_chosen": reward_chosen,
        "reward_rejected": reward_rejected,
        "margin": margin,
        "accuracy": preference_accuracy(margin),
        "logp_chosen": policy.chosen.sum.detach(),
        "logp_rejected": policy.rejected.sum.detach(),
        **{name: value.detach() for name, value in extra.items()},
    }


def check_positive(option: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise PrefoptError(f"option '{option}': must be > 0, got {value}")


def check_nonnegative(option: str, value: float) -> None:
    if not value >= 0:
        raise PrefoptError(f"option '{option}': must be >= 0, got {value}")


def check_flip_rate(option: str, value: float) -> None:
    """A label-noise rate: the unbiased and conservative corrections need it in [0, 0.5)."""
    if not 0 <= value < 0.5:
        raise PrefoptError(f"option '{option}': must be in [0, 0.5), got {value}")


class SummedLogRatioLoss(Algorithm):
    """Plumbing for pair losses of the summed log-ratios with one option, beta (not registered).

    A subclass sets ``pair_loss(chosen_logratio, rejected_logratio, beta=...) -> (B,)``
    and its own ``Config`` (with a ``beta`` field); metrics report beta * log-ratio.
    """

    needs_reference = True
    inputs = "pairs"
    pair_loss: ClassVar[Callable[..., torch.Tensor]]

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        chosen, rejected = logratios(policy, reference)  # (B,), (B,)
        beta = self.config.beta
        losses = type(self).pair_loss(chosen, rejected, beta=beta)  # (B,)
        return LossOutput(losses=losses, metrics=pair_metrics(beta * chosen, beta * rejected, policy))
