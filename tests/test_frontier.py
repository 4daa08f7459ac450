"""prefopt.evaluation.frontier: frontier values by hand, common budgets by hand, the array code against the np.interp
reference, and a synthetic study with a known truth (power, coverage, false positives, ranks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefopt.evaluation import frontier as fr
from prefopt.evaluation.frontier import Arm, common_budgets, compare_at_budgets, frontier_value, paired_difference

NAN = float("nan")


def _points(kl_means, score_means, spread=0.5):
    """(K, 1, 2) arrays whose prompt means are the given points (two prompts either side of each mean)."""
    kl = np.array([[[m - spread, m + spread]] for m in kl_means])
    score = np.array([[[m - 0.1, m + 0.1]] for m in score_means])
    return kl, score


def _seeds(*per_seed):
    """Stack per-seed (K, 1, P) arrays into (K, S, P)."""
    return np.concatenate(per_seed, axis=1)


# ---------------------------------------------------------------------------------------------------------------
# frontier_value by hand


def test_frontier_value_one_seed_by_hand():
    kl, score = _points([1.0, 3.0], [0.6, 0.8])
    assert frontier_value(kl, score, 0.5, anchor=0.5) == pytest.approx(0.55)  # between (0, 0.5) and (1, 0.6)
    assert frontier_value(kl, score, 2.0, anchor=0.5) == pytest.approx(0.7)
    assert frontier_value(kl, score, 3.0, anchor=0.5) == pytest.approx(0.8)  # the range's end is inside
    assert math.isnan(frontier_value(kl, score, 4.0, anchor=0.5))  # no extrapolation
    assert math.isnan(frontier_value(kl, score, 0.5, anchor=None))  # below the first point without the anchor
    assert frontier_value(kl, score, 1.0, anchor=None) == pytest.approx(0.6)
    assert frontier_value(kl, score, 0.0, anchor=0.0) == pytest.approx(0.0)


def test_frontier_value_order_and_equal_kl():
    kl, score = _points([3.0, 1.0], [0.8, 0.6])  # strengths need not be sorted by KL
    assert frontier_value(kl, score, 2.0, anchor=0.5) == pytest.approx(0.7)
    kl, score = _points([1.0, 1.0, 3.0], [0.5, 0.7, 0.8])  # equal KL: their mean score, 0.6
    assert frontier_value(kl, score, 1.0, anchor=None) == pytest.approx(0.6)
    assert frontier_value(kl, score, 2.0, anchor=None) == pytest.approx(0.7)


def test_frontier_value_averages_seeds_and_needs_every_seed():
    seed1 = _points([1.0, 3.0], [0.6, 0.8])
    seed2 = _points([1.0, 3.0], [0.4, 0.6])
    kl, score = _seeds(seed1[0], seed2[0]), _seeds(seed1[1], seed2[1])
    assert frontier_value(kl, score, 2.0, anchor=0.5) == pytest.approx((0.7 + 0.5) / 2)
    short = _points([1.0, 1.5], [0.4, 0.6])  # this seed's policies never reach KL 2
    kl, score = _seeds(seed1[0], short[0]), _seeds(seed1[1], short[1])
    assert frontier_value(kl, score, 1.2, anchor=0.5) == pytest.approx((0.62 + 0.48) / 2)
    assert math.isnan(frontier_value(kl, score, 2.0, anchor=0.5))


def _random_arm(rng, name, k, s=3, p=20, tie=False):
    kl = rng.gamma(2.0, 0.5, size=(k, s, p)) * np.arange(1, k + 1)[:, None, None]
    if tie and k > 1:
        kl[1] = kl[0][:, ::-1]  # same prompt means as strength 0, in another order
    return Arm(name, kl, rng.uniform(0, 1, size=(k, s, p)))


def test_array_code_matches_frontier_value():
    rng = np.random.default_rng(0)
    budgets = np.append(np.linspace(-0.1, 5.0, 256), 0.0)  # a fine grid, and the anchor itself
    for k, tie in [(1, False), (2, False), (3, True), (4, False)]:
        arm = _random_arm(rng, "x", k, tie=tie)
        for anchor in (None, 0.5):
            got = fr._point_values(arm, budgets, anchor)
            want = [frontier_value(arm.kl, arm.score, b, anchor) for b in budgets]
            np.testing.assert_allclose(got, want, equal_nan=True)
            assert np.isnan(got).any()
            if anchor is not None or k > 1:  # a lone point without the anchor is reached only at its own KL
                assert np.isfinite(got).any()


def test_bootstrap_values_match_a_loop(monkeypatch):
    rng = np.random.default_rng(1)
    arm = _random_arm(rng, "x", 3, p=25, tie=True)
    budgets = np.array([0.2, 0.8, 1.5, 3.0])
    seed_idx, prompt_idx = fr.crossed_bootstrap_indices(3, 25, 30, seed=4)
    want = np.array(
        [
            [frontier_value(arm.kl[:, si][:, :, pi], arm.score[:, si][:, :, pi], b, 0.5) for b in budgets]
            for si, pi in zip(seed_idx, prompt_idx)
        ]
    )
    assert np.isfinite(want).any()
    np.testing.assert_allclose(fr._bootstrap_values(arm, budgets, 0.5, seed_idx, prompt_idx), want, equal_nan=True)
    monkeypatch.setattr(fr, "_CHUNK_ELEMENTS", 60)  # chunks of 2 replicates
    np.testing.assert_allclose(fr._bootstrap_values(arm, budgets, 0.5, seed_idx, prompt_idx), want, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# common budgets by hand


def _arm_with_ranges(name, ranges):
    """An arm with S = len(ranges) seeds, two strengths per seed at the two ends of that seed's KL range."""
    lows, highs = _seeds(*[_points([lo], [0.5])[0] for lo, _ in ranges]), None
    highs = _seeds(*[_points([hi], [0.5])[0] for _, hi in ranges])
    kl = np.concatenate([lows, highs], axis=0)  # (2, S, 2)
    return Arm(name, kl, np.full(kl.shape, 0.5))


def test_common_budgets_by_hand():
    a = _arm_with_ranges("a", [(1.0, 3.0), (0.8, 2.5)])
    b = _arm_with_ranges("b", [(0.5, 2.0), (1.2, 4.0)])
    # without the anchor the intersection is [1.2, 2.0]: linspace(1.2, 2.0, 5) inside points
    assert common_budgets([a, b]) == pytest.approx([1.4, 1.6, 1.8])
    # with it every range starts at 0: [0, 2.0]
    assert common_budgets([a, b], anchor=0.5) == pytest.approx([0.5, 1.0, 1.5])
    assert common_budgets([a, b], n=1, anchor=0.5) == pytest.approx([1.0])
    assert common_budgets([a, b], n=2, anchor=0.5) == [0.667, 1.33]  # 3 significant digits


def test_common_budgets_empty():
    a = _arm_with_ranges("a", [(1.0, 3.0)])
    assert common_budgets([a, _arm_with_ranges("b", [(3.5, 4.0)])]) == []  # disjoint
    assert common_budgets([a, _arm_with_ranges("b", [(3.0, 4.0)])]) == []  # zero width
    assert common_budgets([a, _arm_with_ranges("b", [(3.0, 4.0)])], anchor=0.5) == pytest.approx([0.75, 1.5, 2.25])


# ---------------------------------------------------------------------------------------------------------------
# a synthetic study with a known truth

ANCHOR = 0.5
S, P = 3, 300
GOOD_KL, SAME_KL = [0.5, 1.5, 3.0], [0.4, 1.2, 2.5]  # true KL of each strength


def f_same(kl):
    """The true frontier of same1 and same2: a win rate rising from 0.5 at KL 0 towards 0.75."""
    return 0.5 + 0.25 * (1 - np.exp(-kl))


def f_good(kl):
    return f_same(kl) + 0.15


def _synthetic_arm(name, rng, prompt_effect, kl_means, frontier):
    """Per seed a KL around the strength's (a training run's own drift), per prompt a noisy KL around it; per prompt
    a Beta score around frontier(seed's KL) + the prompt's difficulty (shared by every arm: the crossed design)."""
    kl_means = np.asarray(kl_means, dtype=float)
    k = kl_means.size
    seed_kl = kl_means[:, None] * np.exp(0.1 * rng.standard_normal((k, S)))  # (K, S)
    kl = seed_kl[:, :, None] * rng.gamma(4.0, 0.25, size=(k, S, P)) + 0.05 * rng.standard_normal((k, S, P))
    mean = np.clip(frontier(seed_kl)[:, :, None] + prompt_effect, 0.02, 0.98)  # (K, S, P)
    return Arm(name, kl, rng.beta(4 * mean, 4 * (1 - mean)))


def _study(data_seed):
    rng = np.random.default_rng(data_seed)
    prompt_effect = 0.1 * rng.standard_normal(P)  # (P,)
    return [
        _synthetic_arm("good", rng, prompt_effect, GOOD_KL, f_good),
        _synthetic_arm("same1", rng, prompt_effect, SAME_KL, f_same),
        _synthetic_arm("same2", rng, prompt_effect, SAME_KL, f_same),
    ]


def _true_value(kl_means, frontier, budget):
    """The estimand: the anchored piecewise-linear frontier through the noise-free points."""
    return float(np.interp(budget, np.append(0.0, kl_means), np.append(ANCHOR, frontier(np.asarray(kl_means)))))


def _true_diff(budget):
    return _true_value(GOOD_KL, f_good, budget) - _true_value(SAME_KL, f_same, budget)


def test_synthetic_study_recovers_the_truth():
    arms = _study(0)
    budgets = common_budgets(arms, anchor=ANCHOR)
    assert len(budgets) == 3
    c = compare_at_budgets(arms, budgets, ANCHOR, replicates=1000, seed=0)
    assert c.names == ["good", "same1", "same2"] and c.budgets == budgets
    assert c.value.shape == c.low.shape == c.rank_high.shape == (3, 3)
    for j, budget in enumerate(budgets):
        for a, arm in enumerate(arms):
            assert c.value[j, a] == pytest.approx(frontier_value(arm.kl, arm.score, budget, ANCHOR))
            assert c.low[j, a] < c.value[j, a] < c.high[j, a]
        assert (c.rank[j, 0], c.rank_low[j, 0], c.rank_high[j, 0]) == (1, 1, 1)
        assert max(c.rank_low[j, 1], c.rank_low[j, 2]) <= min(c.rank_high[j, 1], c.rank_high[j, 2])  # overlap
    assert len(c.pairs) == 3 * 3
    for pair in c.pairs:
        assert pair["p_holm"] >= pair["p"]
        if pair["a"] == "good":
            truth = _true_diff(pair["budget"])
            assert 0.1 < truth < 0.2
            assert pair["significant"] and pair["p_holm"] < c.alpha
            assert 0 < pair["low"] <= truth <= pair["high"]
            assert pair["diff"] == pytest.approx(truth, abs=0.03)
        else:
            assert (pair["a"], pair["b"]) == ("same1", "same2")
            assert not pair["significant"] and pair["low"] < 0 < pair["high"]
    assert 0 < c.mde < 0.15 and math.isfinite(c.mde)  # the study can see the 0.15 it is built to see
    assert c.mde_holm > c.mde
    assert c.se_diff > 0 and c.replicates == 1000 and c.level == 0.95 and c.alpha == 0.05


def test_synthetic_study_false_positives_near_alpha_and_coverage():
    false_positive = unadjusted = tests = covered = intervals = 0
    for data_seed in range(20):
        arms = _study(100 + data_seed)
        budgets = common_budgets(arms, anchor=ANCHOR)
        c = compare_at_budgets(arms, budgets, ANCHOR, replicates=400, seed=data_seed)
        for pair in c.pairs:
            if pair["a"] == "same1":
                tests += 1
                false_positive += pair["significant"]
                unadjusted += pair["p"] < c.alpha
            else:
                assert pair["significant"]  # power: the 0.15 gap is found every time
                intervals += 1
                covered += pair["low"] <= _true_diff(pair["budget"]) <= pair["high"]
    assert tests == 60 and intervals == 120
    assert false_positive <= 6 and unadjusted <= 6  # at most 10% of 60 null comparisons, not half
    assert covered >= 108  # 95% intervals cover the true difference (the crossed bootstrap errs on the wide side)


def test_compare_is_deterministic_and_handles_nan_replicates():
    arms = _study(3)
    top = min(arm.kl.mean(axis=2).max(axis=0).min() for arm in arms)
    budgets = [1.0, float(top)]  # the second sits at one seed's range end: many replicates fall outside
    one = compare_at_budgets(arms, budgets, ANCHOR, replicates=200, seed=5)
    two = compare_at_budgets(arms, budgets, ANCHOR, replicates=200, seed=5)
    assert one.pairs == two.pairs and np.array_equal(one.low, two.low)
    assert np.array_equal(one.rank_low, two.rank_low) and one.se_diff == two.se_diff
    other = compare_at_budgets(arms, budgets, ANCHOR, replicates=200, seed=6)
    assert not np.array_equal(one.low, other.low)
    assert np.isfinite(one.value).all() and np.isfinite(one.low).all()  # dropped replicates, not a NaN interval
    far = compare_at_budgets(arms, [100.0], ANCHOR, replicates=50, seed=0)  # no arm reaches it
    assert np.isnan(far.value).all() and np.isnan(far.low).all() and np.isnan(far.rank).all()
    assert all(math.isnan(pair["p"]) and not pair["significant"] for pair in far.pairs)
    assert math.isnan(far.mde)


def test_compare_without_anchor_and_one_strength():
    rng = np.random.default_rng(2)
    a = Arm("a", rng.uniform(0.9, 1.1, (1, 2, 10)), rng.uniform(0.5, 0.7, (1, 2, 10)))
    b = Arm("b", rng.uniform(0.5, 2.0, (2, 2, 10)), rng.uniform(0.4, 0.6, (2, 2, 10)))
    c = compare_at_budgets([a, b], [0.5], anchor=0.5, replicates=100)
    assert np.isfinite(c.value).all()
    assert c.mde_holm == pytest.approx(c.mde)  # one pair: nothing to correct
    c = compare_at_budgets([a, b], [0.5], anchor=None, replicates=100)
    assert math.isnan(c.value[0, 0])  # a single point without the anchor reaches only its own KL


def test_compare_rejects_a_broken_design():
    rng = np.random.default_rng(0)
    a = Arm("a", rng.uniform(size=(2, 3, 10)), rng.uniform(size=(2, 3, 10)))
    with pytest.raises(ValueError, match="same seeds and prompts"):
        compare_at_budgets([a, Arm("b", np.ones((2, 2, 10)), np.ones((2, 2, 10)))], [0.5], 0.5)
    with pytest.raises(ValueError, match="distinct"):
        compare_at_budgets([a, a], [0.5], 0.5)
    with pytest.raises(ValueError, match="finite"):
        Arm("c", np.full((1, 1, 2), NAN), np.ones((1, 1, 2)))
    with pytest.raises(ValueError, match="shape"):
        Arm("d", np.ones((1, 2)), np.ones((1, 2)))


# ---------------------------------------------------------------------------------------------------------------
# paired difference at fixed strengths


def _pair(shift, data_seed):
    rng = np.random.default_rng(data_seed)
    prompt = rng.uniform(0.2, 0.8, P)  # (P,) difficulty shared by both
    a = np.clip(prompt + 0.1 * rng.standard_normal((S, P)), 0, 1)  # (S, P)
    b = np.clip(prompt - shift + 0.1 * rng.standard_normal((S, P)), 0, 1)  # (S, P)
    return a, b


def test_paired_difference_recovers_a_shift():
    a, b = _pair(0.1, 0)
    out = paired_difference(a, b, replicates=2000, seed=0)
    assert set(out) == {"diff", "low", "high", "p", "se"}
    assert out["diff"] == pytest.approx((a - b).mean())
    assert out["diff"] == pytest.approx(0.1, abs=0.02)
    assert out["low"] < 0.1 < out["high"] and out["low"] > 0
    assert out["p"] < 0.01 and 0 < out["se"] < 0.02


def test_paired_difference_zero_shift_is_not_significant():
    a, b = _pair(0.0, 1)
    out = paired_difference(a, b, replicates=2000, seed=0)
    assert out["low"] < 0 < out["high"]
    assert out["p"] > 0.2


def test_paired_difference_matches_a_loop():
    a, b = _pair(0.05, 2)
    out = paired_difference(a, b, replicates=300, seed=3, level=0.9)
    seed_idx, prompt_idx = fr.crossed_bootstrap_indices(S, P, 300, seed=3)
    d = a - b
    draws = np.array([d[si][:, pi].mean() for si, pi in zip(seed_idx, prompt_idx)])
    assert out["se"] == pytest.approx(draws.std(ddof=1))
    assert (out["low"], out["high"]) == pytest.approx(tuple(np.percentile(draws, [5, 95])))
    with pytest.raises(ValueError):
        paired_difference(a, b[:, :10])
