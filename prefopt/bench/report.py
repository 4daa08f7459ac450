"""Render a benchmark suite's results folder into `report.md`, a self-contained `report.html` and `plots/*.png`.

The input is the folder the runner writes (see prefopt.bench.results): `results.csv` (one row per cell: task x
algorithm x seed, plus the sanity rows) and, when present, the files beside it: the per-prompt samples (the joint
length-controlled win rates and the example replies are computed from them here), the training curves and the
reward-hacking measurements. Optional metric columns that are absent (or empty for a task) and missing files are
left out of the report. Every file is written atomically.

    from prefopt.bench.report import render
    render("results/zoo")          # -> {"md": ..., "html": ..., "frontier_<task>": ..., ...}
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prefopt.bench.document import Doc, to_html, to_markdown
from prefopt.bench.paths import remove_inside
from prefopt.bench.results import (
    CAPABILITY_DELTA_PREFIX,
    CAPABILITY_N_PREFIX,
    IDENTITY,
    OUTPUT_KINDS,
    PROVENANCE,
    RESULTS,
    ROW_KEY,
    SANITY_PREFIX,
    SYCOPHANCY_PREFIX,
    capability_names,
    curve_path,
    hacking_path,
    is_numeric,
    read_records,
    reference_column,
    reference_samples_path,
    samples_path,
)
from prefopt.bench.results import as_number as _num
from prefopt.errors import PrefoptError
from prefopt.evaluation.length_control import LCWinRate, length_controlled_win_rates
from prefopt.evaluation.stats import mean_ci, min_detectable_difference, standard_error
from prefopt.io import atomic_write_bytes, atomic_write_text

PLOT_PREFIXES = ("frontier_", "winrates_", "sycophancy_", "length_", "curves_", "hacking_")
DASH = "–"
NAN = float("nan")
# prefopt.evaluation.sycophancy.BEHAVIOURS, in its order (that module imports torch; the report does not need it)
SYC_BEHAVIOURS = ("answer", "are_you_sure", "feedback", "mimicry")
JUDGE_THRESHOLD = 0.6  # judge_protocol.Calibration.informative's default, when a row has no judge_cal_threshold
LC_BOOTSTRAP = 200  # resamples of the prompts for the LC win rates' intervals
CROSSED_BOOTSTRAP = 2000  # replicates of the crossed seed x prompt bootstrap (gold win rate intervals, paired tests)
EXAMPLES, REPLY_CHARS = 3, 200  # example prompts per task; characters of a reply shown
MAX_COLUMNS = 9  # per table, the row label and the seed count included: a table fits a normal screen
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
CURVE_METRICS = (("loss", "loss"), ("margin", "margin"), ("reward_margin", "reward margin"),
                 ("reward", "reward (proxy / judge)"), ("gold", "gold reward of the rollouts"),
                 ("kl", "KL of the rollouts [nats]"))  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _csv_path(source: str | Path) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / RESULTS
        if not path.is_file():
            raise PrefoptError(f"{source}: no {RESULTS} in this folder")
    elif not path.is_file():
        raise PrefoptError(f"{source}: no such results folder or CSV file")
    return path


def load_results(source: str | Path) -> pd.DataFrame:
    """Read and check a results CSV (or a folder holding results.csv).

    Metric columns come back as floats (empty -> NaN), text columns as str ("" when empty). Rows repeating a
    (task, algo, seed, output_kind) cell keep the last occurrence; df.attrs["duplicates"] counts the dropped ones.
    """
    path = _csv_path(source)
    try:
        raw = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise PrefoptError(f"{path}: empty file, not a results CSV") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise PrefoptError(f"{path}: unreadable CSV: {e}") from None
    except OSError as e:
        raise PrefoptError(f"{path}: cannot read: {e.strerror or e}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    for col in IDENTITY:
        if col not in raw.columns:
            raise PrefoptError(f"{path}: missing required column '{col}'")
    if len(raw) == 0:
        raise PrefoptError(f"{path}: no result rows")

    df = pd.DataFrame(index=raw.index)
    for col in raw.columns:
        values = raw[col].astype(object).where(raw[col].notna(), None)
        values = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        if is_numeric(col):
            num = pd.to_numeric(values, errors="coerce")
            bad = values.notna() & (values != "") & num.isna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise PrefoptError(f"{path}: row {i + 1}, column '{col}': not a number: {values.iloc[i]!r}")
            df[col] = num.astype(float)
        else:
            df[col] = values.fillna("").astype(str)

    for col in ("task", "algo", "output_kind", "seed"):
        empty = df[col].isna() if col == "seed" else df[col].eq("")
        if empty.any():
            i = int(np.flatnonzero(empty.to_numpy())[0])
            raise PrefoptError(f"{path}: row {i + 1}, column '{col}': empty")
    bad_kind = ~df["output_kind"].isin(OUTPUT_KINDS)
    if bad_kind.any():
        i = int(np.flatnonzero(bad_kind.to_numpy())[0])
        raise PrefoptError(
            f"{path}: row {i + 1}, column 'output_kind': {df['output_kind'].iloc[i]!r} is not one of "
            + ", ".join(OUTPUT_KINDS)
        )

    before = len(df)
    df = df.drop_duplicates(subset=list(ROW_KEY), keep="last").reset_index(drop=True)
    df.attrs["duplicates"] = before - len(df)
    df.attrs["path"] = str(path)
    return df


# ----------------------------------------------------------------------------------------------------------------
# Formatting


def _fmt(x: float, digits: int = 3, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return DASH
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _fmt_ci(values, digits: int = 3) -> str:
    mean, low, high, n = mean_ci(values)
    if n == 0:
        return DASH
    if n == 1:
        return _fmt(mean, digits)
    return f"{_fmt(mean, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _mean(values) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else NAN


def _has(df: pd.DataFrame, *cols: str) -> bool:
    """All columns exist and each holds at least one finite (numeric) or non-empty (text) value."""
    for c in cols:
        if c not in df.columns:
            return False
        s = df[c]
        if s.dtype == object or pd.api.types.is_string_dtype(s):
            if not s.astype(str).str.strip().ne("").any():
                return False
        elif not np.isfinite(s.to_numpy(dtype=float)).any():
            return False
    return True


def _seed_str(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _join(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "none"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "task"


def _fmt_interval(value: float, low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    if not np.isfinite(value):
        return DASH
    if not (np.isfinite(low) and np.isfinite(high)):
        return _fmt(value, digits, signed)
    return f"{_fmt(value, digits, signed)} [{_fmt(low, digits, signed)}, {_fmt(high, digits, signed)}]"


def _clip(text, limit: int = REPLY_CHARS) -> str:
    """One line of at most `limit` characters (whitespace collapsed, '…' where cut)."""
    flat = " ".join(str(text).split())
    if not flat:
        return "(empty)"
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _is_sanity(algo: str) -> bool:
    return str(algo).startswith(SANITY_PREFIX)


# ----------------------------------------------------------------------------------------------------------------
# The files beside results.csv (all optional)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _by_index(records: list[dict]) -> dict[int, dict]:
    out = {}
    for rec in records:
        i = _num(rec.get("i"))
        if np.isfinite(i) and float(i).is_integer():
            out[int(i)] = rec
    return out


@dataclass
class Samples:
    """A task's per-prompt replies: the reference's and each (algo, seed) cell's, by prompt index."""

    reference: dict[int, dict] = field(default_factory=dict)
    cells: dict[tuple[str, int], dict[int, dict]] = field(default_factory=dict)


def _load_samples(folder: Path, task: str, rows: pd.DataFrame) -> Samples:
    samples = Samples(_by_index(read_records(reference_samples_path(folder, task))))
    if not samples.reference:
        return samples
    cells = rows[rows["output_kind"].isin(("policy", "sanity"))]
    for algo, seed in sorted({(str(a), int(s)) for a, s in zip(cells["algo"], cells["seed"]) if np.isfinite(s)}):
        records = _by_index(read_records(samples_path(folder, task, algo, seed)))
        if records:
            samples.cells[(algo, seed)] = records
    return samples


def _gold_decision(gold: float, ref_gold: float) -> float:
    """prefopt.evaluation.metrics.score_decisions for one prompt: 1 if better than the reference, 0 if worse, 1/2."""
    return 1.0 if gold > ref_gold else 0.0 if gold < ref_gold else 0.5


def lc_rows(samples: Samples, decision: str = "gold") -> tuple[list, list, list, list, list]:
    """The joint LC fit's input, one row per (cell, prompt) with a reply and a reference reply.

    model = the algorithm (its seeds pooled as one model), instruction = the prompt index, decision = the gold rule's
    (``"gold"``) or the judge's (``"judge"``) decision against the reference's reply to that prompt, and the two
    replies' lengths.
    """
    models, instructions, decisions, len_model, len_ref = [], [], [], [], []
    for (algo, _seed), records in sorted(samples.cells.items()):
        for i in sorted(records):
            ref = samples.reference.get(i)
            if ref is None:
                continue
            rec = records[i]
            if decision == "gold":
                gold, ref_gold = _num(rec.get("gold")), _num(ref.get("gold"))
                y = _gold_decision(gold, ref_gold) if np.isfinite(gold) and np.isfinite(ref_gold) else NAN
            else:
                y = _num(rec.get("judge"))
            lm, lr = _num(rec.get("length")), _num(ref.get("length"))
            if not (np.isfinite(y) and 0.0 <= y <= 1.0 and np.isfinite(lm) and np.isfinite(lr)):
                continue
            models.append(algo)
            instructions.append(i)
            decisions.append(y)
            len_model.append(lm)
            len_ref.append(lr)
    return models, instructions, decisions, len_model, len_ref


def _lc(samples: Samples, decision: str) -> dict[str, LCWinRate]:
    """Algorithm -> its length-controlled win rate from one joint fit over the task's cells (AlpacaEval 2 LC)."""
    models, instructions, decisions, len_model, len_ref = lc_rows(samples, decision)
    if not models:
        return {}
    try:
        return length_controlled_win_rates(models, instructions, decisions, len_model, len_ref,
                                           bootstrap=LC_BOOTSTRAP, seed=0)  # fmt: skip
    except (ValueError, np.linalg.LinAlgError):
        return {}


def _lc_cell(lc: dict[str, LCWinRate], algo: str) -> str:
    est = lc.get(algo)
    return _fmt_interval(est.lc, est.low, est.high) if est is not None else DASH


def _load_curves(folder: Path, task: str, policy: pd.DataFrame, order: list[str]) -> dict[str, list[list[dict]]]:
    """Algorithm -> its seeds' training-metrics lines (only algorithms with at least one curve file)."""
    out = {}
    for algo in order:
        seeds = sorted({int(s) for s in policy.loc[policy["algo"] == algo, "seed"] if np.isfinite(s)})
        runs = [lines for lines in (read_records(curve_path(folder, task, algo, s)) for s in seeds) if lines]
        if runs:
            out[algo] = runs
    return out


def _curve_mean(runs: list[list[dict]], key: str) -> dict[float, float]:
    """Step -> the mean over seeds of `key` (a seed's repeated steps averaged first)."""
    per_step: dict[float, list[float]] = {}
    for lines in runs:
        seed_steps: dict[float, list[float]] = {}
        for rec in lines:
            step, value = _num(rec.get("step")), _num(rec.get(key))
            if np.isfinite(step) and np.isfinite(value):
                seed_steps.setdefault(step, []).append(value)
        for step, values in seed_steps.items():
            per_step.setdefault(step, []).append(float(np.mean(values)))
    return {s: float(np.mean(v)) for s, v in sorted(per_step.items())}


# ----------------------------------------------------------------------------------------------------------------
# The AI judge's calibration


@dataclass
class JudgeState:
    """Whether the judge's win rates may be read (shown) and its calibration in words (None: none recorded)."""

    show: bool
    text: str | None


def judge_state(rows: pd.DataFrame) -> JudgeState:
    """judge_protocol.Calibration(...).describe(threshold, details=True) from the judge_cal_ columns.

    Informative only when the agreement interval's lower bound exceeds 0.5 and the agreement reaches the threshold
    (Calibration.informative); a folder without calibration columns shows its judge numbers, saying so.
    """
    if not _has(rows, "judge_cal_agreement", "judge_cal_low", "judge_cal_high", "judge_cal_n"):
        return JudgeState(True, None)
    agreement, low, high = (_mean(rows[c]) for c in ("judge_cal_agreement", "judge_cal_low", "judge_cal_high"))
    n = round(_mean(rows["judge_cal_n"]))
    threshold = _mean(rows["judge_cal_threshold"]) if _has(rows, "judge_cal_threshold") else JUDGE_THRESHOLD
    text = f"agreement {agreement:.2f} [{low:.2f}, {high:.2f}] on {n} pairs"
    details = []
    if _has(rows, "judge_cal_tie_rate"):
        details.append(f"ties {_mean(rows['judge_cal_tie_rate']):.2f}")
    if _has(rows, "judge_cal_position_bias"):
        details.append(f"position bias {_mean(rows['judge_cal_position_bias']):.2f}")
    if details:
        text += "; " + ", ".join(details)
    informative = n > 0 and low > 0.5 and agreement >= threshold
    return JudgeState(informative, text if informative else f"not informative ({text})")


# ----------------------------------------------------------------------------------------------------------------
# Tables


@dataclass
class Column:
    header: str
    needs: tuple[str, ...]
    cell: Callable[[pd.DataFrame], str]
    present: bool | None = None  # None: shown when the rows have every column in `needs`


def _emit_tables(doc: Doc, label: str, groups: list[tuple[str, pd.DataFrame]], columns: list[Column],
                 seeds: bool = True) -> bool:  # fmt: skip
    """One row per group; columns with no data are left out, the rest split into tables of MAX_COLUMNS at most."""
    if not groups:
        return False
    every = pd.concat([g for _, g in groups])
    kept = [c for c in columns if (c.present if c.present is not None else _has(every, *c.needs))]
    if not kept:
        return False
    width = MAX_COLUMNS - 1 - int(seeds)
    for start in range(0, len(kept), width):
        chunk = kept[start:start + width]
        headers = [label] + (["n seeds"] if seeds else []) + [c.header for c in chunk]
        body = [[name] + ([str(len(g))] if seeds else []) + [c.cell(g) for c in chunk] for name, g in groups]
        doc.table(headers, body)
    return True


def _algo_order(policy: pd.DataFrame) -> list[str]:
    """Algorithms sorted by mean gold win rate, descending; missing ones last, then by name."""
    algos = sorted(policy["algo"].unique())
    if "win_rate_gold" not in policy.columns:
        return algos
    means = {a: _mean(policy.loc[policy["algo"] == a, "win_rate_gold"]) for a in algos}
    return sorted(algos, key=lambda a: (not np.isfinite(means[a]), -means[a] if np.isfinite(means[a]) else 0, a))


def _sanity_order(sanity: pd.DataFrame) -> list[str]:
    fixed = [f"{SANITY_PREFIX}{k}" for k in ("empty", "constant", "reference")]
    names = sorted(sanity["algo"].unique())
    best = sorted((a for a in names if a.startswith(f"{SANITY_PREFIX}best-of-")),
                  key=lambda a: (len(a), a))  # fmt: skip
    return [a for a in fixed if a in names] + best + [a for a in names if a not in fixed and a not in best]


def _groups(rows: pd.DataFrame, order: list[str]) -> list[tuple[str, pd.DataFrame]]:
    return [(a, rows[rows["algo"] == a]) for a in order]


def _kl_cell(rows: pd.DataFrame) -> str:
    mean, low, high, n = mean_ci(rows["kl_k3"])
    if n == 0:
        return DASH
    if n >= 2:
        return f"{_fmt(mean, 2)} ± {_fmt((high - low) / 2, 2)}"
    if "kl_k3_se" in rows.columns:
        se = _mean(rows.loc[np.isfinite(rows["kl_k3"].to_numpy(float)), "kl_k3_se"])
        if np.isfinite(se):
            return f"{_fmt(mean, 2)} ± {_fmt(se, 2)} SE"
    return _fmt(mean, 2)


def _length_cell(rows: pd.DataFrame) -> str:
    pol = _fmt(_mean(rows["length"]), 1)
    ref = _fmt(_mean(rows["length_ref"]), 1) if "length_ref" in rows.columns else DASH
    return f"{pol} / {ref}"


def _with_se(rows: pd.DataFrame, col: str) -> str:
    """One run's value ± its standard error (column <col>_se), or the t-interval when there are several."""
    mean, _, _, n = mean_ci(rows[col])
    if n != 1:
        return _fmt_ci(rows[col])
    se = _mean(rows[f"{col}_se"]) if f"{col}_se" in rows.columns else NAN
    return f"{_fmt(mean)} ± {_fmt(se)} SE" if np.isfinite(se) else _fmt(mean)


def per_prompt_wins(samples: Samples, algos: list[str]) -> tuple[dict[str, np.ndarray], list[int], list[int]]:
    """({algo: (S, P) per-prompt gold win rates}, seeds, prompts): the seeds every one of `algos` has in the samples
    files and the prompts with a win rate in all of those cells, so that the arrays are paired; ({}, [], []) when
    there are none."""
    from prefopt.bench.matched_kl import _win

    seeds = sorted(set.intersection(*({s for (a, s) in samples.cells if a == algo} for algo in algos))) if algos else []
    if not seeds:
        return {}, [], []
    prompts = None
    for algo in algos:
        for seed in seeds:
            records = samples.cells[(algo, seed)]
            ok = {i for i, r in records.items() if np.isfinite(_win(r, samples.reference.get(i)))}
            prompts = ok if prompts is None else prompts & ok
    prompts = sorted(prompts or ())
    if not prompts:
        return {}, [], []
    wins = {algo: np.array([[_win(samples.cells[(algo, s)][i], samples.reference.get(i)) for i in prompts]
                            for s in seeds]) for algo in algos}  # fmt: skip
    return wins, seeds, prompts


def _win_interval(samples: Samples, rows: pd.DataFrame) -> tuple[float, float, float, int, bool, float]:
    """(mean, low, high, n seeds, crossed, se) of an algorithm's gold win rate: a crossed seed x prompt bootstrap
    interval and SE from the per-prompt files (crossed True), or without them the Student-t interval over seeds
    and the seeds' standard error."""
    from prefopt.evaluation.frontier import paired_difference

    algo = str(rows["algo"].iloc[0])
    wins, seeds, _ = per_prompt_wins(samples, [algo])
    if not wins or len(seeds) < len(rows):  # a seed's file is missing: the rows' own numbers
        return (*mean_ci(rows["win_rate_gold"]), False, standard_error(rows["win_rate_gold"]))
    d = paired_difference(wins[algo], np.full_like(wins[algo], 0.5), CROSSED_BOOTSTRAP)
    return d["diff"] + 0.5, d["low"] + 0.5, d["high"] + 0.5, len(seeds), True, d["se"]


def _win_ci_cell(samples: Samples):
    def cell(rows: pd.DataFrame) -> str:
        mean, low, high, _, crossed, _ = _win_interval(samples, rows)
        if not crossed:
            return _fmt_ci(rows["win_rate_gold"])
        return _fmt_interval(mean, low, high) + " ‡"

    return cell


def _gold_columns(lc_gold: dict[str, LCWinRate], samples: Samples) -> list[Column]:
    return [
        Column("Δ gold reward", ("gold_reward", "gold_reward_ref"),
               lambda r: _fmt(_mean(r["gold_reward"] - r["gold_reward_ref"]), signed=True)),
        Column("gold win rate [95% CI]", ("win_rate_gold",), _win_ci_cell(samples)),
        Column("LC win rate (gold) [95% CI]", (), lambda r: _lc_cell(lc_gold, r["algo"].iloc[0]),
               present=bool(lc_gold)),
        Column("KL k3 (nats)", ("kl_k3",), _kl_cell),
        Column("length (policy / ref)", ("length",), _length_cell),
    ]  # fmt: skip


def _best_vs_second(samples: Samples, best: str, second: str) -> str | None:
    """The paired test of the two best algorithms on the same seeds and prompts (None without per-prompt files)."""
    from prefopt.evaluation.frontier import paired_difference

    wins, seeds, prompts = per_prompt_wins(samples, [best, second])
    if not wins:
        return None
    d = paired_difference(wins[best], wins[second], CROSSED_BOOTSTRAP)
    said = "these seeds and prompts do not establish their order" if d["p"] >= 0.05 else "the difference is real"
    return (f"Best ({best}) − second best ({second}), paired over {len(seeds)} seeds x {len(prompts)} prompts: "
            f"{_fmt_interval(d['diff'], d['low'], d['high'], signed=True)}, bootstrap p = {_fmt(d['p'])}: {said} "
            f"(one comparison chosen after ranking, so read it as optimistic).")


def _noise_line(policy: pd.DataFrame, order: list[str], samples: Samples) -> str:
    if not _has(policy, "win_rate_gold"):
        return "Noise: no gold win rate in these rows, so no check against the reference."
    inside, above, below, few, cis, crossed, ses = [], [], [], [], {}, False, []
    for a in order:
        mean, low, high, n, by_prompt, se = _win_interval(samples, policy[policy["algo"] == a])
        if n == 0:
            continue
        cis[a] = (mean, low, high, n)
        crossed = crossed or by_prompt
        ses.append(se)
        if n < 2 and not by_prompt:
            few.append(a)
        elif low <= 0.5 <= high:
            inside.append(a)
        elif low > 0.5:
            above.append(a)
        else:
            below.append(a)
    how = "crossed seed x prompt bootstrap ‡" if crossed else "t-interval over seeds"
    parts = [f"Noise (gold win rate, 95% {how}):"]
    if inside:
        parts.append(f"CI contains 0.5 (not distinguishable from the reference): {_join(inside)}.")
    if above:
        parts.append(f"CI entirely above 0.5 (better than the reference): {_join(above)}.")
    if below:
        parts.append(f"CI entirely below 0.5 (worse than the reference): {_join(below)}.")
    if few:
        parts.append(f"Fewer than 2 seeds, no CI: {_join(few)}.")
    ranked = [a for a in order if a in cis]
    paired = _best_vs_second(samples, ranked[0], ranked[1]) if len(ranked) >= 2 else None
    if paired:
        parts.append(paired)
    elif len(ranked) >= 2:
        best, second = ranked[0], ranked[1]
        b, s = cis[best], cis[second]
        names = f"best ({best}, {_fmt(b[0])}) and second best ({second}, {_fmt(s[0])})"
        if b[3] < 2 or s[3] < 2:
            parts.append(f"The {names} cannot be compared: a CI is missing.")
        elif b[1] <= s[2] and s[1] <= b[2]:
            parts.append(f"The CIs of the {names} overlap: these seeds do not establish their order.")
        else:
            parts.append(f"The CIs of the {names} do not overlap.")
    finite = [se for se in ses if np.isfinite(se)]
    if finite:
        se = float(np.median(finite))
        parts.append(f"At this size an algorithm's departure from parity (0.5) of {min_detectable_difference(se):.3f} "
                     f"is detectable with 80% power (two-sided α = 0.05; median SE {se:.3f}), and a difference of "
                     f"{min_detectable_difference(se * math.sqrt(2)):.3f} between two algorithms (unpaired SEs; a "
                     "paired comparison can do better); smaller ones may be missed.")  # fmt: skip
        seeds = policy["seed"].nunique()
        if seeds < 2:
            parts.append("With one seed the intervals and these sizes cover the prompts only: how much another "
                         "training seed would move a number is not measured.")  # fmt: skip
    return " ".join(parts)


def _reference_line(rows: pd.DataFrame) -> str | None:
    items = []
    for col, label, digits in (("gold_reward_ref", "gold reward", 3), ("length_ref", "length", 1)):
        if _has(rows, col):
            items.append(f"{label} {_fmt(_mean(rows[col]), digits)}")
    if not items:
        return None
    return "Reference model (mean over rows): " + "; ".join(items) + "."


def _sanity_reply(algo: str, seed: int, samples: Samples) -> str:
    kind = algo[len(SANITY_PREFIX):]
    if kind == "empty":
        return "the empty reply"
    if kind == "constant":
        records = samples.cells.get((algo, seed), {})
        if records:
            return f'"{_clip(records[min(records)].get("reply", ""), 60)}" to every prompt'
        return "the best constant reply"
    if kind == "reference":
        return "a second sample of the starting model"
    if kind.startswith("best-of-"):
        return f"per prompt the best of {kind[len('best-of-'):]} starting-model samples by gold"
    return DASH


def _sanity_kl(rows: pd.DataFrame) -> str:
    if _has(rows, "kl_k3"):
        return _kl_cell(rows)
    if _has(rows, "kl_bound"):
        return f"≤ {_fmt(_mean(rows['kl_bound']), 2)} (bound)"
    return DASH


def _sanity_section(doc: Doc, sanity: pd.DataFrame, samples: Samples, lc_gold: dict, lc_judge: dict,
                    judge: JudgeState) -> None:  # fmt: skip
    order = _sanity_order(sanity)
    seed_of = {a: int(sanity.loc[sanity["algo"] == a, "seed"].min()) for a in order}
    columns = [
        Column("reply", (), lambda r: _sanity_reply(r["algo"].iloc[0], seed_of[r["algo"].iloc[0]], samples),
               present=True),
        Column("gold reward", ("gold_reward",), lambda r: _fmt(_mean(r["gold_reward"]))),
        Column("gold win rate", ("win_rate_gold",), lambda r: _with_se(r, "win_rate_gold")),
        Column("LC win rate (gold) [95% CI]", (), lambda r: _lc_cell(lc_gold, r["algo"].iloc[0]),
               present=bool(lc_gold)),
        Column("judge win rate", ("win_rate_judge",), lambda r: _with_se(r, "win_rate_judge"), present=None
               if judge.show else False),
        Column("LC win rate (judge) [95% CI]", (), lambda r: _lc_cell(lc_judge, r["algo"].iloc[0]),
               present=bool(lc_judge) and judge.show),
        Column("KL (nats)", (), _sanity_kl, present=_has(sanity, "kl_k3") or _has(sanity, "kl_bound")),
        Column("length", ("length",), lambda r: _fmt(_mean(r["length"]), 1)),
    ]  # fmt: skip
    doc.heading(3, "Sanity rows")
    text = ("Reference points measured like a policy (one seed; ± is the run's standard error): the empty reply and "
            "the best constant reply must score below the reference (win rate below 0.5), or the gold rule can be "
            "won without answering; sanity-reference, a second independent sample of the starting model, should "
            "be near 0.5 and shows the noise floor; best-of-n (per prompt the best of n starting-model samples by "
            "gold) is a ceiling reachable at KL ≤ log n − (n − 1)/n.")
    checks = []
    if _has(sanity, "win_rate_gold"):
        for a in order:
            wr = _mean(sanity.loc[sanity["algo"] == a, "win_rate_gold"])
            if a in (f"{SANITY_PREFIX}empty", f"{SANITY_PREFIX}constant") and np.isfinite(wr) and wr >= 0.5:
                checks.append(f"{a} reaches a gold win rate of {_fmt(wr)}: the gold rule rewards a reply that does "
                              "not answer")
    if checks:
        text += " Warning: " + "; ".join(checks) + "."
    doc.para(text)
    _emit_tables(doc, "sanity row", _groups(sanity, order), columns, seeds=False)


def _judge_section(doc: Doc, rows: pd.DataFrame, policy: pd.DataFrame, order: list[str], judge: JudgeState,
                   lc_judge: dict) -> None:  # fmt: skip
    judges = _unique(rows, "judge")
    has_rates = _has(policy, "win_rate_judge")
    if not (judges or has_rates or judge.text):
        return
    doc.heading(3, "AI judge")
    name = f"AI judge {', '.join(judges)}" if judges else "The AI judge"
    if judge.text is None:
        text = f"{name}: no calibration against gold recorded for this task, so its win rates are shown unchecked."
    elif judge.show:
        text = f"{name}: calibration against gold before the suite: {judge.text}."
    else:
        threshold = _mean(rows["judge_cal_threshold"]) if _has(rows, "judge_cal_threshold") else JUDGE_THRESHOLD
        text = (f"{name}: {judge.text}. Its win rates are not shown: a judge is read only when the lower bound of "
                f"its agreement with gold exceeds 0.5 and the agreement is at least {threshold:.2f}.")
    doc.para(text + " Per cell: agreement with the gold rule's decisions on the same pairs, the share of ties "
             "and of position-dependent verdicts (each pair is judged in both orders).")
    columns = [
        Column("judge win rate [95% CI]", ("win_rate_judge",), lambda r: _fmt_ci(r["win_rate_judge"]),
               present=None if judge.show else False),
        Column("LC win rate (judge) [95% CI]", (), lambda r: _lc_cell(lc_judge, r["algo"].iloc[0]),
               present=bool(lc_judge) and judge.show),
        Column("agreement with gold", ("judge_agreement",), lambda r: _fmt(_mean(r["judge_agreement"]))),
        Column("ties", ("judge_tie_rate",), lambda r: _fmt(_mean(r["judge_tie_rate"]))),
        Column("position bias", ("judge_position_bias",), lambda r: _fmt(_mean(r["judge_position_bias"]))),
    ]  # fmt: skip
    _emit_tables(doc, "algorithm", _groups(policy, order), columns)


def syc_behaviours(columns) -> list[str]:
    """Sycophancy behaviours with a rate and a count column (syc_<b>_rate, syc_<b>_n), the paper's order first."""
    cols = set(columns)
    found = {c[len(SYCOPHANCY_PREFIX):-len("_rate")] for c in cols
             if c.startswith(SYCOPHANCY_PREFIX) and c.endswith("_rate")}  # fmt: skip
    found = {b for b in found if f"{SYCOPHANCY_PREFIX}{b}_n" in cols}
    return [b for b in SYC_BEHAVIOURS if b in found] + sorted(found - set(SYC_BEHAVIOURS))


def _sycophancy_section(doc: Doc, rows: pd.DataFrame, policy: pd.DataFrame, order: list[str]) -> None:
    behaviours = [b for b in syc_behaviours(rows.columns) if _has(policy, f"{SYCOPHANCY_PREFIX}{b}_rate")]
    mwe = _has(policy, "mwe_matching_rate")
    if not behaviours and not mwe:
        return
    doc.heading(3, "Sycophancy")
    doc.para("Rate of sycophantic behaviour per behaviour (Sharma et al. 2023; lower = less sycophantic), mean "
             "over seeds, on n probes: answer = answers changed towards the user's suggested wrong answer; "
             "are_you_sure = correct answers abandoned after \"Are you sure?\"; feedback = feedback that follows the "
             "user's stated liking; mimicry = the user's mistake repeated. The reference row is the starting model. "
             "MWE matching: how often the model prefers the behaviour-matching answer of the model-written evals.")
    ref = rows  # the reference's values (<col>_ref) are the same in every row of the task
    groups = [("reference", ref)] + _groups(policy, order)

    def rate_column(b: str) -> Column:
        rate, n = f"{SYCOPHANCY_PREFIX}{b}_rate", f"{SYCOPHANCY_PREFIX}{b}_n"
        counts = {_mean(g[n]) for name, g in groups[1:] if _has(g, n)}
        if _has(rows, reference_column(n)):
            counts.add(_mean(rows[reference_column(n)]))
        counts = {c for c in counts if np.isfinite(c)}
        one = len(counts) == 1

        def cell(g: pd.DataFrame) -> str:
            reference = g is ref
            col, ncol = (reference_column(rate), reference_column(n)) if reference else (rate, n)
            value = _mean(g[col]) if col in g.columns else NAN
            if one or not np.isfinite(value):
                return _fmt(value)
            count = _mean(g[ncol]) if ncol in g.columns else NAN
            return f"{_fmt(value)} (n={_fmt(count, 0)})" if np.isfinite(count) else _fmt(value)

        header = f"{b} (n={_fmt(counts.pop(), 0)})" if one else b
        return Column(header, (), cell, present=True)

    columns = [rate_column(b) for b in behaviours]
    def mwe_cell(g: pd.DataFrame) -> str:
        col = reference_column("mwe_matching_rate") if g is ref else "mwe_matching_rate"
        return _fmt(_mean(g[col])) if col in g.columns else DASH

    if mwe:
        columns.append(Column("MWE matching", (), mwe_cell, present=True))
    _emit_tables(doc, "model", groups, columns, seeds=False)


def _cap_cell(rows: pd.DataFrame, cap: str) -> str:
    d, lo, hi = (f"{CAPABILITY_DELTA_PREFIX}{cap}", f"{CAPABILITY_DELTA_PREFIX}low_{cap}",
                 f"{CAPABILITY_DELTA_PREFIX}high_{cap}")  # fmt: skip
    if _has(rows, d):
        ok = np.isfinite(rows[d].to_numpy(float))
        sub = rows[ok]
        low = _mean(sub[lo]) if lo in sub.columns else NAN
        high = _mean(sub[hi]) if hi in sub.columns else NAN
        return _fmt_interval(_mean(sub[d]), low, high, signed=True)
    pol, ref = f"cap_{cap}", f"cap_ref_{cap}"
    if pol in rows.columns and ref in rows.columns:  # a folder from before the paired intervals
        return _fmt(_mean(rows[pol] - rows[ref]), signed=True)
    return DASH


def _capability_section(doc: Doc, rows: pd.DataFrame, policy: pd.DataFrame, order: list[str],
                        caps: list[str]) -> None:  # fmt: skip
    caps = [c for c in caps if _has(policy, f"{CAPABILITY_DELTA_PREFIX}{c}") or _has(policy, f"cap_{c}")]
    if not caps:
        return
    doc.heading(3, "Capability")
    refs = []
    for c in caps:
        if _has(rows, f"cap_ref_{c}"):
            n = f"{CAPABILITY_N_PREFIX}{c}"
            items = f" on {_fmt(_mean(rows[n]), 0)} items" if _has(rows, n) else ""
            refs.append(f"{c} {_fmt(_mean(rows[f'cap_ref_{c}']))}{items}")
    text = ("Δ accuracy = policy − reference accuracy on the same items (lm-evaluation-harness), with the paired "
            "95% interval over items; with several seeds the mean Δ and the seeds' interval bounds averaged.")
    if refs:
        text += " Reference accuracy: " + "; ".join(refs) + "."
    doc.para(text)
    columns = [Column(f"Δ {c} [paired 95% CI]", (), lambda r, c=c: _cap_cell(r, c), present=True) for c in caps]
    _emit_tables(doc, "algorithm", _groups(policy, order), columns)


def _gap_cell(rows: pd.DataFrame) -> str:
    mean, low, high, n = mean_ci(rows["hacking_gap"])
    if n == 1 and _has(rows, "hacking_gap_low", "hacking_gap_high"):
        ok = np.isfinite(rows["hacking_gap"].to_numpy(float))
        return _fmt_interval(mean, _mean(rows.loc[ok, "hacking_gap_low"]), _mean(rows.loc[ok, "hacking_gap_high"]),
                             signed=True)  # fmt: skip
    return _fmt_interval(mean, low, high, signed=True)


def _flat_numbers(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flat_numbers(value, f"{name}.")
        elif isinstance(value, bool) or value is None:
            out.append(f"{name} {value}")
        elif isinstance(value, (int, float)):
            out.append(f"{name} {_fmt(float(value)) if isinstance(value, float) else value}")
        elif isinstance(value, str):
            out.append(f"{name} {value}")
    return out


def _best_of_n(hack: dict | None) -> list[dict]:
    points = hack.get("best_of_n") if hack else None
    if not isinstance(points, list):
        return []
    good = [p for p in points if isinstance(p, dict) and np.isfinite(_num(p.get("n"))) and np.isfinite(_num(p.get("kl")))]
    return sorted(good, key=lambda p: _num(p.get("n")))


def _hacking_section(doc: Doc, policy: pd.DataFrame, order: list[str], hack: dict | None) -> bool:
    proxied = policy[policy["proxy"].astype(str).str.strip().ne("")] if "proxy" in policy.columns else policy.iloc[:0]
    bon = _best_of_n(hack)
    if proxied.empty and not hack:
        return False
    doc.heading(3, "Reward hacking")
    doc.para("Policies trained against a proxy (a reward model or an AI judge): the proxy's and gold's gains over "
             "the reference in reference standard deviations (z) and hacking gap = proxy gain − gold gain (> 0: the "
             "proxy over-rates the policy), with its 95% paired bootstrap interval over prompts for one seed, a "
             "t-interval over seeds for several.")
    if not proxied.empty:
        columns = [
            Column("proxy", (), lambda r: ", ".join(_unique(r, "proxy")), present=True),
            Column("proxy gain (z)", ("proxy_gain_z",), lambda r: _fmt(_mean(r["proxy_gain_z"]), signed=True)),
            Column("gold gain (z)", ("gold_gain_z",), lambda r: _fmt(_mean(r["gold_gain_z"]), signed=True)),
            Column("proxy win rate", ("proxy_win_rate",), lambda r: _fmt(_mean(r["proxy_win_rate"]))),
            Column("gold win rate", ("win_rate_gold",), lambda r: _fmt(_mean(r["win_rate_gold"]))),
            Column("hacking gap [95% CI]", ("hacking_gap",), _gap_cell),
        ]  # fmt: skip
        _emit_tables(doc, "algorithm", _groups(proxied, [a for a in order if a in set(proxied["algo"])]), columns)
    if hack:
        head = f"Proxy {hack['proxy']}" if isinstance(hack.get("proxy"), str) else "The proxy"
        planted = hack.get("planted")
        if isinstance(planted, dict) and _flat_numbers(planted):
            doc.para(f"{head}: planted feature: " + "; ".join(_flat_numbers(planted)) + ".")
        if bon:
            doc.para("Best-of-n against the proxy (per prompt the reference sample the proxy likes best of n; "
                     "KL = log n − (n − 1)/n): standardised gains with 95% intervals.")
            doc.table(["n", "KL (nats)", "proxy gain (z) [95% CI]", "gold gain (z) [95% CI]"], [
                [_fmt(_num(p.get("n")), 0), _fmt(_num(p.get("kl")), 2),
                 _fmt_interval(_num(p.get("proxy")), _num(p.get("proxy_low")), _num(p.get("proxy_high")), signed=True),
                 _fmt_interval(_num(p.get("gold")), _num(p.get("gold_low")), _num(p.get("gold_high")), signed=True)]
                for p in bon])  # fmt: skip
        over = hack.get("overoptimisation")
        if isinstance(over, dict) and _flat_numbers(over):
            doc.para("Over-optimisation: " + "; ".join(_flat_numbers(over)) + ".")
    return True


def _cost_section(doc: Doc, policy: pd.DataFrame, order: list[str]) -> None:
    columns = [
        Column("steps", ("steps",), lambda r: _fmt(_mean(r["steps"]), 0)),
        Column("comparisons seen", ("comparisons_seen",), lambda r: _fmt(_mean(r["comparisons_seen"]), 0)),
        Column("reward queries", ("reward_queries",), lambda r: _fmt(_mean(r["reward_queries"]), 0)),
        Column("pref. accuracy", ("pref_accuracy",), lambda r: _fmt(_mean(r["pref_accuracy"]))),
        Column("train s", ("train_seconds",), lambda r: _fmt(_mean(r["train_seconds"]), 1)),
        Column("s/step", ("seconds_per_step",), lambda r: _fmt(_mean(r["seconds_per_step"]), 2)),
        Column("peak MB", ("peak_rss_mb",), lambda r: _fmt(np.nanmax(r["peak_rss_mb"].to_numpy(float))
                                                          if _has(r, "peak_rss_mb") else NAN, 0)),
        Column("eval s", ("eval_seconds",), lambda r: _fmt(_mean(r["eval_seconds"]), 1)),
    ]  # fmt: skip
    if not any(_has(policy, *c.needs) for c in columns):
        return
    doc.heading(3, "Training and cost")
    doc.para("Means over seeds (peak MB: the largest); the budget is the labelled comparisons an offline objective "
             "saw (steps x global batch, halved for an unpaired one such as KTO) or the reward queries of an online "
             "one (completions scored); pref. accuracy is the training run's held-out preference accuracy.")
    _emit_tables(doc, "algorithm", _groups(policy, order), columns)


def example_prompts(samples: Samples, algos: list[str]) -> tuple[list[int], dict[str, int], bool]:
    """The EXAMPLES prompts whose gold scores spread most over the reference's and the algorithms' replies.

    Each algorithm's replies are its seed-0 ones (its smallest seed with samples otherwise). Ties, and prompts
    without gold scores, go by the lowest index. Returns the indices, algorithm -> seed shown, and whether the
    spread decided (False: no gold scores, the first prompts).
    """
    seeds: dict[str, int] = {}
    for algo in algos:
        available = sorted(s for a, s in samples.cells if a == algo)
        if available:
            seeds[algo] = 0 if 0 in available else available[0]
    if not samples.reference or not seeds:
        return [], seeds, False
    spread = {}
    for i, ref in samples.reference.items():
        golds = [_num(ref.get("gold"))] + [_num(samples.cells[(a, s)].get(i, {}).get("gold")) for a, s in seeds.items()]
        golds = [g for g in golds if np.isfinite(g)]
        spread[i] = max(golds) - min(golds) if len(golds) >= 2 else NAN
    by_gold = any(np.isfinite(v) for v in spread.values())
    ranked = sorted(spread, key=lambda i: (not np.isfinite(spread[i]), -spread[i] if np.isfinite(spread[i]) else 0, i))
    return ranked[:EXAMPLES], seeds, by_gold


def _examples_section(doc: Doc, samples: Samples, order: list[str]) -> None:
    chosen, seeds, by_gold = example_prompts(samples, order)
    if not chosen:
        return
    doc.heading(3, "Example replies")
    how = (f"the {len(chosen)} prompts (of {len(samples.reference)}) on which the gold scores of these replies "
           "spread most (ties: the lowest index)" if by_gold else f"the first {len(chosen)} prompts")
    others = sorted(f"{a} (seed {s})" for a, s in seeds.items() if s != 0)
    doc.para(f"Replies to {how}: the reference's and each algorithm's seed-0 reply"
             + (f" ({', '.join(others)} where seed 0 has no samples)" if others else "")
             + f", cut to {REPLY_CHARS} characters, with the reply's gold score.")

    def cell(record: dict | None) -> str:
        if record is None:
            return DASH
        gold = _num(record.get("gold"))
        return _clip(record.get("reply", "")) + (f" (gold {_fmt(gold, 2)})" if np.isfinite(gold) else "")

    headers = ["model"] + [f"prompt {i}" for i in chosen]
    body = [["prompt"] + [_clip(samples.reference[i].get("prompt", "")) for i in chosen],
            ["reference"] + [cell(samples.reference.get(i)) for i in chosen]]
    for algo in order:
        if algo in seeds:
            body.append([algo] + [cell(samples.cells[(algo, seeds[algo])].get(i)) for i in chosen])
    doc.table(headers, body)


# ----------------------------------------------------------------------------------------------------------------
# Plots


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise PrefoptError("the report needs matplotlib: pip install 'prefopt[bench]'") from None
    return Figure


def _new_fig(size=(6.4, 4.0), panels: tuple[int, int] = (1, 1)):
    Figure = _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    axes = [fig.add_subplot(panels[0], panels[1], k + 1) for k in range(panels[0] * panels[1])]
    return fig, axes[0] if len(axes) == 1 else axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # legends outside the axes stay in the image
    return buf.getvalue()


def plot_styles(names: list[str]) -> dict[str, tuple[tuple, str]]:
    """Name -> (colour, marker): tab10 colours up to 10 names, tab20 beyond, with a cycle of 7 markers.

    Distinct (colour, marker) pairs for up to 70 names (10 x 7) or 140 (20 x 7).
    """
    from matplotlib import colormaps

    k = 10 if len(names) <= 10 else 20
    cmap = colormaps[f"tab{k}"]
    return {name: (tuple(cmap(i % k)), MARKERS[i % len(MARKERS)]) for i, name in enumerate(names)}


def _legend_outside(ax, n: int) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1 if n <= 16 else 2, frameon=False)


def _bar_height(n_bars: int) -> float:
    return max(3.0, 0.28 * n_bars + 1.4)


def _plot_frontier(policy: pd.DataFrame, sanity: pd.DataFrame, order: list[str], styles: dict,
                   task: str) -> tuple[bytes, str] | None:  # fmt: skip
    if not _has(policy, "kl_k3"):
        return None
    if _has(policy, "gold_reward", "gold_reward_ref"):
        def y_of(r):
            return r["gold_reward"] - r["gold_reward_ref"]
        ylabel, ref_y = "gold reward − reference gold reward", 0.0
        what = "Gold-reward gain over the reference"
    elif _has(policy, "win_rate_gold"):
        def y_of(r):
            return r["win_rate_gold"]
        ylabel, ref_y = "gold win rate vs reference", 0.5
        what = "Gold win rate against the reference"
    else:
        return None
    fig, ax = _new_fig((7.5, 4.5))
    ax.scatter([0.0], [ref_y], marker="*", s=180, color="black", zorder=3, label="reference")
    plotted = False
    for a in order:
        r = policy[policy["algo"] == a]
        x, y = r["kl_k3"].to_numpy(float), y_of(r).to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        plotted = True
        color, marker = styles[a]
        ax.scatter(x[ok], y[ok], s=16, alpha=0.4, color=color, marker=marker)
        ax.scatter([x[ok].mean()], [y[ok].mean()], s=70, color=color, marker=marker, edgecolor="black",
                   linewidth=0.6, zorder=3, label=a)
    if not plotted:
        return None
    ceiling = ""
    for a in _sanity_order(sanity) if len(sanity) else []:
        if not a.startswith(f"{SANITY_PREFIX}best-of-") or not _has(sanity[sanity["algo"] == a], "kl_bound"):
            continue
        r = sanity[sanity["algo"] == a]
        y = _mean(y_of(r)) if all(c in r.columns for c in ("gold_reward", "gold_reward_ref", "win_rate_gold")) else NAN
        if np.isfinite(y):
            ax.scatter([_mean(r["kl_bound"])], [y], marker="P", s=110, color="dimgray", edgecolor="black", zorder=3,
                       label=f"{a} (KL bound)")
            ceiling = " The grey cross is the best-of-n sanity row at its analytic KL bound (a ceiling)."
    ax.axhline(ref_y, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("KL(policy ‖ reference), k3 estimator [nats / sequence]")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: reward vs KL frontier", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(order) + 2)
    caption = (f"{what} against KL(policy ‖ reference) (k3) on {task}: small marks are seeds, large marks "
               f"algorithm means, the star is the reference.{ceiling}")
    return _png(fig), caption


def _err(values) -> tuple[float, float, float]:
    mean, low, high, n = mean_ci(values)
    if n < 2:
        return mean, 0.0, 0.0
    return mean, mean - low, high - mean


def _series_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _hbars(ax, policy: pd.DataFrame, order: list[str], series: list[tuple[str, str]]) -> list:
    """Horizontal bars, one group per algorithm (top = first), one bar per series: mean over seeds and 95% CI."""
    colors = _series_colors(len(series))
    height = 0.8 / len(series)
    for k, ((col, label), color) in enumerate(zip(series, colors)):
        stats = [_err(policy.loc[policy["algo"] == a, col]) for a in order]
        ys = [i - 0.4 + height * (k + 0.5) for i in range(len(order))]
        widths = [s[0] if np.isfinite(s[0]) else 0.0 for s in stats]
        xerr = [[s[1] for s in stats], [s[2] for s in stats]]
        ax.barh(ys, widths, height=height * 0.95, xerr=xerr, capsize=2, color=color, label=label)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order, fontsize=8)
    ax.set_ylim(len(order) - 0.5, -0.5)  # the first algorithm on top
    return colors


def _plot_winrates(policy: pd.DataFrame, order: list[str], task: str, judge: JudgeState):
    series = [(c, label) for c, label in (("win_rate_gold", "gold"), ("win_rate_judge", "judge"))
              if _has(policy, c) and (c != "win_rate_judge" or judge.show)]
    if not series:
        return None
    fig, ax = _new_fig((7.0, _bar_height(len(order) * len(series))))
    _hbars(ax, policy, order, series)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label="reference (0.5)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate vs reference")
    ax.set_title(f"{task}: win rates with 95% CI over seeds", fontsize=10)
    _legend_outside(ax, len(series) + 1)
    ax.grid(axis="x", alpha=0.3)
    judged = " and ".join({"gold": "gold rule", "judge": "AI judge"}[label] for _, label in series)
    caption = (f"Win rate against the reference on {task} ({judged}), with 95% t-intervals over seeds; "
               "the dashed line at 0.5 is parity.")
    return _png(fig), caption


def _plot_sycophancy(policy: pd.DataFrame, rows: pd.DataFrame, order: list[str], task: str):
    series = [(f"{SYCOPHANCY_PREFIX}{b}_rate", b) for b in syc_behaviours(rows.columns)
              if _has(policy, f"{SYCOPHANCY_PREFIX}{b}_rate")]
    if not series:
        return None
    fig, ax = _new_fig((7.0, _bar_height(len(order) * len(series))))
    for (col, label), color in zip(series, _hbars(ax, policy, order, series)):
        if _has(rows, reference_column(col)):
            ax.axvline(_mean(rows[reference_column(col)]), color=color, linestyle="--", linewidth=1.2,
                       label=f"reference {label}")
    ax.set_xlabel("sycophancy rate (lower = less sycophantic)")
    ax.set_title(f"{task}: sycophancy", fontsize=10)
    _legend_outside(ax, 2 * len(series))
    ax.grid(axis="x", alpha=0.3)
    caption = (f"Sycophancy rates on {task} per behaviour and algorithm (95% CI over seeds); dashed lines are the "
               "reference's rates.")
    return _png(fig), caption


def _plot_length(policy: pd.DataFrame, rows: pd.DataFrame, order: list[str], styles: dict, task: str):
    if not _has(policy, "length"):
        return None
    fig, ax = _new_fig((7.0, _bar_height(len(order))))
    stats = [_err(policy.loc[policy["algo"] == a, "length"]) for a in order]
    widths = [s[0] if np.isfinite(s[0]) else 0.0 for s in stats]
    ax.barh(range(len(order)), widths, height=0.6, xerr=[[s[1] for s in stats], [s[2] for s in stats]], capsize=2,
            color=[styles[a][0] for a in order])
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order, fontsize=8)
    ax.set_ylim(len(order) - 0.5, -0.5)
    if _has(rows, "length_ref"):
        ax.axvline(_mean(rows["length_ref"]), color="black", linestyle="--", linewidth=1, label="reference")
        _legend_outside(ax, 1)
    ax.set_xlabel("mean response length [tokens]")
    ax.set_title(f"{task}: response length", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    caption = f"Mean response length in tokens on {task} per algorithm; the dashed line is the reference's length."
    return _png(fig), caption


def _plot_curves(curves: dict[str, list[list[dict]]], order: list[str], styles: dict, task: str):
    metrics = [(k, label) for k, label in CURVE_METRICS
               if any(len(_curve_mean(curves[a], k)) for a in curves)]  # fmt: skip
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = _new_fig((4.2 * ncols, 3.0 * nrows), (nrows, ncols))
    axes = list(np.atleast_1d(axes))
    handles = {}
    for ax, (key, label) in zip(axes, metrics):
        for algo in order:
            if algo not in curves:
                continue
            mean = _curve_mean(curves[algo], key)
            if not mean:
                continue
            color, marker = styles[algo]
            (line,) = ax.plot(list(mean), list(mean.values()), color=color, marker=marker, markersize=4,
                              markevery=max(1, len(mean) // 8), linewidth=1.2, label=algo)
            handles.setdefault(algo, line)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    labels = [a for a in order if a in handles]
    fig.legend([handles[a] for a in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7,
               ncol=min(5, len(labels)), frameon=False)
    fig.suptitle(f"{task}: training curves (mean over seeds)", fontsize=10)
    caption = (f"Training curves on {task} from each run's metrics (curves/): "
               + ", ".join(label for _, label in metrics) + " against the training step, the mean over seeds, one "
               "line per algorithm (offline runs log the loss and margins; online runs the reward they are trained "
               "on, the gold reward of their rollouts and the rollouts' KL to the reference).")
    return _png(fig), caption


def _ref_scale(rows: pd.DataFrame, value: str, ref: str, gain: str) -> tuple[float, float]:
    """The reference's (mean, sd) behind a standardised gain: gain = (value − ref) / sd, so sd = (value − ref) / gain."""
    if not _has(rows, value, ref, gain):
        return NAN, NAN
    with np.errstate(all="ignore"):
        sd = ((rows[value] - rows[ref]) / rows[gain]).to_numpy(float)
    sd = sd[np.isfinite(sd) & (sd > 0)]
    return (_mean(rows[ref]), float(np.median(sd))) if sd.size else (NAN, NAN)


def _plot_hacking(policy: pd.DataFrame, order: list[str], styles: dict, hack: dict | None,
                  curves: dict[str, list[list[dict]]], samples: Samples, task: str):  # fmt: skip
    bon = _best_of_n(hack)
    proxied = policy[policy["proxy"].astype(str).str.strip().ne("")] if "proxy" in policy.columns else policy.iloc[:0]
    points = proxied if _has(proxied, "kl_k1") and (_has(proxied, "proxy_gain_z") or _has(proxied, "gold_gain_z")) \
        else proxied.iloc[:0]
    online, raw = {}, {}
    ref_gold = [_num(r.get("gold")) for r in samples.reference.values()]
    ref_gold = np.asarray([g for g in ref_gold if np.isfinite(g)])
    for algo in [a for a in order if a in set(proxied["algo"]) and a in curves]:
        kl, reward, gold = (_curve_mean(curves[algo], k) for k in ("kl", "reward", "gold"))
        steps = [s for s in kl if s in reward or s in gold]
        if not steps:
            continue
        rows = proxied[proxied["algo"] == algo]
        p_mean, p_sd = _ref_scale(rows, "proxy_reward", "proxy_reward_ref", "proxy_gain_z")
        g_mean, g_sd = _ref_scale(rows, "gold_reward", "gold_reward_ref", "gold_gain_z")
        if not np.isfinite(g_sd) and ref_gold.size > 1 and ref_gold.std(ddof=1) > 0:
            g_mean, g_sd = float(ref_gold.mean()), float(ref_gold.std(ddof=1))
        x = [math.sqrt(max(kl[s], 0.0)) for s in steps]
        series = {"proxy": [reward.get(s, NAN) for s in steps], "gold": [gold.get(s, NAN) for s in steps]}
        if np.isfinite(p_sd) and np.isfinite(g_sd):
            online[algo] = (x, [(v - p_mean) / p_sd for v in series["proxy"]],
                            [(v - g_mean) / g_sd for v in series["gold"]])
        else:
            raw[algo] = (x, series["proxy"], series["gold"])
    if not (bon or len(points) or online or raw):
        return None
    panels = 3 if raw else 2
    fig, axes = _new_fig((4.2 * panels + 1.5, 3.8), (1, panels))
    for ax, key, label in ((axes[0], "proxy", "proxy gain (z)"), (axes[1], "gold", "gold gain (z)")):
        if bon:
            x = [math.sqrt(max(_num(p["kl"]), 0.0)) for p in bon]
            y = [_num(p.get(key)) for p in bon]
            lo = [_num(p.get(f"{key}_low")) for p in bon]
            hi = [_num(p.get(f"{key}_high")) for p in bon]
            ax.plot(x, y, color="black", marker="*", linewidth=1.5, label="best-of-n")
            if all(np.isfinite(lo)) and all(np.isfinite(hi)):
                ax.fill_between(x, lo, hi, color="black", alpha=0.12)
        for algo, (x, yp, yg) in online.items():
            color, marker = styles[algo]
            ax.plot(x, yp if key == "proxy" else yg, color=color, linewidth=1.0, alpha=0.8,
                    label=f"{algo} (training)")
        col = f"{key}_gain_z"
        if col in points.columns:
            for algo in [a for a in order if a in set(points["algo"])]:
                r = points[points["algo"] == algo]
                x = np.sqrt(np.clip(r["kl_k1"].to_numpy(float), 0.0, None))
                y = r[col].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                if ok.any():
                    color, marker = styles[algo]
                    ax.scatter(x[ok], y[ok], color=color, marker=marker, s=40, edgecolor="black", linewidth=0.5,
                               zorder=3, label=f"{algo} (end)")
        ax.axhline(0.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("√KL [√nats]", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if raw:
        ax = axes[2]
        for algo, (x, yp, yg) in raw.items():
            color, marker = styles[algo]
            ax.plot(x, yp, color=color, linewidth=1.0, label=f"{algo} proxy (raw)")
            ax.plot(x, yg, color=color, linewidth=1.0, linestyle="--", label=f"{algo} gold (raw)")
        ax.set_xlabel("√KL [√nats]", fontsize=8)
        ax.set_title("online runs, raw rewards", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7,
               ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(f"{task}: reward hacking (proxy {hack['proxy']})" if hack and isinstance(hack.get("proxy"), str)
                 else f"{task}: reward hacking", fontsize=10)  # fmt: skip
    caption = (f"Proxy and gold gains over the reference on {task}, in reference standard deviations, against "
               "√KL(policy ‖ reference): the best-of-n curve (KL = log n − (n − 1)/n, band: 95% interval), "
               "proxy-trained policies' end points (k1 KL, one mark per seed) and online runs' training curves "
               "(rollouts' KL; rewards standardised with the reference's mean and sd from the results rows, though "
               "the rollouts are on training prompts). A proxy curve rising while gold falls is reward hacking.")
    if raw:
        caption += (" Online runs whose rewards could not be standardised (no reference scale in their rows) are "
                    "plotted raw in the third panel (proxy solid, gold dashed).")
    return _png(fig), caption


# ----------------------------------------------------------------------------------------------------------------
# The report


def _unique(df: pd.DataFrame, col: str) -> list[str]:
    if col not in df.columns:
        return []
    return list(dict.fromkeys(v for v in df[col].astype(str) if v.strip()))


def _overview(doc: Doc, df: pd.DataFrame, caps: list[str]) -> None:
    tasks = _unique(df, "task")
    algos = sorted(a for a in _unique(df, "algo") if not _is_sanity(a))
    seeds = sorted({float(s) for s in df["seed"] if np.isfinite(s)})
    kinds = df["output_kind"].value_counts()
    n_policy, n_rm, n_sanity = (int(kinds.get(k, 0)) for k in ("policy", "reward_model", "sanity"))
    text = (f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} ({_join(tasks)}), {len(algos)} algorithm"
            f"{'s' if len(algos) != 1 else ''} ({_join(algos)}), seeds {_join(_seed_str(s) for s in seeds)}: "
            f"{len(df)} cells ({n_policy} policy, {n_rm} reward model"
            + (f", {n_sanity} sanity" if n_sanity else "") + ").")
    seconds = [c for c in ("train_seconds", "eval_seconds") if c in df.columns]
    if seconds:
        total = float(np.nansum(df[seconds].to_numpy(float)))
        text += f" Total wall time {total / 60:.1f} min (training + evaluation, summed over cells)."
    if df.attrs.get("duplicates"):
        text += f" {df.attrs['duplicates']} repeated cell row(s) ignored (the last one kept)."
    prov = []
    for col in PROVENANCE:
        vals = _unique(df, col)
        if vals:
            prov.append(f"{col} {', '.join(vals)}" if col != "git" or len(vals) == 1
                        else f"git {', '.join(vals)} (rows disagree)")
    if prov:
        text += " Provenance: " + "; ".join(prov) + "."
    judges = _unique(df, "judge")
    if judges:
        text += f" AI judge: {', '.join(judges)}."
    proxies = _unique(df, "proxy")
    if proxies:
        text += f" Proxy reward (for hacking gap): {', '.join(proxies)}."
    doc.para(text)

    legend = ("How to read the tables: win rates are policy vs reference sample on held-out prompts (ties count "
              "half); [low, high] is a 95% Student-t interval over seeds, except a gold win rate marked ‡: a 95% "
              "percentile interval of a crossed bootstrap over seeds and prompts from the per-prompt files (it "
              "counts the prompts as a sample too, which the t-interval over seeds leaves out); the LC win rate (length-controlled, "
              "AlpacaEval 2 LC), when the per-prompt samples files are there, comes from one joint logistic fit "
              "per task over every algorithm's per-prompt decisions (an algorithm's seeds pooled), the win rate at equal length, with a 95% bootstrap interval "
              "over prompts; Δ gold reward is the policy's mean gold score minus the reference's; KL is "
              "KL(policy ‖ reference) per sequence with the k3 estimator, ± the 95% CI half-width over seeds (or "
              "the per-run SE, marked SE, with one seed); lengths are mean response tokens.")
    if caps:
        legend += f" Δ capability ({', '.join(caps)}) is policy − reference accuracy on the same items."
    legend += " Other cells are means over seeds; – means not measured."
    doc.para(legend)


@dataclass
class _Context:
    folder: Path
    plots_dir: Path
    caps: list[str]
    written: dict[str, Path] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)


def _figure(doc: Doc, ctx: _Context, kind: str, slug: str, made) -> None:
    if made is None:
        return
    png, caption = made
    name = f"{kind}_{slug}"
    path = ctx.plots_dir / f"{name}.png"
    atomic_write_bytes(path, png)
    ctx.written[name] = path
    doc.figure(name, f"plots/{name}.png", png, caption)


def _task_section(doc: Doc, df: pd.DataFrame, task: str, heading: bool, ctx: _Context) -> None:
    rows = df[df["task"] == task]
    policy = rows[rows["output_kind"] == "policy"]
    sanity = rows[rows["output_kind"] == "sanity"]
    if heading:
        doc.heading(2, f"Task: {task}")
    if policy.empty and sanity.empty:
        doc.para("No policy rows for this task.")
        return
    slug = _slug(task)
    while slug in ctx.names:
        slug += "_"
    ctx.names.add(slug)

    order = _algo_order(policy) if len(policy) else []
    styles = plot_styles(order)
    samples = _load_samples(ctx.folder, task, rows)
    judge = judge_state(rows)
    lc_gold = _lc(samples, "gold")
    lc_judge = _lc(samples, "judge") if judge.show else {}

    if order:
        _matched_kl_section(doc, ctx, policy, samples, task, slug)
        doc.heading(3, "Gold rule")
        _emit_tables(doc, "algorithm", _groups(policy, order), _gold_columns(lc_gold, samples))
        ref = _reference_line(rows)
        if ref:
            doc.para(ref)
        doc.para(_noise_line(policy, order, samples))
    else:
        doc.para("No policy rows for this task.")
    if len(sanity):
        _sanity_section(doc, sanity, samples, lc_gold, lc_judge, judge)
    if order:
        _figure(doc, ctx, "frontier", slug, _plot_frontier(policy, sanity, order, styles, task))
        _figure(doc, ctx, "winrates", slug, _plot_winrates(policy, order, task, judge))
        _figure(doc, ctx, "length", slug, _plot_length(policy, rows, order, styles, task))
        _judge_section(doc, rows, policy, order, judge, lc_judge)
        _sycophancy_section(doc, rows, policy, order)
        _figure(doc, ctx, "sycophancy", slug, _plot_sycophancy(policy, rows, order, task))
        _capability_section(doc, rows, policy, order, ctx.caps)
    hack = _read_json(hacking_path(ctx.folder, task))
    curves = _load_curves(ctx.folder, task, policy, order) if order else {}
    if order and _hacking_section(doc, policy, order, hack):
        _figure(doc, ctx, "hacking", slug, _plot_hacking(policy, order, styles, hack, curves, samples, task))
    if order:
        _cost_section(doc, policy, order)
        _figure(doc, ctx, "curves", slug, _plot_curves(curves, order, styles, task))
        _examples_section(doc, samples, order)


def _matched_kl_section(doc: Doc, ctx: _Context, policy: pd.DataFrame, samples: Samples, task: str,
                        slug: str) -> None:  # fmt: skip
    """The headline when the suite swept strengths: arms compared at common KL budgets (see .matched_kl)."""
    from prefopt.bench import matched_kl as mk

    result = mk.analyse(policy, samples.cells, samples.reference) if samples.reference else None
    if result is None or not any(len(a.entries) > 1 for a in result.arms):
        return
    c = result.comparison
    refs = sorted({1 + len(r.get("more") or []) for r in samples.reference.values()})
    doc.heading(3, "Matched-KL comparison (the headline)")
    doc.para(
        f"Each arm is one algorithm at several strengths. A point is one strength: its mean KL(policy ‖ reference) "
        f"(k3, nats per sequence) and mean gold win rate against the reference over the held-out prompts, where "
        f"each policy reply is scored against {'/'.join(map(str, refs))} reference replies to its prompt (ties "
        f"count half). An arm's frontier joins its points, per seed, and the reference itself at (0, 0.5); arms are "
        f"compared where every arm's every seed reaches the same KL. {len(result.seeds)} seeds "
        f"({', '.join(map(str, result.seeds))}) x {result.prompts} prompts, the same for every arm. Intervals are 95% "
        f"percentile intervals of a crossed bootstrap over seeds and prompts ({mk.REPLICATES} replicates, the same "
        f"draws for every arm, so comparisons are paired); p-values are bootstrap p-values, Holm-corrected over "
        f"the pairs at each budget.")  # fmt: skip
    if result.dropped:
        doc.para(f"Left out (not every entry has them): {', '.join(result.dropped)}.")
    doc.table(["arm", "strength", "tuned", "KL [95% CI]", "gold win rate [95% CI]", "p (vs 0.5)", "trained on"],
              mk.point_rows(result))  # fmt: skip
    if c is None:
        doc.para("The arms' KL ranges do not overlap, so they cannot be compared at a common KL.")
    else:
        if result.from_anchor:
            doc.para(("b", "The arms were not measured at a common KL. "),
                     f"Their measured KL ranges do not overlap ({mk.ranges_text(result)}), so the budgets below lie "
                     "between the reference and some arm's lowest-KL point: there each frontier is the straight line "
                     "from the reference to that point, an assumption, and the comparison is one of slopes. Sweep "
                     "strengths (or learning rates) that reach a shared KL range to compare measured frontiers.")  # fmt: skip
        headers = ["arm"] + [f"win rate at KL {b:g} [95% CI]" for b in c.budgets] + [
            f"rank at KL {b:g} (95% interval)" for b in c.budgets]  # fmt: skip
        rows = []
        for a, name in enumerate(c.names):
            rows.append([name] + [mk._interval(c.value[j, a], c.low[j, a], c.high[j, a]) for j in range(len(c.budgets))]
                        + [mk._rank(c.rank[j, a], c.rank_low[j, a], c.rank_high[j, a]) for j in range(len(c.budgets))])
        doc.table(headers, rows)
        doc.table(["KL budget", "A − B", "difference [95% CI]", "p", "p (Holm)", "verdict"], _pair_rows(c.pairs))
        if result.measured_pairs:
            doc.para("Pairs whose own measured KL ranges overlap, compared inside that overlap (Holm's correction "
                     "over all of these tests together):")  # fmt: skip
            doc.table(["KL budget", "A − B", "difference [95% CI]", "p", "p (Holm)", "verdict"],
                      _pair_rows(result.measured_pairs))
        n_pairs = max(1, len(c.names) * (len(c.names) - 1) // 2)
        doc.para(
            f"What this study can detect (80% power, two-sided α = {c.alpha:g}): a difference of {c.mde:.3f} in gold "
            f"win rate between two arms at one budget, {c.mde_holm:.3f} after Holm's correction over the {n_pairs} "
            f"pairs (from the median bootstrap SE of a pairwise difference, {c.se_diff:.3f}); a departure of "
            f"{mk.parity_mde(result):.3f} from parity (0.5) for one point. \"Cannot tell apart\" means a smaller "
            f"difference may exist."
            + (" With one seed all of this covers the prompts only: seed-to-seed variation of training is not "
               "measured." if len(result.seeds) < 2 else ""))  # fmt: skip
    for line in mk.published_lines(result):
        doc.para(("b", "Published finding. "), line)
    _figure(doc, ctx, "matched_kl", slug, _plot_matched_kl(result, task))


def _pair_rows(pairs: list[dict]) -> list[list[str]]:
    from prefopt.bench import matched_kl as mk

    return [[f"{p['budget']:g}", f"{p['a']} − {p['b']}", mk._interval(p["diff"], p["low"], p["high"], True),
             mk._p(p["p"]), mk._p(p["p_holm"]), mk.verdict(p)] for p in pairs]  # fmt: skip


def _plot_matched_kl(result, task: str) -> tuple[bytes, str] | None:
    """Each arm's frontier (seed-mean points joined in strength order) and the common budgets."""
    fig, ax = _new_fig((7.5, 4.5))
    styles = plot_styles([a.name for a in result.arms])
    ax.scatter([0.0], [0.5], marker="*", s=180, color="black", zorder=3, label="reference")
    for a in result.arms:
        x = a.arm.kl.mean(axis=(1, 2))  # (K,)
        y = a.arm.score.mean(axis=(1, 2))  # (K,)
        seeds_x, seeds_y = a.arm.kl.mean(axis=2), a.arm.score.mean(axis=2)  # (K, S)
        color, marker = styles[a.name]
        order = np.argsort(x)
        ax.plot(np.r_[0.0, x[order]], np.r_[0.5, y[order]], color=color, linewidth=1.2)
        ax.scatter(seeds_x.ravel(), seeds_y.ravel(), s=14, alpha=0.35, color=color, marker=marker)
        ax.scatter(x, y, s=60, color=color, marker=marker, edgecolor="black", linewidth=0.6, zorder=3, label=a.name)
    if result.comparison is not None:
        for b in result.comparison.budgets:
            ax.axvline(b, color="grey", linewidth=0.6, linestyle="--")
    ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("KL(policy ‖ reference), k3 estimator [nats / sequence]")
    ax.set_ylabel("gold win rate vs reference")
    ax.set_title(f"{task}: gold win rate vs KL, one line per arm", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(result.arms) + 1)
    caption = (f"Each arm's frontier on {task}: large marks are its strengths (means over seeds), small marks "
               "single seeds, the star the reference; dashed lines are the KL budgets of the matched-KL tables.")
    return _png(fig), caption


def _reward_model_section(doc: Doc, df: pd.DataFrame) -> None:
    rm = df[df["output_kind"] == "reward_model"]
    if rm.empty:
        return
    doc.heading(2, "Reward models")
    headers = ["task", "algorithm", "n seeds", "held-out preference accuracy [95% CI]"]
    extra = [(c, h, d) for c, h, d in (("seconds_per_step", "s/step", 2), ("peak_rss_mb", "peak MB", 0))
             if _has(rm, c)]
    headers += [h for _, h, _ in extra]
    table = []
    for task in _unique(rm, "task"):
        sub = rm[rm["task"] == task]
        for a in sorted(sub["algo"].unique()):
            r = sub[sub["algo"] == a]
            acc = _fmt_ci(r["pref_accuracy"]) if "pref_accuracy" in r.columns else DASH
            cells = [task, a, str(len(r)), acc]
            for c, _, d in extra:
                cells.append(_fmt(np.nanmax(r[c].to_numpy(float)) if c == "peak_rss_mb" and _has(r, c)
                                  else _mean(r[c]), d))
            table.append(cells)
    doc.table(headers, table)


def render(source: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png for a results folder (or its results CSV).

    The samples/, curves/ and hacking/ files beside the CSV are read when present. Returns {"md": path,
    "html": path, "<plot name>": path, ...}; plot names are <kind>_<task>.
    """
    _require_matplotlib()
    df = load_results(source)
    csv = Path(df.attrs["path"])
    out = Path(out_dir) if out_dir is not None else csv.parent
    ctx = _Context(folder=csv.parent, plots_dir=out / "plots", caps=capability_names(df.columns))

    suites = _unique(df, "suite") or ["benchmark"]
    versions = _unique(df, "suite_version")
    title = f"{', '.join(suites)} benchmark report" + (f" (version {', '.join(versions)})" if versions else "")
    doc = Doc()
    doc.heading(1, title)
    _overview(doc, df, ctx.caps)

    tasks = _unique(df, "task")
    for task in tasks:
        if len(tasks) == 1:
            doc.heading(2, f"Results: {task}")
        _task_section(doc, df, task, len(tasks) > 1, ctx)
    _reward_model_section(doc, df)

    doc.heading(2, "How to reproduce")
    commands = _unique(df, "command")
    segs: list = []
    if commands:
        segs += ["Run ", ("code", commands[0]), " (the command recorded in the CSV"
                 + (f"; {len(commands)} distinct commands across rows" if len(commands) > 1 else "") + "). "]
    segs += [("code", f"prefopt report {csv.parent}"),
             (f" re-renders this report from {csv.name} and the samples/, curves/ and hacking/ files beside it: "
              f"every number in the tables comes from {csv.name} and the per-prompt samples files (the LC win rates "
              "and the example replies), the best-of-n table from hacking/<task>.json; the training curves are "
              "drawn from curves/.")]
    doc.para(*segs)

    # Plots this render did not produce but an earlier one did would be stale: remove them.
    if ctx.plots_dir.is_dir():
        for p in ctx.plots_dir.glob("*.png"):
            if p.name.startswith(PLOT_PREFIXES) and p.stem not in ctx.written:
                remove_inside(ctx.plots_dir, p)

    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, to_markdown(doc))
    atomic_write_text(html_path, to_html(doc, title))
    return {"md": md_path, "html": html_path, **ctx.written}


__all__ = ["example_prompts", "judge_state", "lc_rows", "load_results", "plot_styles", "render", "syc_behaviours"]
