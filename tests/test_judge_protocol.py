"""The AI-judge protocol: averaged two-order probabilities, position bias, calibration against gold."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from prefopt.evaluation.judge_protocol import (
    Calibration,
    GoldPair,
    calibrate,
    judge_pairs,
    position_bias_rate,
    wilson_interval,
)
from prefopt.judges import Judge, LMJudge
from prefopt.judges.base import TIE, TIE_TOLERANCE, average_orders, decide

Q = [{"role": "user", "content": "What is 6 times 7?"}]


def gold_pairs(n: int) -> list[GoldPair]:
    """n pairs whose better response is marked 'good', the worse 'bad'."""
    return [GoldPair(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(n)]


# ---------------------------------------------------------------- scripted judges


class AlwaysRight(Judge):
    """Knows the gold; asked in both orders internally, like the built-in pairwise judges."""

    def compare(self, prompts, a, b):
        return [1.0 if x.startswith("good") else 0.0 if y.startswith("good") else TIE for x, y in zip(a, b)]


class CoinFlip(Judge):
    """Ignores everything: a seeded coin per call and pair."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def compare(self, prompts, a, b):
        return [float(self.rng.random() < 0.5) for _ in a]


class FirstPosition(Judge):
    """Always prefers whatever is shown first."""

    def compare(self, prompts, a, b):
        return [1.0] * len(a)


class AlwaysTie(Judge):
    def compare(self, prompts, a, b):
        return [TIE] * len(a)


class BiasedProbabilityJudge(Judge):
    """A probability judge leaning to "A": P("A") = 0.9 when the good answer is A, 0.7 when it is B.

    Order-wise, both orders answer "A" (0.9 > 1/2 and 0.7 > 1/2): the votes disagree in a's terms, a tie.
    Averaged: P(good better) = (0.9 + (1 - 0.7)) / 2 = 0.6 > 1/2, the right answer.
    """

    def preferences(self, prompts, a, b):
        return [(0.9 if x.startswith("good") else 0.7, 0.7 if x.startswith("good") else 0.9) for x in a]

    def compare_proba(self, prompts, a, b):
        return [average_orders(f, s) for f, s in self.preferences(prompts, a, b)]


class LettersJudge(Judge):
    """A text-only judge (like HTTPJudge): one letter per order, here always "A"."""

    def letters(self, prompts, a, b):
        return [("A", "A") for _ in a]


class Scores(Judge):
    """A score-based judge (no presentation order): length is quality."""

    def score(self, prompts, responses):
        return [len(r) for r in responses]


# ---------------------------------------------------------------- the decision rule


def test_average_orders_and_decide():
    assert average_orders(0.9, 0.7) == pytest.approx(0.6)
    assert average_orders(0.8, 0.8) == pytest.approx(0.5)  # the same "A" rate whatever the content: no preference
    assert decide(0.6) == 1.0 and decide(0.4) == 0.0 and decide(0.5) == TIE
    assert decide(0.5 + TIE_TOLERANCE / 2) == TIE and decide(0.5 + 2 * TIE_TOLERANCE) == 1.0


def test_position_bias_rate_counts_the_same_slot_winning_both_orders():
    # in a's terms: (1, 0) = "A" won both times, (0, 1) = "B" won both times; (1, 1) consistent; ties don't count
    assert position_bias_rate([1, 0, 1, 0, 0.5, 1], [0, 1, 1, 0, 1, 0.5]) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="equally long"):
        position_bias_rate([1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        position_bias_rate([], [])


def test_only_averaging_gives_the_right_answer():
    judge = BiasedProbabilityJudge()
    pairs = gold_pairs(4)
    v = judge_pairs(judge, [p.prompt for p in pairs], [p.better for p in pairs], [p.worse for p in pairs])
    assert v.proba == pytest.approx([0.6] * 4)
    assert v.decisions == [1.0] * 4
    assert v.first == [1.0] * 4 and v.second == [0.0] * 4  # order-wise: both orders pick "A" ...
    assert v.position_bias_rate == 1.0  # ... so order-wise voting would call every pair a tie
    c = calibrate(judge, pairs)
    assert (c.agreement, c.tie_rate, c.position_bias_rate, c.n) == (1.0, 0.0, 1.0, 4)


def test_lm_judge_compare_proba_averages_the_two_orders(tiny_tokenizer):
    """Scripted causal LMs: the logit gap between "A" and "B" is bias + content * [the shorter response is A]."""
    import re

    responses = re.compile(r"\[Response A\]\n(.*?)\n\n\[Response B\]\n(.*?)\n\nAnswer with", re.DOTALL)

    class ScriptedLM(torch.nn.Module):
        def __init__(self, bias: float, content: float):
            super().__init__()
            self.bias, self.content = bias, content
            self.letter = {L: tiny_tokenizer(L, add_special_tokens=False).input_ids[0] for L in "AB"}

        def forward(self, input_ids, attention_mask, position_ids=None, use_cache=None, logits_to_keep=0):
            logits = torch.zeros(input_ids.shape[0], 1, len(tiny_tokenizer))  # B's logit stays 0
            for i, row in enumerate(input_ids):
                a, b = responses.search(tiny_tokenizer.decode(row[attention_mask[i].bool()])).groups()
                logits[i, 0, self.letter["A"]] = self.bias + self.content * (len(a) < len(b))
            return SimpleNamespace(logits=logits)

    short, long = "42.", "It is 42, I believe."
    prompts, a, b = [Q, Q], [short, long], [long, short]
    s = lambda v: 1 / (1 + math.exp(-v))

    # Consistent: gap -1 + 2 [short is A] = +1 / -1. P("A") = s(1) with short first, s(-1) with short second.
    judge = LMJudge.from_model(ScriptedLM(-1.0, 2.0), tiny_tokenizer)
    p = (s(1) + 1 - s(-1)) / 2
    assert judge.compare_proba(prompts, a, b) == [pytest.approx(p, abs=1e-6), pytest.approx(1 - p, abs=1e-6)]
    v = judge_pairs(judge, prompts, a, b)
    assert v.decisions == [1.0, 0.0] and v.position_bias_rate == 0.0
    assert judge.compare(prompts, a, b) == [1.0, 0.0]  # the existing compare agrees here

    # Biased: gap 3 + 1 [short is A]; "A" wins both orders, so order-wise voting ties every pair,
    # while the averaged probability (s(4) + 1 - s(3)) / 2 > 1/2 keeps the content preference.
    biased = LMJudge.from_model(ScriptedLM(3.0, 1.0), tiny_tokenizer)
    assert biased.compare(prompts, a, b) == [TIE, TIE]
    v = judge_pairs(biased, prompts, a, b)
    assert v.proba[0] == pytest.approx((s(4) + 1 - s(3)) / 2, abs=1e-6)
    assert v.proba[1] == pytest.approx(1 - v.proba[0], abs=1e-6)
    assert v.decisions == [1.0, 0.0] and v.position_bias_rate == 1.0 and v.tie_rate == 0.0


# ---------------------------------------------------------------- calibration


def test_a_judge_that_is_always_right():
    c = calibrate(AlwaysRight(), gold_pairs(50))
    assert (c.agreement, c.tie_rate, c.position_bias_rate, c.n) == (1.0, 0.0, 0.0, 50)
    assert c.informative()
    assert c.low == pytest.approx(wilson_interval(50, 50)[0]) and c.high == 1.0
    assert c.describe() == f"agreement 1.00 [{c.low:.2f}, 1.00] on 50 pairs"


def test_a_coin_flip_is_not_informative():
    c = calibrate(CoinFlip(seed=0), gold_pairs(200))
    assert c.agreement == pytest.approx(0.5, abs=0.06)
    assert c.low < 0.5 < c.high and not c.informative()
    assert c.position_bias_rate == pytest.approx(0.5, abs=0.1)  # chance level: half the pairs follow a slot
    assert c.describe().startswith("not informative (agreement 0.")


def test_a_judge_that_prefers_the_first_position():
    c = calibrate(FirstPosition(), gold_pairs(100))
    assert (c.agreement, c.position_bias_rate, c.tie_rate) == (0.5, 1.0, 1.0)
    assert not c.informative()


def test_a_judge_that_always_ties():
    c = calibrate(AlwaysTie(), gold_pairs(200))
    assert (c.agreement, c.tie_rate, c.position_bias_rate) == (0.5, 1.0, 0.0)
    assert not c.informative()
    assert c.describe() == "not informative (agreement 0.50 [0.43, 0.57] on 200 pairs)"
    assert c.describe(details=True).endswith("; ties 1.00, position bias 0.00)")


def test_text_only_and_score_judges():
    # Letters: "A" in both orders -> order-wise votes 1 and 0 -> a tie, position-biased (as HTTPJudge.compare).
    c = calibrate(LettersJudge(), gold_pairs(10))
    assert (c.agreement, c.tie_rate, c.position_bias_rate) == (0.5, 1.0, 1.0)
    # A score judge has no order: asked once; here the better answer is the longer one.
    pairs = [GoldPair(Q, "It is 42.", "42")] * 3 + [GoldPair(Q, "42", "It is 42.")]
    c = calibrate(Scores(), pairs)
    assert (c.agreement, c.tie_rate, c.position_bias_rate, c.n) == (0.75, 0.0, 0.0, 4)


def test_wilson_interval_against_hand_computation():
    # 8 of 10: p = 0.8, z = 1.959964, z^2 = 3.841459; centre = (0.8 + 0.192073) / 1.384146 = 0.716740,
    # half = 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 1.959964 * 0.160011 / 1.384146 = 0.226578
    # -> [0.490162, 0.943318].
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-5) and high == pytest.approx(0.943318, abs=1e-5)
    # Through calibrate: 8 right and 2 wrong of 10.
    wrong = [GoldPair(f"w{i}", f"bad {i}", f"good {i}") for i in range(2)]  # the judge picks the gold's worse
    c = calibrate(AlwaysRight(), gold_pairs(8) + wrong)
    assert c.agreement == pytest.approx(0.8) and (c.low, c.high) == pytest.approx((low, high))
    # Ties count half: 7 right, 2 ties = 8 "successes" of 10, the same interval.
    assert wilson_interval(7 + 2 * 0.5, 10) == pytest.approx((low, high))


def test_informative_rule():
    assert Calibration(0.83, 0.77, 0.88, 200, 0.0, 0.1).informative()
    assert not Calibration(0.58, 0.51, 0.65, 200, 0.0, 0.1).informative()  # above chance, below the threshold
    assert Calibration(0.58, 0.51, 0.65, 200, 0.0, 0.1).informative(threshold=0.55)
    assert not Calibration(0.65, 0.49, 0.79, 30, 0.0, 0.1).informative()  # the lower bound is not above 0.5
    assert Calibration(0.83, 0.77, 0.88, 200, 0.0, None).describe() == "agreement 0.83 [0.77, 0.88] on 200 pairs"
    assert (Calibration(0.51, 0.44, 0.58, 200, 0.1, 0.2).describe()
            == "not informative (agreement 0.51 [0.44, 0.58] on 200 pairs)")  # fmt: skip
    with pytest.raises(ValueError, match="at least one pair"):
        calibrate(AlwaysRight(), [])
