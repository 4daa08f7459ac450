"""Small statistics for the benchmark report: Student-t intervals over seeds, standard errors, Holm's correction,
bootstrap p-values and percentile intervals, a crossed (seed x prompt) bootstrap, rank intervals, and the smallest
difference a study can detect.

The two-sided 95% Student-t quantiles for 1..30 degrees of freedom are tabulated, larger finite degrees of freedom
use the Cornish-Fisher expansion around the normal quantile (error below 1e-4 there), and infinite degrees of
freedom give the normal 1.960 (kept table-based: the report's numbers do not move with the SciPy version). SciPy
supplies the normal quantile for min_detectable_difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy.special import ndtri

# Two-sided 95% quantiles t_{0.975, df}, df = 1..30.
_T95 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile(df: float, level: float = 0.95) -> float:
    """Two-sided Student-t quantile: P(|T_df| <= q) = level. Only level 0.95 is supported."""
    if not math.isclose(level, 0.95):
        raise ValueError(f"t_quantile supports level 0.95 only, not {level}")
    if df is None or (isinstance(df, float) and math.isnan(df)) or df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if math.isinf(df):
        return _Z975
    if df != int(df):
        raise ValueError(f"degrees of freedom must be a whole number, not {df}")
    df = int(df)
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def _finite(values: Iterable) -> np.ndarray:
    arr = np.asarray(list(values) if not hasattr(values, "__array__") else values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def standard_error(values: Iterable) -> float:
    """Sample standard deviation (ddof=1) over sqrt(n), over the finite values; nan for n < 2."""
    arr = _finite(values)
    if arr.size < 2:
        return float("nan")
    return float(arr.std(ddof=1) / math.sqrt(arr.size))


def mean_ci(values: Iterable, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) over the finite values: a t-interval mean ± t_{n-1} · sd/sqrt(n).

    n == 1 gives (value, nan, nan, 1); n == 0 gives (nan, nan, nan, 0).
    """
    arr = _finite(values)
    n = int(arr.size)
    nan = float("nan")
    if n == 0:
        return nan, nan, nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, nan, nan, 1
    half = t_quantile(n - 1, level) * standard_error(arr)
    return mean, mean - half, mean + half, n


# ---------------------------------------------------------------------------------------------------------------
# multiple comparisons, bootstrap tests and intervals


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in input order: sort ascending, p_(i) * (m - i + 1) for i = 1..m, made
    monotone non-decreasing (running max), capped at 1. NaN entries stay NaN and are not counted in m.

    Controls the family-wise error rate like Bonferroni under any dependence between the tests, and rejects at
    least as often; the running max makes tied p-values get the same adjusted value.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    flat = p.ravel()
    keep = np.flatnonzero(~np.isnan(flat))
    m = keep.size
    if m == 0:
        return out
    order = keep[np.argsort(flat[keep], kind="stable")]  # (m,) positions in ascending p
    adjusted = np.maximum.accumulate(flat[order] * (m - np.arange(m)))  # (m,)
    result = out.ravel()
    result[order] = np.minimum(adjusted, 1.0)
    return result.reshape(p.shape)


def bootstrap_p_value(draws, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of 'statistic == null' from bootstrap draws of the statistic:
    min(1, 2 * min((#(d <= null) + 1) / (B + 1), (#(d >= null) + 1) / (B + 1))) over the finite draws; nan if none.

    The p-value that inverts the percentile interval: p < 1 - level exactly when null lies outside it (up to the
    +1, which keeps p above 0 and makes the test valid for a finite B).
    """
    d = _finite(draws)
    b = d.size
    if b == 0:
        return float("nan")
    below = (np.count_nonzero(d <= null) + 1) / (b + 1)
    above = (np.count_nonzero(d >= null) + 1) / (b + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    """The equal-tailed percentile interval of the finite draws (nan, nan when there are none)."""
    d = _finite(draws)
    if d.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(d, [tail, 100.0 - tail])
    return float(low), float(high)


def crossed_bootstrap_indices(n_seeds: int, n_prompts: int, replicates: int, seed: int = 0):
    """(seed_idx (B, S), prompt_idx (B, P)) int arrays: seeds and prompts resampled independently with replacement
    (a two-way crossed bootstrap, Owen 2007: every seed was evaluated on the same prompts). np.random.default_rng(seed).

    Resampling prompts alone would ignore the seed-to-seed variation of training; resampling seeds alone would
    ignore that the prompts are a sample too. Applying the same indices to every arm keeps comparisons paired.
    """
    for name, value in (("n_seeds", n_seeds), ("n_prompts", n_prompts), ("replicates", replicates)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, not {value}")
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, int(n_seeds), size=(int(replicates), int(n_seeds)))  # (B, S)
    prompt_idx = rng.integers(0, int(n_prompts), size=(int(replicates), int(n_prompts)))  # (B, P)
    return seed_idx, prompt_idx


def _min_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = largest, ties share the smallest rank ('min'): 1 + #(strictly larger)."""
    return 1.0 + (values[..., None, :] > values[..., :, None]).sum(axis=-1)


def rank_intervals(estimates, draws, level: float = 0.95, higher_is_better: bool = True):
    """Ranks of A items (1 = best) and their bootstrap intervals. estimates (A,), draws (B, A) bootstrap replicates.
    Returns (rank (A,), low (A,), high (A,)): rank from the estimates (ties: 'min' method); low/high the
    equal-tailed percentiles of each item's rank across replicates (ties 'min'), rounded to whole ranks
    (floor for low, ceil for high). Replicates with a NaN are dropped.

    A rank alone overstates a leaderboard; its interval says which places the data cannot tell apart. An item with
    a NaN estimate gets a NaN rank and is left out of the others' ranks; no replicate left gives NaN intervals.
    """
    est = np.asarray(estimates, dtype=float).ravel()  # (A,)
    d = np.asarray(draws, dtype=float)
    if d.ndim != 2 or d.shape[1] != est.size:
        raise ValueError(f"draws must have shape (B, {est.size}), not {d.shape}")
    sign = 1.0 if higher_is_better else -1.0
    rank = _min_ranks(sign * est)  # (A,)
    rank[np.isnan(est)] = np.nan
    d = d[~np.isnan(d).any(axis=1)]  # (B', A)
    if d.shape[0] == 0:
        nan = np.full(est.size, np.nan)
        return rank, nan, nan.copy()
    ranks = _min_ranks(sign * d)  # (B', A)
    tail = 100.0 * (1.0 - level) / 2.0
    low = np.floor(np.percentile(ranks, tail, axis=0))  # (A,)
    high = np.ceil(np.percentile(ranks, 100.0 - tail, axis=0))  # (A,)
    return rank, low, high


def min_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1) -> float:
    """The smallest true difference a two-sided z-test at level alpha / comparisons (Bonferroni, the first step of
    Holm) detects with the given power: (z_{1 - alpha / (2 m)} + z_{power}) * se. nan for se nan.

    Reported next to a 'no significant difference' so that a reader sees how large a difference could hide in it.
    """
    if se is None or math.isnan(se):
        return float("nan")
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, not {comparisons}")
    z_alpha = float(ndtri(1.0 - alpha / (2.0 * comparisons)))
    z_power = float(ndtri(power))
    return (z_alpha + z_power) * float(se)
