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
``demonstrations`` lm      :class:`~prefopt.logprobs.SequenceLogps`
``pairs``          scalar  :class:`PairRewards` (one scalar per response)
=================  ======  =====================================================

``reference`` is ``None`` when ``needs_reference`` is False. The loss is a
pure function of these tensors: no model, trainer or device inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prefopt.logprobs import SequenceLogps


@dataclass
class PairLogps:
    """Response log-probs for B preference pairs."""

    chosen: SequenceLogps  # sum / tokens, each (B,)
    rejected: SequenceLogps  # sum / tokens, each (B,)

    @classmethod
    def from_concatenated(cls, seq: SequenceLogps) -> "PairLogps":
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
