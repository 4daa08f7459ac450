"""prefopt.evaluation.stats: Holm, bootstrap p-values and intervals, the crossed bootstrap's indices, rank intervals,
the minimum detectable difference and the tabulated t quantiles, by hand and against SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from prefopt.evaluation.stats import (
    bootstrap_p_value,
    crossed_bootstrap_indices,
    holm,
    mean_ci,
    min_detectable_difference,
    percentile_interval,
    rank_intervals,
    t_quantile,
)

NAN = float("nan")


# ---------------------------------------------------------------------------------------------------------------
# holm


def _holm_by_definition(p: np.ndarray) -> np.ndarray:
    """adjusted p_i = min(1, max over the tests j sorted at or before i of (m - rank_j + 1) p_j), NaN left out."""
    out = np.full(p.shape, np.nan)
    keep = [i for i in range(p.size) if not math.isnan(p[i])]
    m = len(keep)
    order = sorted(keep, key=lambda i: p[i])
    for pos, i in enumerate(order):
        out[i] = min(1.0, max((m - q) * p[order[q]] for q in range(pos + 1)))
    return out


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_ties_share_a_value():
    # sorted 0.01, 0.02, 0.02 times 3, 2, 1: 0.03, 0.04, 0.02 -> running max 0.03, 0.04, 0.04
    np.testing.assert_allclose(holm([0.02, 0.01, 0.02]), [0.04, 0.03, 0.04])


def test_holm_nan_kept_and_not_counted():
    # m = 2, not 3: 0.01 * 2, max(0.02, 0.03 * 1)
    out = holm([0.03, NAN, 0.01])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.03, 0.02])
    assert np.isnan(holm([NAN, NAN])).all()
    assert holm([]).shape == (0,)


def test_holm_capped_at_one():
    # sorted 0.01, 0.6, 0.7 times 3, 2, 1: 0.03, 1.2, 0.7 -> running max 0.03, 1.2, 1.2 -> capped 0.03, 1, 1
    np.testing.assert_allclose(holm([0.7, 0.01, 0.6]), [1.0, 0.03, 1.0])


def test_holm_matches_the_definition_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 1, m) ** 3  # many small ones
        p[rng.uniform(size=m) < 0.2] = NAN
        if m > 2:
            p[1] = p[0]  # a tie
        np.testing.assert_allclose(holm(p), _holm_by_definition(p), equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# bootstrap p-value and percentile interval


def test_bootstrap_p_value_by_hand():
    draws = np.concatenate([-np.arange(1, 20), np.arange(1, 81)])  # 19 of 99 draws <= 0, 80 >= 0
    assert bootstrap_p_value(draws) == pytest.approx(2 * (19 + 1) / (99 + 1))  # 0.4
    # every draw above the null: the smallest p for B draws, 2 / (B + 1)
    assert bootstrap_p_value(np.arange(1, 100)) == pytest.approx(2 / 100)
    # a draw equal to the null counts on both sides; the p-value is capped at 1
    assert bootstrap_p_value([0.0, 0.0, 0.0]) == 1.0
    assert bootstrap_p_value([1.0, 2.0, 3.0, NAN], null=2.5) == pytest.approx(2 * (1 + 1) / (3 + 1))  # NaN ignored
    assert math.isnan(bootstrap_p_value([NAN, math.inf]))


def test_percentile_interval_matches_numpy():
    rng = np.random.default_rng(1)
    draws = rng.normal(size=1001)
    low, high = percentile_interval(np.append(draws, [NAN, -math.inf]), 0.9)
    assert (low, high) == pytest.approx(tuple(np.percentile(draws, [5, 95])))
    low, high = percentile_interval(draws)
    assert (low, high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert all(math.isnan(v) for v in percentile_interval([NAN]))


# ---------------------------------------------------------------------------------------------------------------
# crossed bootstrap indices


def test_crossed_bootstrap_indices_shape_range_and_seed():
    seed_idx, prompt_idx = crossed_bootstrap_indices(3, 50, 200, seed=7)
    assert seed_idx.shape == (200, 3) and prompt_idx.shape == (200, 50)
    assert np.issubdtype(seed_idx.dtype, np.integer) and np.issubdtype(prompt_idx.dtype, np.integer)
    assert seed_idx.min() == 0 and seed_idx.max() == 2
    assert prompt_idx.min() == 0 and prompt_idx.max() == 49
    again = crossed_bootstrap_indices(3, 50, 200, seed=7)
    assert np.array_equal(seed_idx, again[0]) and np.array_equal(prompt_idx, again[1])
    other = crossed_bootstrap_indices(3, 50, 200, seed=8)
    assert not np.array_equal(prompt_idx, other[1])
    # with replacement: some replicate repeats a seed
    assert any(len(set(row)) < 3 for row in seed_idx)
    with pytest.raises(ValueError):
        crossed_bootstrap_indices(0, 50, 200)


def test_crossed_bootstrap_resamples_seeds_and_prompts_independently():
    seed_idx, prompt_idx = crossed_bootstrap_indices(3, 3, 18000, seed=0)
    # the joint frequencies of (a drawn seed, a drawn prompt) in one replicate are uniform over the 9 cells
    joint = np.zeros((3, 3))
    np.add.at(joint, (seed_idx[:, 0], prompt_idx[:, 0]), 1)
    np.testing.assert_allclose(joint / joint.sum(), 1 / 9, atol=0.01)
    assert not np.array_equal(seed_idx, prompt_idx)
    assert abs(np.corrcoef(seed_idx[:, 1], prompt_idx[:, 2])[0, 1]) < 0.03


# ---------------------------------------------------------------------------------------------------------------
# rank intervals


def test_rank_intervals_separated_items_are_exact():
    rng = np.random.default_rng(2)
    estimates = np.array([0.2, 0.9, 0.5])
    draws = estimates + 0.01 * rng.standard_normal((500, 3))
    rank, low, high = rank_intervals(estimates, draws)
    np.testing.assert_array_equal(rank, [3, 1, 2])
    np.testing.assert_array_equal(low, [3, 1, 2])
    np.testing.assert_array_equal(high, [3, 1, 2])
    rank, low, high = rank_intervals(estimates, draws, higher_is_better=False)
    np.testing.assert_array_equal(rank, [1, 3, 2])
    np.testing.assert_array_equal(low, high)


def test_rank_intervals_identical_items_overlap():
    rng = np.random.default_rng(3)
    estimates = np.array([0.9, 0.5, 0.5])
    draws = np.column_stack([0.9 + 0.01 * rng.standard_normal(1000), 0.5 + 0.05 * rng.standard_normal((1000, 2))])
    draws[5, 1] = NAN  # a replicate with a NaN is dropped, not ranked
    rank, low, high = rank_intervals(estimates, draws)
    np.testing.assert_array_equal(rank, [1, 2, 2])  # a tie takes the smaller rank ('min')
    assert (low[0], high[0]) == (1, 1)
    assert (low[1], high[1]) == (2, 3) and (low[2], high[2]) == (2, 3)


def test_rank_intervals_ties_in_replicates_and_no_replicates():
    rank, low, high = rank_intervals([1.0, 1.0, 0.0], np.tile([1.0, 1.0, 0.0], (20, 1)))
    np.testing.assert_array_equal(rank, [1, 1, 3])
    np.testing.assert_array_equal(low, [1, 1, 3])
    np.testing.assert_array_equal(high, [1, 1, 3])
    rank, low, high = rank_intervals([1.0, 0.0], np.array([[NAN, 1.0]]))
    np.testing.assert_array_equal(rank, [1, 2])
    assert np.isnan(low).all() and np.isnan(high).all()
    with pytest.raises(ValueError):
        rank_intervals([1.0, 0.0], np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------------------------------
# minimum detectable difference


def test_min_detectable_difference_against_scipy():
    assert min_detectable_difference(0.02) == pytest.approx((1.959964 + 0.841621) * 0.02, rel=1e-6)
    z = sps.norm.ppf
    assert min_detectable_difference(0.02) == pytest.approx((z(0.975) + z(0.8)) * 0.02, rel=1e-12)
    # Bonferroni over 3 comparisons: alpha / 3 two-sided, z_{1 - 0.05 / 6} = 2.394
    assert min_detectable_difference(0.02, comparisons=3) == pytest.approx((z(1 - 0.05 / 6) + z(0.8)) * 0.02)
    assert min_detectable_difference(0.02, alpha=0.01, power=0.9) == pytest.approx((z(0.995) + z(0.9)) * 0.02)
    assert min_detectable_difference(0.02, comparisons=3) > min_detectable_difference(0.02)
    assert math.isnan(min_detectable_difference(NAN))


# ---------------------------------------------------------------------------------------------------------------
# t quantiles (tabulated, no SciPy at run time) and mean_ci


def test_t_quantile_against_scipy():
    for df in range(1, 201):
        assert t_quantile(df) == pytest.approx(sps.t.ppf(0.975, df), abs=1e-3), df
    assert t_quantile(math.inf) == pytest.approx(sps.norm.ppf(0.975), abs=1e-9)


def test_mean_ci_against_scipy():
    values = [0.61, 0.55, 0.70, 0.58, NAN]
    mean, low, high, n = mean_ci(values)
    finite = np.array(values[:4])
    ref_low, ref_high = sps.t.interval(0.95, df=3, loc=finite.mean(), scale=sps.sem(finite))
    assert n == 4 and mean == pytest.approx(finite.mean())
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-4)
