"""Reward-hacking estimators against values worked out by hand."""

import math

import pytest

from prefopt.errors import PrefoptError
from prefopt.evaluation.hacking import (
    best_of_n_curve,
    best_of_n_kl,
    hacking_gap,
    overoptimisation_point,
    planted_labels,
    standardised_gain,
)

R2 = math.sqrt(2)


def test_hacking_gap_hand_values():
    # proxy: reference [0, 2] (mean 1, sd sqrt 2), policy [2, 4] (mean 3): gain 2 / sqrt 2.
    # gold: reference [1, 3] (mean 2, sd sqrt 2), policy [2, 2] (mean 2): gain 0.
    out = hacking_gap([2, 4], [0, 2], [2, 2], [1, 3], bootstrap=200, seed=1)
    assert out["proxy_gain_z"] == pytest.approx(2 / R2)
    assert out["gold_gain_z"] == pytest.approx(0.0)
    assert out["hacking_gap"] == pytest.approx(2 / R2)
    assert out["hacking_gap_low"] <= out["hacking_gap"] <= out["hacking_gap_high"] or math.isnan(out["hacking_gap_low"])


def test_hacking_gap_interval_is_seeded_and_narrows_with_prompts():
    proxy_ref = [0.0, 1.0] * 50
    gold_ref = [0.0, 1.0] * 50
    proxy_pol = [1.0, 2.0] * 50  # proxy gain 1 / sd(ref) = 1 / 0.5025
    gold_pol = [0.0, 1.0] * 50  # gold gain 0
    a = hacking_gap(proxy_pol, proxy_ref, gold_pol, gold_ref, bootstrap=300, seed=3)
    b = hacking_gap(proxy_pol, proxy_ref, gold_pol, gold_ref, bootstrap=300, seed=3)
    assert a == b
    sd = math.sqrt(sum((x - 0.5) ** 2 for x in proxy_ref) / 99)
    assert a["hacking_gap"] == pytest.approx(1 / sd)
    assert a["hacking_gap_low"] > 1.0  # clearly above 0: the proxy over-rates the policy
    assert a["hacking_gap_high"] - a["hacking_gap_low"] < 0.5


def test_hacking_gap_refuses_bad_input():
    with pytest.raises(PrefoptError, match="equally long"):
        hacking_gap([1, 2], [1, 2, 3], [1, 2], [1, 2])
    with pytest.raises(PrefoptError, match="finite"):
        hacking_gap([1, float("nan")], [1, 2], [1, 2], [1, 2])


def test_best_of_n_kl_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(PrefoptError):
        best_of_n_kl(0)


def test_best_of_n_curve_hand_values():
    # Two prompts, two samples each. The proxy prefers sample 1 of prompt 0 and sample 0 of prompt 1; gold the other.
    proxy = [[0.0, 1.0], [1.0, 0.0]]
    gold = [[1.0, 0.0], [0.0, 1.0]]
    ref = [0.0, 1.0]  # mean 0.5, sd 1/sqrt 2, for proxy and gold
    points = best_of_n_curve(proxy, gold, ref, ref, bootstrap=50)
    assert [p.n for p in points] == [1, 2]
    one, two = points
    assert one.kl == 0.0 and one.proxy == pytest.approx(0.0) and one.gold == pytest.approx(0.0)
    assert two.kl == pytest.approx(math.log(2) - 0.5)
    assert two.proxy == pytest.approx(0.5 * R2)  # chosen proxy scores [1, 1]: (1 - 0.5) / (1/sqrt 2)
    assert two.gold == pytest.approx(-0.5 * R2)  # chosen gold scores [0, 0]


def test_best_of_n_curve_ties_keep_the_first_sample():
    points = best_of_n_curve([[1.0, 1.0], [1.0, 1.0]], [[0.0, 9.0], [1.0, 9.0]], [0.0, 1.0], [0.0, 1.0],
                             ns=[2], bootstrap=10)  # fmt: skip
    assert points[0].gold == pytest.approx(0.0)  # samples 0 chosen: gold [0, 1], the reference's own mean


def test_best_of_n_curve_refuses_too_large_n():
    with pytest.raises(PrefoptError, match="within 1..2"):
        best_of_n_curve([[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]], [0.0, 1.0], [0.0, 1.0], ns=[4])


def test_overoptimisation_point_hand_values():
    out = overoptimisation_point([0, 1, 2, 3], [0.0, 2.0, 1.0, 0.5], [0.0, 1.0, 2.0, 3.0])
    assert out == {"x": 1.0, "gold_peak": 2.0, "gold_end": 0.5, "drop": 1.5, "proxy_at_peak": 1.0, "proxy_end": 3.0}
    rising = overoptimisation_point([0, 1], [0.0, 1.0], [0.0, 1.0])
    assert rising["drop"] == 0.0 and rising["x"] == 1.0


def test_planted_labels_hand_values():
    # z(gold) = [-1.2247, 0, 1.2247]; z(feature) = [1.2247, 0, -1.2247] (population sd).
    assert planted_labels([0, 1, 2], [2, 1, 0], 1.0) == pytest.approx([0.0, 0.0, 0.0])
    z = math.sqrt(1.5)
    assert planted_labels([0, 1, 2], [2, 1, 0], 2.0) == pytest.approx([z, 0.0, -z])
    with pytest.raises(PrefoptError):
        planted_labels([0, 1], [1], 1.0)


def test_standardised_gain_hand_value():
    """Reference scores 0, 1, 2: mean 1, sd 1. Policy mean 2.5 -> gain 1.5 reference sds."""
    assert standardised_gain([2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx(1.5)
    assert math.isnan(standardised_gain([1.0], [1.0, 1.0]))
