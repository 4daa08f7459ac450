"""The AI-judge protocol: how a pairwise judge's verdicts are taken, and whether the judge is worth reading.

Verdicts (:func:`judge_pairs`). Every pair is judged in both presentation orders (a shown as "A",
then a shown as "B"); all decisions are in a's terms: 1.0 = a better, 0.0 = b better, 0.5 = tie.

- A judge that gives probabilities (``compare_proba``; the local LM judge) is decided from the two
  orders' probabilities AVERAGED, as in Lee et al. 2023 (RLAIF): p = (p_ab + (1 - p_ba)) / 2, where
  p_ab = P("A") with a shown first and p_ba = P("A") with b shown first; the decision is 1 when
  p > 1/2 + tol, 0 when p < 1/2 - tol, else a tie, tol = :data:`TIE_TOLERANCE` = 1e-6 (the rounding of
  the float32 log-softmax the probabilities come from). A judge biased towards "A" by more than its
  content preference thresholds to "A" in both orders, a tie under order-wise voting; averaging keeps
  the content preference.
- A judge that sees only text (the HTTP judge's letters) or gives only decisions keeps the order-wise
  votes combined as :func:`prefopt.judges.base.combine_orders` does: agreeing votes stand, else a tie.
  A judge with no order of its own (one that compares two scores) is asked once.

Position bias (:func:`position_bias_rate`): the share of pairs whose two order-wise decisions pick the
same POSITION (a as "A" wins, then b as "A" wins, or the same with "B"), i.e. the verdict follows the
position, not the content. 0 for a consistent judge, 1 for one that always picks the same slot, 1/2 for
a coin flip. Pairs with a tie in either order do not count as following the position. Reported with
the tie rate: a judge that ties everything is as useless as one that follows the position.

Calibration (:func:`calibrate`): on pairs with a KNOWN gold preference (prompt, better, worse), the
agreement with gold, a tie counting half (mean of 1 / 0.5 / 0 for right / tie / wrong), with a 95%
Wilson score interval around it (the agreement taken as a proportion; with ties the scores' variance is
at most p(1-p), so the interval is conservative), the tie rate, the position-bias rate and n.

Rule (:meth:`Calibration.informative`): a judge is informative only when the interval's LOWER bound is
above 0.5 (it beats a coin flip at 95% confidence) AND the point agreement is at least ``threshold``
(default 0.6: beating chance by a hair is not enough to rank policies by). Otherwise its win rates are
not evidence and should be reported as "not informative".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prefopt.judges.base import (
    TIE,
    TIE_TOLERANCE,
    Judge,
    as_messages,
    average_orders,
    check_same_length,
    combine_orders,
    decide,
    tie_rate,
)

Z95 = 1.959963984540054  # the two-sided 95% normal quantile

__all__ = [
    "TIE_TOLERANCE",
    "Calibration",
    "GoldPair",
    "Verdicts",
    "calibrate",
    "gold_agreement",
    "is_probability_judge",
    "judge_pairs",
    "position_bias_rate",
    "wilson_interval",
]


# ---------------------------------------------------------------- verdicts in both orders


@dataclass(frozen=True)
class Verdicts:
    """A judge's verdicts on N pairs, all in a's terms (1 = a better, 0 = b better, 0.5 = tie).

    ``decisions``: the protocol's decision per pair. ``first`` / ``second``: the order-wise decisions
    (a shown as "A" / a shown as "B"), None when the judge gives no order-wise verdicts.
    ``proba``: the averaged P(a better) for a probability judge, else None.
    """

    decisions: list[float]
    first: list[float] | None = None
    second: list[float] | None = None
    proba: list[float] | None = None

    @property
    def tie_rate(self) -> float:
        return tie_rate(self.decisions)

    @property
    def position_bias_rate(self) -> float | None:
        """Share of pairs decided by position (None when the judge gives no order-wise verdicts)."""
        if self.first is None or self.second is None:
            return None
        return position_bias_rate(self.first, self.second)


def is_probability_judge(judge) -> bool:
    """Whether the judge gives P(a better) (``compare_proba``), so its two orders can be averaged."""
    return callable(getattr(judge, "compare_proba", None))


def judge_pairs(
    judge: Judge, prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str],
    tolerance: float = TIE_TOLERANCE,
) -> Verdicts:  # fmt: skip
    """The protocol's verdicts on pairs (a, b), each judged in both presentation orders.

    - ``preferences`` and ``compare_proba`` (the LM judge): one pass over both orders; order-wise
      decisions from each order's P("A"), the decision from the averaged probability.
    - ``compare_proba`` alone: the decision from its averaged probability; no order-wise verdicts.
    - ``letters`` (the HTTP judge, which reads only text): the letter of each order, combined as
      :func:`combine_orders` (agreeing votes stand, else a tie), as ``HTTPJudge.compare`` does.
    - A judge that compares two scores (the default :meth:`Judge.compare`: gold, reward model): asked
      once; it has no order, so both order-wise decisions are its decision.
    - Any other judge: ``compare(a, b)`` is the first order, ``1 - compare(b, a)`` the second,
      combined as :func:`combine_orders`.
    """
    check_same_length(prompts, responses_a, responses_b)
    prompts = [as_messages(p) for p in prompts]
    a, b = list(responses_a), list(responses_b)
    if is_probability_judge(judge) and callable(getattr(judge, "preferences", None)):
        p_letter = judge.preferences(prompts, a, b)  # per pair: P("A") with a first, P("A") with a second
        proba = [average_orders(f, s) for f, s in p_letter]
        first = [decide(f, tolerance) for f, _ in p_letter]
        second = [decide(1.0 - s, tolerance) for _, s in p_letter]
        return Verdicts([decide(p, tolerance) for p in proba], first, second, proba)
    if is_probability_judge(judge):
        proba = [float(p) for p in judge.compare_proba(prompts, a, b)]
        return Verdicts([decide(p, tolerance) for p in proba], proba=proba)
    if callable(getattr(judge, "letters", None)):
        to_first, to_second = {"A": 1.0, "B": 0.0, None: TIE}, {"A": 0.0, "B": 1.0, None: TIE}
        letters = judge.letters(prompts, a, b)
        first = [to_first[x] for x, _ in letters]
        second = [to_second[y] for _, y in letters]
    elif type(judge).compare is Judge.compare:  # two scores compared: no presentation order
        first = [float(d) for d in judge.compare(prompts, a, b)]
        second = list(first)
    else:
        first = [float(d) for d in judge.compare(prompts, a, b)]
        second = [1.0 - float(d) for d in judge.compare(prompts, b, a)]
    return Verdicts([combine_orders(f, s) for f, s in zip(first, second)], first, second)


def position_bias_rate(first_order_decisions: Sequence[float], second_order_decisions: Sequence[float]) -> float:
    """Share of pairs where the verdict follows the position, not the content.

    Both lists are in a's terms (1 = a better): ``first_order_decisions`` with a shown as "A",
    ``second_order_decisions`` with a shown as "B". A pair follows the position when one order says
    a and the other says b (the same slot won both times); a tie in either order does not count.
    """
    if len(first_order_decisions) != len(second_order_decisions):
        lengths = f"{len(first_order_decisions)} and {len(second_order_decisions)}"
        raise ValueError(f"position bias needs equally long lists, got {lengths}")
    if not first_order_decisions:
        raise ValueError("position bias of an empty list is undefined")
    follows = 0
    for f, s in zip(first_order_decisions, second_order_decisions):
        f, s = decide(f, 0.0), decide(s, 0.0)
        follows += TIE not in (f, s) and f != s
    return follows / len(first_order_decisions)


# ---------------------------------------------------------------- calibration against gold


@dataclass(frozen=True)
class GoldPair:
    """A pair with a known gold preference: ``better`` is the right answer to ``prompt``, ``worse`` is not."""

    prompt: object  # a string or a list of messages
    better: str
    worse: str


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (successes may be fractional: ties count half).

    (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = successes / n.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def gold_agreement(decisions: Sequence[float], gold: Sequence[float]) -> list[float]:
    """Per pair: 1 if the decision matches the gold (1 or 0), 0 if it is the opposite, 0.5 for a tie."""
    if len(decisions) != len(gold):
        raise ValueError(f"decisions and gold differ in length: {len(decisions)} and {len(gold)}")
    scores = []
    for d, g in zip(decisions, gold):
        d, g = decide(d, 0.0), decide(g, 0.0)
        if g == TIE:
            raise ValueError("a gold preference must be 1 (a better) or 0 (b better), not a tie")
        scores.append(0.5 if d == TIE else float(d == g))
    return scores


@dataclass(frozen=True)
class Calibration:
    """How well a judge agrees with gold preferences (see the module docstring for the rule)."""

    agreement: float  # mean of 1 / 0.5 / 0 for right / tie / wrong
    low: float  # 95% Wilson interval of the agreement
    high: float
    n: int
    tie_rate: float
    position_bias_rate: float | None  # None when the judge gives no order-wise verdicts

    def informative(self, threshold: float = 0.6) -> bool:
        """Informative only when the interval's lower bound exceeds 0.5 and the agreement is >= threshold."""
        return self.n > 0 and self.low > 0.5 and self.agreement >= threshold

    def describe(self, threshold: float = 0.6, details: bool = False) -> str:
        """'agreement 0.83 [0.77, 0.88] on 200 pairs', prefixed 'not informative (...)' when it is not.

        ``details`` adds the tie and position-bias rates.
        """
        text = f"agreement {self.agreement:.2f} [{self.low:.2f}, {self.high:.2f}] on {self.n} pairs"
        if details:
            text += f"; ties {self.tie_rate:.2f}"
            if self.position_bias_rate is not None:
                text += f", position bias {self.position_bias_rate:.2f}"
        return text if self.informative(threshold) else f"not informative ({text})"


def calibrate(judge: Judge, pairs: Sequence, tolerance: float = TIE_TOLERANCE) -> Calibration:
    """The judge's agreement with gold over pairs of known preference, with its 95% Wilson interval.

    ``pairs``: :class:`GoldPair` or (prompt, better, worse) tuples. Each pair is judged with
    :func:`judge_pairs` (both orders), the better response passed as a; both orders are always asked,
    so which argument it is does not favour either slot.
    """
    pairs = [p if isinstance(p, GoldPair) else GoldPair(*p) for p in pairs]
    if not pairs:
        raise ValueError("calibration needs at least one pair with a known gold preference")
    verdicts = judge_pairs(judge, [p.prompt for p in pairs], [p.better for p in pairs], [p.worse for p in pairs],
                           tolerance)  # fmt: skip
    scores = gold_agreement(verdicts.decisions, [1.0] * len(pairs))
    n = len(scores)
    low, high = wilson_interval(sum(scores), n)
    return Calibration(sum(scores) / n, low, high, n, verdicts.tie_rate, verdicts.position_bias_rate)
