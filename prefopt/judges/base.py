"""The judge interface and what every judge shares: decisions as floats, the pairwise question.

Decisions are floats: 1.0 = the first response (a) is better, 0.0 = the second
(b), 0.5 (:data:`TIE`) = a tie. Pairwise judges ask in both orders and combine
the two votes with :func:`combine_orders`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from prefopt.data.records import Message
from prefopt.errors import PrefoptError

TIE = 0.5  # the decision for "neither is better"

# The question put to pairwise judges. The answer letter comes right after the
# assistant turn starts, so one next-token distribution decides it.
JUDGE_TEMPLATE = (
    "Which response answers the user better? Judge correctness first, then helpfulness; "
    "do not prefer a response for being longer.\n\n"
    "[Conversation]\n{conversation}\n\n"
    "[Response A]\n{a}\n\n"
    "[Response B]\n{b}\n\n"
    "Answer with a single letter: A or B."
)


# ---------------------------------------------------------------- the interface


class Judge:
    """Scores responses or picks the better of two. Subclasses implement score or compare (or both)."""

    # True when the judge runs a local torch model and accepts `device` and `precision` options
    # (callers that place models, such as a benchmark, ask this instead of checking judge names).
    runs_model: ClassVar[bool] = False

    def score(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> list[float]:
        """One number per (prompt, response), higher is better."""
        raise NotImplementedError(f"{type(self).__name__} only compares two responses; it cannot score one alone")

    def compare(
        self, prompts: Sequence[Sequence[Message]], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """Per pair: 1.0 if a is better, 0.0 if b is, 0.5 for a tie. Default: compare the two scores."""
        check_same_length(prompts, responses_a, responses_b)
        a = self.score(prompts, responses_a)
        b = self.score(prompts, responses_b)
        return [1.0 if x > y else 0.0 if x < y else TIE for x, y in zip(a, b)]

    @classmethod
    def from_spec(cls, arg: str, **options) -> Judge:
        """Build from the part of a spec after ':' ("" when there is none)."""
        return cls(arg, **options) if arg else cls(**options)


def check_same_length(*columns: Sequence) -> None:
    """Prompts and responses must pair up one to one; zip would silently drop the extra ones."""
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise ValueError(f"judge inputs differ in length: {[len(c) for c in columns]}")


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A conversation as messages; a bare string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):  # a common slip: one conversation passed where a list of them belongs
        raise TypeError(
            "a prompt is a list of messages or a string, got a single message dict; pass one prompt per response"
        )
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


# ---------------------------------------------------------------- decisions


def _decision(x: float) -> float:
    """Snap a (possibly soft) preference to 1.0 / 0.0 / 0.5 so agreement is well defined."""
    return 1.0 if x > TIE else 0.0 if x < TIE else TIE


# Averaged probabilities within this distance of 1/2 are a tie. The letter probabilities come from a float32
# log-softmax, so two orders that agree to within its rounding (about 1e-7) are not a preference of the judge.
TIE_TOLERANCE = 1e-6


def decide(p: float, tolerance: float = TIE_TOLERANCE) -> float:
    """Decision from P(a better): 1.0 above 1/2 + tolerance, 0.0 below 1/2 - tolerance, else :data:`TIE`."""
    return 1.0 if p > TIE + tolerance else 0.0 if p < TIE - tolerance else TIE


def average_orders(p_first: float, p_second: float) -> float:
    """P(a better) from a judge asked in both orders, the two probabilities averaged (Lee et al. 2023, RLAIF).

    ``p_first`` is P("A") with a shown as A, ``p_second`` is P("A") with a shown as B (so b is the "A" there):
    p = (p_first + (1 - p_second)) / 2. A judge that answers "A" with the same probability whatever the
    content gets exactly 1/2; a content preference shows however large the position bias on top of it.
    """
    return (p_first + (1.0 - p_second)) / 2


def combine_orders(first: float, second: float) -> float:
    """Decision for a from two votes (each in a's terms): equal votes stand, anything else is a tie."""
    first, second = _decision(first), _decision(second)
    return first if first == second else TIE


def agreement(decisions_a: Sequence[float], decisions_b: Sequence[float]) -> float:
    """Fraction of pairs two judges decide the same way; a tie agrees only with a tie."""
    if len(decisions_a) != len(decisions_b):
        raise ValueError(f"agreement needs equally long lists, got {len(decisions_a)} and {len(decisions_b)}")
    if not decisions_a:
        raise ValueError("agreement of empty lists is undefined")
    same = sum(_decision(x) == _decision(y) for x, y in zip(decisions_a, decisions_b))
    return same / len(decisions_a)


def tie_rate(decisions: Sequence[float]) -> float:
    """Fraction of pairs decided as ties: a high rate flags a position-biased or indifferent judge."""
    if not decisions:
        raise ValueError("tie rate of an empty list is undefined")
    return sum(_decision(x) == TIE for x in decisions) / len(decisions)


def render_conversation(prompt: str | Sequence[Message]) -> str:
    """The conversation as the judge reads it: a lone user turn verbatim, else 'Role: text' lines."""
    messages = as_messages(prompt)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def judge_prompt(prompt: str | Sequence[Message], a: str, b: str, template: str = JUDGE_TEMPLATE) -> str:
    """The pairwise question with `a` labelled A and `b` labelled B."""
    return template.format(conversation=render_conversation(prompt), a=a, b=b)


def both_orders(prompts, responses_a, responses_b, template: str) -> list[str]:
    """2N judge prompts: rows 0..N-1 show a as A, rows N..2N-1 show a as B."""
    first = [judge_prompt(p, a, b, template) for p, a, b in zip(prompts, responses_a, responses_b)]
    second = [judge_prompt(p, b, a, template) for p, a, b in zip(prompts, responses_a, responses_b)]
    return first + second


# ---------------------------------------------------------------- judges that run a local torch model


def device_of(model):
    """Where the model's weights are (inputs go there); the CPU for a parameter-less scripted model."""
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):  # a parameter-less (scripted) model
        return torch.device("cpu")


def index_batches(n: int, size: int):
    """Index ranges of `size` (the last one shorter) covering 0..n-1: one forward each."""
    if size < 1:
        raise PrefoptError(f"judge batch_size must be at least 1, got {size}")
    return (range(start, min(n, start + size)) for start in range(0, n, size))
