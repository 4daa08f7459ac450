"""Small statistics for the benchmark report: Student-t intervals over seeds, standard errors.

No SciPy: the two-sided 95% Student-t quantiles for 1..30 degrees of freedom are tabulated,
larger finite degrees of freedom use the Cornish-Fisher expansion around the normal quantile
(error below 1e-4 there), and infinite degrees of freedom give the normal 1.960.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

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
