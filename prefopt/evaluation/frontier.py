"""Algorithms compared at matched KL: each arm's reward-KL frontier read off at common KL budgets.

Why: a stronger regulariser buys less improvement for less drift, so "DPO at beta 0.1 vs IPO at tau 0.1" compares
two arbitrary points. Each algorithm (an *arm*) is run at several strengths k; its frontier is the piecewise-linear
curve through its (KL, score) points, and arms are compared at the same KL.

Data of one arm on one task: (K, S, P) float arrays ``kl[k, s, p]`` (the KL(policy || reference) estimate of the
policy's sample for prompt p, strength k, seed s; a per-sequence sum of log-prob differences, so slightly negative
for a single sample is possible) and ``score[k, s, p]`` (the headline outcome for that prompt, e.g. the gold win
rate against the reference's replies). Every arm of a task has the same S seeds and P prompts in the same order (a
crossed design); K may differ between arms.

Frontier value at a budget, one arm, one seed: the K points (mean over prompts of kl, mean over prompts of score),
plus the reference itself at (0, anchor) when an anchor is given, sorted by KL (points with equal KL merged into
their mean score), interpolated linearly at KL = budget; NaN outside [min KL, max KL] (no extrapolation). The
arm's value is the mean over seeds (NaN if any seed's is NaN).

Uncertainty: a two-way crossed bootstrap (Owen 2007) resamples seeds and prompts independently, with the SAME
indices for every arm, so differences stay paired by seed and prompt; everything is recomputed in each replicate,
including the KL coordinates (a frontier point moves along both axes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prefopt.evaluation.stats import (
    bootstrap_p_value,
    crossed_bootstrap_indices,
    holm,
    min_detectable_difference,
    percentile_interval,
    rank_intervals,
)

# Replicates per chunk are chosen so that the (chunk, P) prompt-count matrix stays near this many floats.
_CHUNK_ELEMENTS = 1 << 21


@dataclass
class Arm:
    """One algorithm run at K strengths: (K, S, P) per-prompt KL and score (see the module docstring)."""

    name: str
    kl: np.ndarray  # (K, S, P)
    score: np.ndarray  # (K, S, P)

    def __post_init__(self):
        self.kl = np.asarray(self.kl, dtype=float)
        self.score = np.asarray(self.score, dtype=float)
        if self.kl.ndim != 3 or self.kl.shape != self.score.shape or min(self.kl.shape) < 1:
            raise ValueError(
                f"arm {self.name!r}: kl and score must be non-empty (K, S, P) arrays of one shape, "
                f"not {self.kl.shape} and {self.score.shape}"
            )
        if not (np.isfinite(self.kl).all() and np.isfinite(self.score).all()):
            # A missing prompt would change which prompts an arm's mean covers and break the pairing.
            raise ValueError(f"arm {self.name!r}: kl and score must be finite (drop the prompt from every arm)")


def frontier_value(kl, score, budget: float, anchor: float | None) -> float:
    """One arm's value at one KL budget from (K, S, P) arrays, as defined above.

    The reference implementation, written with np.interp; compare_at_budgets computes the same with arrays.
    """
    kl = np.asarray(kl, dtype=float)
    score = np.asarray(score, dtype=float)
    x_all = kl.mean(axis=2)  # (K, S)
    y_all = score.mean(axis=2)  # (K, S)
    values = []
    for s in range(kl.shape[1]):
        x, y = x_all[:, s], y_all[:, s]  # (K,)
        if anchor is not None:
            x, y = np.append(0.0, x), np.append(float(anchor), y)
        xs = np.unique(x)  # sorted, ties merged
        ys = np.array([y[x == v].mean() for v in xs])
        if not xs[0] <= budget <= xs[-1]:
            values.append(math.nan)
        else:
            values.append(float(np.interp(budget, xs, ys)))
    return float(np.mean(values))


def _interp(x: np.ndarray, y: np.ndarray, budgets: np.ndarray, anchor: float | None) -> np.ndarray:
    """frontier_value's per-seed rule on many point sets at once: x, y (..., K) -> values (..., J)."""
    if anchor is not None:
        x = np.concatenate([np.zeros(x.shape[:-1] + (1,)), x], axis=-1)  # (..., n)
        y = np.concatenate([np.full(y.shape[:-1] + (1,), float(anchor)), y], axis=-1)  # (..., n)
    same = x[..., :, None] == x[..., None, :]  # (..., n, n)
    y = (same * y[..., None, :]).sum(axis=-1) / same.sum(axis=-1)  # (..., n) equal KL -> their mean score
    order = np.argsort(x, axis=-1)
    x = np.take_along_axis(x, order, axis=-1)
    y = np.take_along_axis(y, order, axis=-1)
    if x.shape[-1] == 1:  # one point: a zero-width segment
        x = np.concatenate([x, x], axis=-1)
        y = np.concatenate([y, y], axis=-1)
    n = x.shape[-1]
    t = np.broadcast_to(budgets, x.shape[:-1] + budgets.shape)  # (..., J)
    i = np.clip((x[..., None, :] <= budgets[:, None]).sum(axis=-1) - 1, 0, n - 2)  # (..., J) segment start
    x0, x1 = np.take_along_axis(x, i, axis=-1), np.take_along_axis(x, i + 1, axis=-1)  # (..., J)
    y0, y1 = np.take_along_axis(y, i, axis=-1), np.take_along_axis(y, i + 1, axis=-1)  # (..., J)
    width = x1 - x0
    frac = np.divide(t - x0, width, out=np.zeros_like(width), where=width > 0)  # zero width: x0 == x1 == t
    out = y0 + frac * (y1 - y0)
    return np.where((t < x[..., :1]) | (t > x[..., -1:]), np.nan, out)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(c, n) float: how often each of n items occurs in each row of idx (c, m)."""
    c = idx.shape[0]
    flat = (idx + n * np.arange(c)[:, None]).ravel()
    return np.bincount(flat, minlength=c * n).reshape(c, n).astype(float)


def _point_values(arm: Arm, budgets: np.ndarray, anchor: float | None) -> np.ndarray:
    """(J,) the arm's value at each budget from the data."""
    x = arm.kl.mean(axis=2).T  # (S, K)
    y = arm.score.mean(axis=2).T  # (S, K)
    return _interp(x, y, budgets, anchor).mean(axis=0)  # (J,) NaN if any seed is NaN


def _bootstrap_values(
    arm: Arm, budgets: np.ndarray, anchor: float | None, seed_idx: np.ndarray, prompt_idx: np.ndarray
) -> np.ndarray:
    """(B, J) the arm's value at each budget in each replicate (seed_idx (B, S), prompt_idx (B, P)).

    A replicate's per-(k, s) prompt mean is a weighted mean with the prompts' draw counts as weights, one matrix
    product for all replicates of a chunk; the resampled seeds are then gathered from those means.
    """
    k, s, p = arm.kl.shape
    b = seed_idx.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // p)
    kl = arm.kl.reshape(k * s, p)  # (K S, P)
    score = arm.score.reshape(k * s, p)  # (K S, P)
    out = np.empty((b, budgets.size))  # (B, J)
    for start in range(0, b, chunk):
        idx = prompt_idx[start : start + chunk]  # (c, P)
        c = idx.shape[0]
        counts = _counts(idx, p)  # (c, P) times each prompt was drawn
        x = (kl @ counts.T / p).reshape(k, s, c).transpose(2, 1, 0)  # (c, S, K)
        y = (score @ counts.T / p).reshape(k, s, c).transpose(2, 1, 0)  # (c, S, K)
        seeds = seed_idx[start : start + chunk, :, None]  # (c, S, 1)
        x = np.take_along_axis(x, seeds, axis=1)  # (c, S, K) resampled seeds
        y = np.take_along_axis(y, seeds, axis=1)  # (c, S, K)
        out[start : start + c] = _interp(x, y, budgets, anchor).mean(axis=1)  # (c, J)
    return out


def _check_crossed(arms: list[Arm]) -> tuple[int, int]:
    """(S, P) shared by every arm; a ValueError otherwise (the pairing needs one design)."""
    if not arms:
        raise ValueError("no arms to compare")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct: {names}")
    shapes = {arm.kl.shape[1:] for arm in arms}
    if len(shapes) != 1:
        raise ValueError(f"every arm needs the same seeds and prompts (S, P); got {sorted(shapes)}")
    return shapes.pop()


def common_budgets(arms: list[Arm], n: int = 3, anchor: float | None = None) -> list[float]:
    """n KL budgets every arm's every seed reaches by interpolation: evenly spaced strictly inside the intersection
    of the per-(arm, seed) KL ranges (with the anchor, each range starts at 0): np.linspace(lo, hi, n + 2)[1:-1]
    rounded to 3 significant digits; [] when the intersection is empty or has zero width.

    Strictly inside, so that a resampled range still covers the budgets most of the time. The default anchor=None
    gives the narrower, always reachable ranges; pass the anchor used for the comparison to reach down to 0. A
    budget that the rounding moves out of the intersection is dropped (only possible for a very narrow one).
    """
    _check_crossed(arms)
    lo, hi = -math.inf, math.inf
    for arm in arms:
        x = arm.kl.mean(axis=2)  # (K, S)
        low, high = x.min(axis=0), x.max(axis=0)  # (S,)
        if anchor is not None:
            low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
        lo, hi = max(lo, float(low.max())), min(hi, float(high.min()))
    if not hi > lo:
        return []
    budgets = []
    for value in np.linspace(lo, hi, n + 2)[1:-1]:
        rounded = float(f"{value:.3g}")
        if lo <= rounded <= hi and rounded not in budgets:
            budgets.append(rounded)
    return budgets


@dataclass
class Comparison:
    """compare_at_budgets' result: per (budget, arm) values with intervals and ranks, and the pairwise tests."""

    budgets: list[float]
    names: list[str]
    value: np.ndarray  # (J budgets, A arms) point estimates
    low: np.ndarray  # (J, A) percentile CI from the crossed bootstrap
    high: np.ndarray  # (J, A)
    rank: np.ndarray  # (J, A) 1 = best
    rank_low: np.ndarray  # (J, A)
    rank_high: np.ndarray  # (J, A)
    pairs: list[dict]  # one per (budget, i < j), see compare_at_budgets
    se_diff: float  # median over pairs and budgets of the bootstrap SD of the pairwise difference
    mde: float  # min_detectable_difference(se_diff) at alpha, power 0.8, one comparison
    mde_holm: float  # the same with comparisons = number of pairs at one budget
    replicates: int
    level: float
    alpha: float


def compare_at_budgets(
    arms: list[Arm],
    budgets,
    anchor: float | None,
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> Comparison:
    """Point estimates from the data; intervals, p-values and rank intervals from a crossed bootstrap: in each
    replicate the SAME resampled seed indices and prompt indices are applied to every arm (so differences are
    paired by prompt and seed), each arm's value at each budget recomputed with frontier_value's rule (on arrays, all
    replicates at once). Holm correction over the pairs at each budget separately.

    A replicate in which an arm's value is NaN (the budget fell outside that arm's resampled KL range) is dropped
    for the statistics that involve that arm: its interval, the pairs it is in, and, at that budget, the rank
    intervals of all arms (ranks need every arm). Budgets well inside every range (common_budgets) make this rare;
    near a range's end it shortens the bootstrap and biases it towards replicates that reach the budget.

    pairs: {"budget", "a", "b", "diff" (a - b), "low", "high" (its percentile interval), "p" (bootstrap_p_value of
    diff == 0), "p_holm", "significant" (p_holm < alpha)}; ranks: 1 = highest value.
    """
    s, p = _check_crossed(arms)
    budgets = [float(b) for b in budgets]
    grid = np.asarray(budgets, dtype=float)  # (J,)
    names = [arm.name for arm in arms]
    n_arms, n_budgets = len(arms), grid.size
    seed_idx, prompt_idx = crossed_bootstrap_indices(s, p, replicates, seed)

    value = np.stack([_point_values(arm, grid, anchor) for arm in arms], axis=1)  # (J, A)
    draws = np.stack([_bootstrap_values(arm, grid, anchor, seed_idx, prompt_idx) for arm in arms], axis=2)  # (B, J, A)

    low, high = np.full((n_budgets, n_arms), np.nan), np.full((n_budgets, n_arms), np.nan)
    rank, rank_low, rank_high = (np.full((n_budgets, n_arms), np.nan) for _ in range(3))
    pairs: list[dict] = []
    sds = []
    for j, budget in enumerate(budgets):
        for a in range(n_arms):
            low[j, a], high[j, a] = percentile_interval(draws[:, j, a], level)
        rank[j], rank_low[j], rank_high[j] = rank_intervals(value[j], draws[:, j, :], level)
        at_budget = []
        for a in range(n_arms):
            for b in range(a + 1, n_arms):
                diff = draws[:, j, a] - draws[:, j, b]  # (B,)
                diff = diff[np.isfinite(diff)]
                lo, hi = percentile_interval(diff, level)
                sds.append(float(diff.std(ddof=1)) if diff.size > 1 else math.nan)
                at_budget.append(
                    {
                        "budget": budget,
                        "a": names[a],
                        "b": names[b],
                        "diff": float(value[j, a] - value[j, b]),
                        "low": lo,
                        "high": hi,
                        "p": bootstrap_p_value(diff, 0.0),
                    }
                )
        adjusted = holm([pair["p"] for pair in at_budget])
        for pair, p_holm in zip(at_budget, adjusted):
            pair["p_holm"] = float(p_holm)
            pair["significant"] = bool(p_holm < alpha)
        pairs.extend(at_budget)

    finite_sds = [sd for sd in sds if not math.isnan(sd)]
    se_diff = float(np.median(finite_sds)) if finite_sds else math.nan
    per_budget = max(1, n_arms * (n_arms - 1) // 2)
    return Comparison(
        budgets=budgets,
        names=names,
        value=value,
        low=low,
        high=high,
        rank=rank,
        rank_low=rank_low,
        rank_high=rank_high,
        pairs=pairs,
        se_diff=se_diff,
        mde=min_detectable_difference(se_diff, alpha, 0.8, 1),
        mde_holm=min_detectable_difference(se_diff, alpha, 0.8, per_budget),
        replicates=int(replicates),
        level=level,
        alpha=alpha,
    )


def paired_difference(a: np.ndarray, b: np.ndarray, replicates=2000, seed=0, level=0.95) -> dict:
    """Mean difference of two (S, P) outcome arrays from the same seeds and prompts (one strength each), with a
    crossed-bootstrap percentile interval, bootstrap p-value and bootstrap SE: {"diff", "low", "high", "p", "se"}.

    For a comparison at fixed strengths (no frontier). A replicate's mean is (1 / (S P)) sum_s sum_p c_s d_sp e_p,
    with c and e the seeds' and prompts' draw counts.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be non-empty (S, P) arrays of one shape, not {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite (drop the prompt from both)")
    s, p = a.shape
    d = a - b  # (S, P)
    seed_idx, prompt_idx = crossed_bootstrap_indices(s, p, replicates, seed)
    draws = np.empty(int(replicates))  # (B,)
    chunk = max(1, _CHUNK_ELEMENTS // max(s, p))
    for start in range(0, int(replicates), chunk):
        si, pi = seed_idx[start : start + chunk], prompt_idx[start : start + chunk]  # (c, S), (c, P)
        c = si.shape[0]
        seed_counts, prompt_counts = _counts(si, s), _counts(pi, p)  # (c, S), (c, P)
        draws[start : start + c] = ((seed_counts @ d) * prompt_counts).sum(axis=1) / (s * p)  # (c,)
    low, high = percentile_interval(draws, level)
    return {
        "diff": float(d.mean()),
        "low": low,
        "high": high,
        "p": bootstrap_p_value(draws, 0.0),
        "se": float(draws.std(ddof=1)) if draws.size > 1 else math.nan,
    }
