"""Length-controlled win rates as in AlpacaEval 2 LC (Dubois et al. 2024, "Length-Controlled AlpacaEval").

One JOINT logistic regression (GLM) over all models' comparisons against the reference. Row i is model
m = m(i) judged against the reference on instruction x = x(i), with decision y_i in [0, 1] (1 = the model
wins, 0 = the reference wins, 1/2 = a tie):

    logit P(m beats ref | x) = theta_m + phi_m * tanh(dlen_i / sd_m) + psi_x

- theta_m: the model's strength at equal length; phi_m: its length slope; dlen_i = len_model - len_ref;
  sd_m = the standard deviation (n - 1) of model m's length differences (AlpacaEval's ``std_delta_len``,
  computed per model as in its per-model fit; a model whose differences do not vary gets 0 there).
  As in the paper the difference is scaled, not centred, and tanh bounds its effect.
- psi_x: a per-instruction difficulty shared by all models, fitted jointly with them. It is identified
  by an L2 penalty (l2_difficulty / 2) * sum psi_x^2 (a N(0, 1 / l2_difficulty) prior on the logit scale),
  which also fixes the shift theta + c, psi - c.
  The default l2_difficulty = 0.1 (prior sd about 3 logits) is a compromise: a strong penalty shrinks psi
  towards 0 and hands part of the instructions' difficulty back to the models (an instruction every model
  loses keeps a finite psi, so a model judged on it is still charged a little of that loss), a very weak one
  lets psi chase the few rows of each instruction when there are only two or three models. In simulations
  (tests/test_length_control.py) 0.1 recovers the true LC win rate within a few points in both regimes.
- A weak L2 penalty (l2_model / 2) * sum(theta^2 + phi^2) keeps the fit finite when a model wins (or
  loses) every comparison; set it to 0 for the plain maximum-likelihood fit.
- A tie enters the likelihood as y = 1/2 (half a win, half a loss), as AlpacaEval's preference 1.5 does.

LC win rate of m = mean over the instructions of the fit of sigmoid(theta_m + psi_x): the length term
set to 0 (equal lengths), averaged over the same instruction distribution for every model, including
instructions a model was not judged on (their psi_x comes from the other models).

Differences from the AlpacaEval 2 code (``alpaca_eval.metrics.glm_winrate``, glm "length_controlled_v1"):
there the instruction term is (psi_m - psi_b) * gamma_x, with gamma_x a difficulty fitted once across the
whole leaderboard and then fixed, and each model is fitted on its own with a penalty towards the baseline.
Here gamma_x is fitted jointly with the models of this run and enters additively (every model's
coefficient on it is 1), the simplest variant that a few models and a few hundred instructions identify.
Rows of the reference judged against a second reference sample can be passed under a model name of their
own (e.g. "reference"): they help fix psi_x and their LC win rate should come out near 0.5.

Intervals: a cluster bootstrap over instructions (resample the instructions with replacement, a drawn
instruction bringing all its rows, a copy drawn twice counting as two instructions; recompute sd_m and
refit), the 2.5% and 97.5% percentiles of the refitted LC win rates, seeded (numpy default_rng(seed)).
The fit is Newton's method on the penalised log-likelihood (strictly convex when l2_difficulty > 0 and
l2_model > 0), with a step-halving line search, using the block structure of the Hessian (a 2 x 2 block
per model, a diagonal over instructions) so its cost grows linearly with the instructions: deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GLMFit", "LCWinRate", "fit_length_glm", "length_controlled_win_rates"]


@dataclass(frozen=True)
class GLMFit:
    """The joint fit: per model theta (strength at equal length) and phi (length slope), psi per instruction."""

    models: list
    instructions: list
    theta: np.ndarray  # (M,)
    phi: np.ndarray  # (M,)
    psi: np.ndarray  # (X,)
    sd: np.ndarray  # (M,) the length scale of each model
    iterations: int
    converged: bool

    def lc_win_rates(self) -> dict:
        """Model -> mean over instructions of sigmoid(theta_m + psi_x)."""
        return {m: float(_sigmoid(t + self.psi).mean()) for m, t in zip(self.models, self.theta)}


@dataclass(frozen=True)
class LCWinRate:
    """One model's length-controlled win rate with its bootstrap interval, beside the raw win rate."""

    model: Hashable
    lc: float
    low: float  # bootstrap percentile interval (nan without a bootstrap)
    high: float
    raw: float  # mean decision (ties count half)
    raw_low: float  # its bootstrap interval, on the same resamples
    raw_high: float
    theta: float
    phi: float
    n: int  # comparisons of this model
    bootstrap: int  # resamples in which the model had rows

    def describe(self) -> str:
        return f"LC {self.lc:.3f} [{self.low:.3f}, {self.high:.3f}] (raw {self.raw:.3f}, n={self.n})"


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))  # stable for large |x|


def _log1pexp(x):
    return np.logaddexp(0.0, x)


class _Design:
    """The rows as integer codes: model index, instruction index, tanh of the scaled length difference."""

    def __init__(self, model_idx, instr_idx, dlen, y, n_models, n_instr):
        self.m, self.x, self.y = model_idx, instr_idx, y
        self.M, self.X = n_models, n_instr
        sd = np.zeros(n_models)
        for k in range(n_models):
            d = dlen[model_idx == k]
            sd[k] = d.std(ddof=1) if d.size > 1 else 0.0
        self.sd = sd
        scale = sd[model_idx]
        z = np.divide(dlen, scale, out=np.zeros_like(dlen), where=scale > 0)
        self.t = np.tanh(z)


def _fit(design: _Design, l2_difficulty: float, l2_model: float, difficulty: bool, max_iter: int = 100,
         tol: float = 1e-10):  # fmt: skip
    """Newton's method on the penalised negative log-likelihood; returns theta, phi, psi, iterations, converged."""
    m, x, t, y, M, X = design.m, design.x, design.t, design.y, design.M, design.X
    theta, phi, psi = np.zeros(M), np.zeros(M), np.zeros(X)
    use_psi = difficulty and X > 0

    def objective(theta, phi, psi):
        eta = theta[m] + phi[m] * t + (psi[x] if use_psi else 0.0)
        nll = float(np.sum(_log1pexp(eta) - y * eta))
        pen = 0.5 * l2_model * float(theta @ theta + phi @ phi)
        return nll + pen + (0.5 * l2_difficulty * float(psi @ psi) if use_psi else 0.0)

    current = objective(theta, phi, psi)
    converged, iteration = False, 0
    for iteration in range(1, max_iter + 1):
        eta = theta[m] + phi[m] * t + (psi[x] if use_psi else 0.0)
        p = _sigmoid(eta)
        r, s = p - y, p * (1 - p)  # gradient and curvature of each row's loss in eta
        # Gradient and the per-model 2 x 2 blocks of the Hessian (unknowns u = (theta_m, phi_m) per model).
        g_theta = np.bincount(m, r, M) + l2_model * theta
        g_phi = np.bincount(m, r * t, M) + l2_model * phi
        # The Hessian gets a floor of 1e-9 on its model diagonal (the gradient none): a parameter the data say
        # nothing about (phi when every length difference is equal) stays where it is instead of making the
        # system singular, and Newton still converges to the exact (unpenalised, when l2_model = 0) optimum.
        ridge = max(l2_model, 1e-9)
        h_tt = np.bincount(m, s, M) + ridge
        h_tp = np.bincount(m, s * t, M)
        h_pp = np.bincount(m, s * t * t, M) + ridge
        A = np.zeros((2 * M, 2 * M))
        idx = np.arange(M)
        A[2 * idx, 2 * idx], A[2 * idx, 2 * idx + 1] = h_tt, h_tp
        A[2 * idx + 1, 2 * idx], A[2 * idx + 1, 2 * idx + 1] = h_tp, h_pp
        g_u = np.empty(2 * M)
        g_u[0::2], g_u[1::2] = g_theta, g_phi
        if use_psi:
            g_psi = np.bincount(x, r, X) + l2_difficulty * psi
            D = np.bincount(x, s, X) + l2_difficulty  # (X,) the diagonal psi block
            C = np.zeros((2 * M, X))  # the model-instruction cross block
            np.add.at(C, (2 * m, x), s)
            np.add.at(C, (2 * m + 1, x), s * t)
            # Schur complement on the psi block: (A - C D^-1 C^T) du = g_u - C D^-1 g_psi.
            CD = C / D
            du = np.linalg.solve(A - CD @ C.T, g_u - CD @ g_psi)
            dpsi = (g_psi - C.T @ du) / D
        else:
            du, dpsi = np.linalg.solve(A, g_u), np.zeros(X)
        dtheta, dphi = du[0::2], du[1::2]
        step = 1.0
        while True:  # step halving: never let the objective rise
            new = (theta - step * dtheta, phi - step * dphi, psi - step * dpsi)
            value = objective(*new)
            if value <= current + 1e-12 * max(1.0, abs(current)) or step < 1e-8:
                break
            step /= 2
        theta, phi, psi = new
        current = value
        if step * max(np.abs(du).max(initial=0.0), np.abs(dpsi).max(initial=0.0)) < tol:
            converged = True
            break
    return theta, phi, psi, iteration, converged


def _codes(values) -> tuple[list, np.ndarray]:
    """Distinct values in order of first appearance, and each row's index into them."""
    index: dict = {}
    codes = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)
    return list(index), codes


def _check_rows(models, instructions, decisions, len_model, len_ref):
    n = len(models)
    lengths = [len(instructions), len(decisions), len(len_model), len(len_ref)]
    if any(k != n for k in lengths):
        raise ValueError(f"length control needs one value per row in every column, got {[n] + lengths}")
    if n == 0:
        raise ValueError("length control needs at least one comparison")
    y = np.asarray(decisions, dtype=float)
    if not np.all(np.isfinite(y)) or np.any((y < 0) | (y > 1)):
        raise ValueError("decisions must be in [0, 1]: 1 = the model wins, 0 = the reference, 0.5 = a tie")
    dlen = np.asarray(len_model, dtype=float) - np.asarray(len_ref, dtype=float)
    if not np.all(np.isfinite(dlen)):
        raise ValueError("lengths must be finite numbers")
    return y, dlen


def fit_length_glm(
    models: Sequence[Hashable], instructions: Sequence[Hashable], decisions: Sequence[float],
    len_model: Sequence[float], len_ref: Sequence[float], *, l2_difficulty: float = 0.1, l2_model: float = 1e-2,
    difficulty: bool = True,
) -> GLMFit:  # fmt: skip
    """The joint GLM over all rows (one row per comparison of a model with the reference); see the module doc.

    ``difficulty=False`` drops psi (a per-model fit of theta and phi only, for comparison).
    """
    y, dlen = _check_rows(models, instructions, decisions, len_model, len_ref)
    if l2_difficulty <= 0 and difficulty:
        raise ValueError("l2_difficulty must be > 0: the penalty is what identifies the instruction terms")
    if l2_model < 0:
        raise ValueError("l2_model must be >= 0")
    model_names, m = _codes(models)
    instr_names, x = _codes(instructions)
    design = _Design(m, x, dlen, y, len(model_names), len(instr_names))
    theta, phi, psi, iterations, converged = _fit(design, l2_difficulty, l2_model, difficulty)
    return GLMFit(model_names, instr_names, theta, phi, psi, design.sd, iterations, converged)


def length_controlled_win_rates(
    models: Sequence[Hashable], instructions: Sequence[Hashable], decisions: Sequence[float],
    len_model: Sequence[float], len_ref: Sequence[float], *, bootstrap: int = 200, seed: int = 0,
    level: float = 0.95, l2_difficulty: float = 0.1, l2_model: float = 1e-2, difficulty: bool = True,
) -> dict[Hashable, LCWinRate]:  # fmt: skip
    """Model -> its LC win rate (AlpacaEval 2 LC, one joint fit) with a seeded bootstrap interval.

    Inputs are columns, one entry per comparison: the model's name, the instruction id, the decision
    (1 = the model's response wins against the reference's, 0 = loses, 0.5 = tie; from a gold rule or
    a judge alike), the length of the model's response and of the reference's (tokens or characters).
    ``bootstrap`` resamples of the instructions (0 = no interval), percentile interval at ``level``.
    """
    y, dlen = _check_rows(models, instructions, decisions, len_model, len_ref)
    options = {"l2_difficulty": l2_difficulty, "l2_model": l2_model, "difficulty": difficulty}
    fit = fit_length_glm(models, instructions, decisions, len_model, len_ref, **options)
    _, m = _codes(models)
    instr_names, x = _codes(instructions)
    M, X = len(fit.models), len(instr_names)
    lc = fit.lc_win_rates()

    boot_lc = np.full((bootstrap, M), np.nan)
    boot_raw = np.full((bootstrap, M), np.nan)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        rows_of = [np.flatnonzero(x == k) for k in range(X)]
        for b in range(bootstrap):
            drawn = rng.integers(0, X, size=X)
            rows = np.concatenate([rows_of[k] for k in drawn])
            new_x = np.concatenate([np.full(rows_of[k].size, j) for j, k in enumerate(drawn)])
            design = _Design(m[rows], new_x, dlen[rows], y[rows], M, X)
            theta, _, psi, _, _ = _fit(design, l2_difficulty, l2_model, difficulty)
            present = np.bincount(m[rows], minlength=M) > 0
            sums = np.bincount(m[rows], y[rows], M)
            counts = np.bincount(m[rows], minlength=M)
            for k in np.flatnonzero(present):
                boot_lc[b, k] = _sigmoid(theta[k] + (psi if difficulty else 0.0)).mean()
                boot_raw[b, k] = sums[k] / counts[k]

    alpha = (1 - level) / 2
    out = {}
    for k, name in enumerate(fit.models):
        rows = m == k
        ok = np.isfinite(boot_lc[:, k])
        if ok.any():
            low, high = np.quantile(boot_lc[ok, k], [alpha, 1 - alpha])
            raw_low, raw_high = np.quantile(boot_raw[ok, k], [alpha, 1 - alpha])
        else:
            low = high = raw_low = raw_high = math.nan
        out[name] = LCWinRate(
            model=name, lc=lc[name], low=float(low), high=float(high), raw=float(y[rows].mean()),
            raw_low=float(raw_low), raw_high=float(raw_high), theta=float(fit.theta[k]), phi=float(fit.phi[k]),
            n=int(rows.sum()), bootstrap=int(ok.sum()),
        )  # fmt: skip
    return out
