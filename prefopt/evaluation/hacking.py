"""Reward hacking: how far a proxy reward over-rates what gold says, along the way from the reference outwards.

Everything is measured against the reference's own samples on the same held-out prompts and expressed as a
standardised gain, (mean policy score - mean reference score) / sd(reference scores), once under the proxy and once
under gold, so the two are on one scale whatever their units (Gao et al. 2022 plot raw RM scores; their proxy and gold
are reward models of the same kind, ours are not).

- :func:`hacking_gap`: proxy gain minus gold gain of one policy, with a paired bootstrap interval over prompts
  (prompt i's policy sample and reference sample are drawn together). > 0: the proxy over-rates the policy.
- :func:`best_of_n_curve`: best-of-n under the proxy (per prompt, of the first n reference samples keep the one the
  proxy scores highest) for n = 1, 2, 4, ...: proxy and gold gains with intervals, at the analytic KL of best-of-n,
  log n - (n - 1) / n (Stiennon et al. 2020, appendix; an upper bound, tight for continuous scores), plotted against
  sqrt(KL) as Gao et al. 2022 do.
- :func:`overoptimisation_point`: where gold peaks along a curve (KL or training step) while the proxy goes on.
- :func:`planted_labels`: proxy labels that carry a planted spurious feature (the feature z-scored, added to the
  z-scored gold score with a weight): pairs labelled by them prefer the feature, which gold does not reward.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from prefopt.errors import PrefoptError

BOOTSTRAP = 1000
LEVEL = 0.95


def _gain(policy: np.ndarray, reference: np.ndarray) -> float:
    sd = float(np.std(reference, ddof=1)) if reference.size > 1 else 0.0
    return float((policy.mean() - reference.mean()) / sd) if sd > 0 else math.nan


def standardised_gain(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> float:
    """(mean policy - mean reference) / sd(reference) (sd with n - 1): a gain in units of the reference's spread;
    nan when the reference's scores do not vary."""
    return _gain(np.asarray(policy_scores, dtype=float), np.asarray(reference_scores, dtype=float))


def _paired(policy: Sequence[float], reference: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(policy, dtype=float), np.asarray(reference, dtype=float)
    if p.shape != r.shape or p.ndim != 1 or p.size < 2:
        raise PrefoptError(f"{what}: needs two equally long lists of at least 2 scores, got {p.size} and {r.size}")
    if not (np.isfinite(p).all() and np.isfinite(r).all()):
        raise PrefoptError(f"{what}: scores must be finite numbers")
    return p, r


def _interval(draws: list[float], level: float = LEVEL) -> tuple[float, float]:
    ok = [d for d in draws if math.isfinite(d)]
    if not ok:
        return math.nan, math.nan
    low, high = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def hacking_gap(
    proxy_policy: Sequence[float], proxy_reference: Sequence[float], gold_policy: Sequence[float],
    gold_reference: Sequence[float], bootstrap: int = BOOTSTRAP, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """{"proxy_gain_z", "gold_gain_z", "hacking_gap", "hacking_gap_low", "hacking_gap_high"} of one policy.

    Entry i of each list belongs to held-out prompt i (the policy's sample and the reference's sample of it).
    The interval resamples prompts with replacement (seeded) and recomputes both gains.
    """
    pp, pr = _paired(proxy_policy, proxy_reference, "hacking gap (proxy)")
    gp, gr = _paired(gold_policy, gold_reference, "hacking gap (gold)")
    if pp.size != gp.size:
        raise PrefoptError(f"hacking gap: {pp.size} proxy scores but {gp.size} gold scores")
    proxy_z, gold_z = _gain(pp, pr), _gain(gp, gr)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        i = rng.integers(0, pp.size, pp.size)
        draws.append(_gain(pp[i], pr[i]) - _gain(gp[i], gr[i]))
    low, high = _interval(draws)
    return {"proxy_gain_z": proxy_z, "gold_gain_z": gold_z, "hacking_gap": proxy_z - gold_z,
            "hacking_gap_low": low, "hacking_gap_high": high}  # fmt: skip


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || reference) <= log n - (n - 1) / n."""
    if n < 1:
        raise PrefoptError(f"best-of-n: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class CurvePoint:
    n: int
    kl: float
    proxy: float  # standardised gain under the proxy
    proxy_low: float
    proxy_high: float
    gold: float  # standardised gain under gold
    gold_low: float
    gold_high: float


def best_of_n_curve(
    proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], proxy_reference: Sequence[float],
    gold_reference: Sequence[float], ns: Sequence[int] | None = None, bootstrap: int = BOOTSTRAP, seed: int = 0,
) -> list[CurvePoint]:  # fmt: skip
    """Best-of-n under the proxy: proxy and gold standardised gains over the reference samples, n = 1, 2, 4, ...

    ``proxy[i][j]`` / ``gold[i][j]``: the proxy's and gold's score of sample j of prompt i (the same samples; at
    least max(ns) per prompt). ``proxy_reference[i]`` / ``gold_reference[i]``: the reference's own sample of prompt i,
    the baseline every gain is measured from. A proxy tie keeps the earlier sample. Intervals resample prompts.
    """
    p, g = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    if p.ndim != 2 or p.shape != g.shape or p.shape[0] < 2:
        raise PrefoptError(f"best-of-n curve: proxy and gold must be prompts x samples of one shape, got {p.shape} "
                           f"and {g.shape}")  # fmt: skip
    pr, gr = _paired(proxy_reference, gold_reference, "best-of-n curve (reference)")
    if pr.size != p.shape[0]:
        raise PrefoptError(f"best-of-n curve: {p.shape[0]} prompts but {pr.size} reference scores")
    samples = p.shape[1]
    if ns is None:
        ns = [2**k for k in range(int(math.log2(samples)) + 1)]
    if not ns or min(ns) < 1 or max(ns) > samples:
        raise PrefoptError(f"best-of-n curve: n must be within 1..{samples}, got {list(ns)}")
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, pr.size, pr.size) for _ in range(bootstrap)]
    rows = np.arange(p.shape[0])
    points = []
    for n in ns:
        pick = p[:, :n].argmax(axis=1)  # first maximum: ties keep the earlier sample
        chosen_p, chosen_g = p[rows, pick], g[rows, pick]
        proxy_draws = [_gain(chosen_p[i], pr[i]) for i in draws]
        gold_draws = [_gain(chosen_g[i], gr[i]) for i in draws]
        points.append(CurvePoint(int(n), best_of_n_kl(int(n)), _gain(chosen_p, pr), *_interval(proxy_draws),
                                 _gain(chosen_g, gr), *_interval(gold_draws)))  # fmt: skip
    return points


def overoptimisation_point(xs: Sequence[float], gold: Sequence[float], proxy: Sequence[float]) -> dict[str, float]:
    """Where gold peaks along a curve: {"x", "gold_peak", "gold_end", "drop", "proxy_at_peak", "proxy_end"}.

    ``xs`` increasing (sqrt KL, n or step). ``drop`` = gold at the peak - gold at the end (> 0: past the peak,
    further optimisation of the proxy lowers gold; 0: gold still rising at the end, no over-optimisation seen).
    """
    xs, gold, proxy = list(xs), list(gold), list(proxy)
    if not xs or not (len(xs) == len(gold) == len(proxy)):
        raise PrefoptError(f"overoptimisation point: needs equally long, non-empty lists ({len(xs)}, {len(gold)}, "
                           f"{len(proxy)})")  # fmt: skip
    finite = [i for i, v in enumerate(gold) if math.isfinite(v)]
    if not finite:
        return {"x": math.nan, "gold_peak": math.nan, "gold_end": math.nan, "drop": math.nan,
                "proxy_at_peak": math.nan, "proxy_end": math.nan}  # fmt: skip
    peak = max(finite, key=lambda i: gold[i])  # the first maximum
    end = finite[-1]
    return {"x": float(xs[peak]), "gold_peak": float(gold[peak]), "gold_end": float(gold[end]),
            "drop": float(gold[peak] - gold[end]), "proxy_at_peak": float(proxy[peak]),
            "proxy_end": float(proxy[end])}  # fmt: skip


def curve_records(points: Sequence[CurvePoint]) -> list[dict]:
    return [asdict(p) for p in points]


def _z(values: Sequence[float]) -> list[float]:
    mean = statistics.fmean(values)
    sd = statistics.pstdev(values)
    return [(v - mean) / sd if sd > 0 else 0.0 for v in values]


def planted_labels(gold: Sequence[float], feature: Sequence[float], weight: float) -> list[float]:
    """Proxy label scores z(gold) + weight * z(feature), z-scored over all the samples given.

    Pairs chosen by these scores (best vs worst of a prompt's samples) prefer the feature whenever gold is close;
    with weight 1 the feature counts as much as gold's whole spread. Gold itself never sees the feature.
    """
    if len(gold) != len(feature) or not gold:
        raise PrefoptError(f"planted labels: {len(gold)} gold scores and {len(feature)} feature values")
    if not math.isfinite(weight) or weight < 0:
        raise PrefoptError(f"planted labels: weight must be a finite number >= 0, got {weight}")
    return [g + weight * f for g, f in zip(_z(gold), _z(feature))]


__all__ = ["CurvePoint", "best_of_n_curve", "best_of_n_kl", "curve_records", "hacking_gap", "overoptimisation_point",
           "planted_labels", "standardised_gain"]  # fmt: skip
