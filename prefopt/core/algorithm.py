"""The contract every objective implements, built-in or plugin.

An algorithm is a small class with a nested ``Config`` dataclass and declared
capabilities. The trainer branches on the capabilities, never on names.

Offline objectives implement ``loss(policy, reference, batch)``; what
``policy`` and ``reference`` hold follows from two declarations:

=================  ======  =====================================================
``inputs``         head    ``policy`` / ``reference`` passed to ``loss``
=================  ======  =====================================================
``pairs``          lm      :class:`PairLogps` (chosen and rejected log-probs)
``unpaired``       lm      :class:`UnpairedLogps` (own and mismatched completions)
``demonstrations`` lm      :class:`~prefopt.core.logprobs.SequenceLogps`
``pairs``          scalar  :class:`PairRewards` (one scalar per response)
=================  ======  =====================================================

``reference`` is ``None`` when ``needs_reference`` is False. The loss is a
pure function of these tensors: no model, trainer or device inside it.

This module is the public surface for plugins: besides the contract it holds
the helpers every pair loss needs (:func:`logratios`, :func:`pair_metrics`,
:func:`preference_accuracy`) and the option checks a ``Config`` runs in its
``__post_init__`` (:func:`check_positive`, :func:`check_nonnegative`,
:func:`check_at_least`, :func:`check_finite`, :func:`check_in_range`,
:func:`check_flip_rate`); each rejects NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prefopt.core.logprobs import SequenceLogps
from prefopt.errors import PrefoptError

__all__ = [
    "Algorithm", "LossOutput", "NoConfig", "PairLogps", "PairRewards", "SequenceLogps", "UnpairedLogps",
    "check_at_least", "check_finite", "check_flip_rate", "check_in_range", "check_nonnegative", "check_positive",
    "logratio_loss_output", "logratios", "pair_metrics", "preference_accuracy",
]


@dataclass
class PairLogps:
    """Response log-probs for B preference pairs."""

    chosen: SequenceLogps  # sum / tokens, each (B,)
    rejected: SequenceLogps  # sum / tokens, each (B,)

    @classmethod
    def from_concatenated(cls, seq: SequenceLogps) -> PairLogps:
        """Split a (2B,) forward whose first B rows are chosen, last B rejected."""
        half = seq.sum.shape[0] // 2
        return cls(chosen=seq.index(slice(0, half)), rejected=seq.index(slice(half, None)))


@dataclass
class UnpairedLogps:
    """Log-probs for B labelled (prompt, completion) examples, as KTO needs them."""

    completion: SequenceLogps  # (B,) each example's own completion
    mismatched: SequenceLogps  # (B,) the same prompts with another example's completion (no grad)


@dataclass
class PairRewards:
    """Scalar rewards of a reward head for B pairs."""

    chosen: torch.Tensor  # (B,)
    rejected: torch.Tensor  # (B,)


@dataclass
class LossOutput:
    """What a loss returns.

    losses: (B,) per-example values with the sign that is minimised. The trainer
        sums them and divides by the global batch size, so gradient accumulation
        gives the same update as one large batch.
    metrics: detached (B,) tensors averaged by the trainer and logged. By
        convention ``margin`` (chosen minus rejected implicit reward) and
        ``accuracy`` (1 when the chosen side wins, 0.5 on a tie) drive the
        progress bar and the held-out preference accuracy.
    """

    losses: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class NoConfig:
    """An algorithm without options."""


class Algorithm:
    """Base class for objectives. Subclass, set the class attributes, implement loss.

    The first line of the class docstring is the one-line description shown by
    ``prefopt list``.
    """

    Config: ClassVar[type] = NoConfig
    inputs: ClassVar[str] = "pairs"  # "pairs" | "unpaired" (labelled completions) | "demonstrations"
    head: ClassVar[str] = "lm"  # "lm": response log-probs | "scalar": a reward head on the last token
    needs_reference: ClassVar[bool] = True  # needs log-probs of the frozen starting model
    online: ClassVar[bool] = False  # samples from the policy during training
    produces: ClassVar[str] = "policy"  # "policy" | "reward_model": what the benchmark evaluates

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} does not implement loss()")


def preference_accuracy(margin: torch.Tensor) -> torch.Tensor:
    """(B,) 1 where the chosen side's implicit reward is higher, 0.5 on an exact tie."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


# ---------------------------------------------------------------- helpers for pair losses


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


def logratio_loss_output(pair_loss, policy: PairLogps, reference: PairLogps, beta: float) -> LossOutput:
    """The LossOutput of a pair loss of the summed log-ratios, ``pair_loss(chosen, rejected, beta=beta) -> (B,)``,
    with the implicit rewards reported as beta * log-ratio (hinge, NCA, SPPO and APO have this shape)."""
    chosen, rejected = logratios(policy, reference)  # (B,), (B,)
    losses = pair_loss(chosen, rejected, beta=beta)  # (B,)
    return LossOutput(losses=losses, metrics=pair_metrics(beta * chosen, beta * rejected, policy))


# ---------------------------------------------------------------- option checks (each rejects NaN)


def check_positive(option: str, value: float) -> None:
    if not value > 0:  # written so that NaN fails too
        raise PrefoptError(f"option '{option}': must be > 0, got {value}")


def check_nonnegative(option: str, value: float) -> None:
    if not value >= 0:
        raise PrefoptError(f"option '{option}': must be >= 0, got {value}")


def check_flip_rate(option: str, value: float) -> None:
    """A label-noise rate: the unbiased and conservative corrections need it in [0, 0.5)."""
    if not 0 <= value < 0.5:
        raise PrefoptError(f"option '{option}': must be in [0, 0.5), got {value}")


def check_at_least(option: str, value: float, minimum: float) -> None:
    """value >= minimum: a count such as steps (minimum 1) or an interval that 0 turns off (minimum 0)."""
    if not value >= minimum:
        raise PrefoptError(f"option '{option}': must be >= {minimum}, got {value}")


def check_finite(option: str, value: float) -> None:
    """Neither infinite nor NaN: inf passes every lower bound, so pair this with one."""
    if not math.isfinite(value):
        raise PrefoptError(f"option '{option}': must be a finite number, got {value}")


def check_in_range(option: str, value: float, low: float, high: float, include_high: bool = True) -> None:
    """low <= value <= high (value < high when include_high is False): a fraction, a rate, a probability."""
    inside = low <= value <= high if include_high else low <= value < high
    if not inside:
        raise PrefoptError(f"option '{option}': must be in [{low}, {high}{']' if include_high else ')'}, got {value}")
