"""Render a benchmark suite's `results.csv` into `report.md`, a self-contained `report.html` and `plots/*.png`.

The CSV alone is the input: one row per cell (task x algorithm x seed). Optional metric columns that are
absent (or empty for a task) are left out of the report. Every file is written atomically.

    from prefopt.bench.report import render
    render("results/zoo")          # -> {"md": ..., "html": ..., "frontier_<task>": ..., ...}
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefopt.bench.document import Doc, to_html, to_markdown
from prefopt.bench.paths import remove_inside
from prefopt.bench.results import IDENTITY, OUTPUT_KINDS, PROVENANCE, RESULTS, ROW_KEY, capability_names, is_numeric
from prefopt.errors import PrefoptError
from prefopt.evaluation.stats import mean_ci
from prefopt.io import atomic_write_text

PLOT_PREFIXES = ("frontier_", "winrates_", "sycophancy_", "length_")
DASH = "–"
NAN = float("nan")


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


# ----------------------------------------------------------------------------------------------------------------
# Per-task summaries


def _algo_order(policy: pd.DataFrame) -> list[str]:
    """Algorithms sorted by mean gold win rate, descending; missing ones last, then by name."""
    algos = sorted(policy["algo"].unique())
    if "win_rate_gold" not in policy.columns:
        return algos
    means = {a: _mean(policy.loc[policy["algo"] == a, "win_rate_gold"]) for a in algos}
    return sorted(algos, key=lambda a: (not np.isfinite(means[a]), -means[a] if np.isfinite(means[a]) else 0, a))


def _cap_delta(rows: pd.DataFrame, caps: list[str]) -> np.ndarray:
    """Per row: mean over capability pairs of policy − reference accuracy."""
    if not caps:
        return np.full(len(rows), NAN)
    diffs = np.stack([rows[f"cap_{c}"].to_numpy(float) - rows[f"cap_ref_{c}"].to_numpy(float) for c in caps], axis=1)
    with np.errstate(all="ignore"):
        ok = np.isfinite(diffs)
        count = ok.sum(axis=1)
        total = np.where(ok, diffs, 0.0).sum(axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), NAN)


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


@dataclass
class Column:
    header: str
    needs: tuple[str, ...]
    cell: Callable[[pd.DataFrame], str]


def _headline_columns(policy: pd.DataFrame, caps: list[str]) -> list[Column]:
    cols = [
        Column("gold win rate [95% CI]", ("win_rate_gold",), lambda r: _fmt_ci(r["win_rate_gold"])),
        Column("LC win rate", ("lc_win_rate_gold",), lambda r: _fmt(_mean(r["lc_win_rate_gold"]))),
        Column("judge win rate [95% CI]", ("win_rate_judge",), lambda r: _fmt_ci(r["win_rate_judge"])),
        Column("judge agreement", ("judge_agreement",), lambda r: _fmt(_mean(r["judge_agreement"]))),
        Column("Δ gold reward", ("gold_reward", "gold_reward_ref"),
               lambda r: _fmt(_mean(r["gold_reward"] - r["gold_reward_ref"]), signed=True)),
        Column("KL k3 (nats)", ("kl_k3",), _kl_cell),
        Column("length (policy / ref)", ("length",), _length_cell),
        Column("MWE matching", ("mwe_matching_rate",), lambda r: _fmt(_mean(r["mwe_matching_rate"]))),
        Column("answer-syc. drop", ("syc_answer_drop",), lambda r: _fmt(_mean(r["syc_answer_drop"]))),
        Column("flip rate", ("syc_flip_rate",), lambda r: _fmt(_mean(r["syc_flip_rate"]))),
    ]
    if _has(policy, "proxy"):
        cols.append(Column("hacking gap", ("hacking_gap",), lambda r: _fmt(_mean(r["hacking_gap"]), signed=True)))
    if caps:
        cols.append(Column("Δ capability", (), lambda r: _fmt(_mean(_cap_delta(r, caps)), signed=True)))
    cols += [
        Column("s/step", ("seconds_per_step",), lambda r: _fmt(_mean(r["seconds_per_step"]), 2)),
        Column("peak MB", ("peak_rss_mb",), lambda r: _fmt(np.nanmax(r["peak_rss_mb"].to_numpy(float))
                                                          if _has(r, "peak_rss_mb") else NAN, 0)),
    ]
    keep = []
    for c in cols:
        if c.header == "Δ capability":
            if np.isfinite(_cap_delta(policy, caps)).any():
                keep.append(c)
        elif _has(policy, *c.needs):
            keep.append(c)
    return keep


def _noise_line(policy: pd.DataFrame, order: list[str]) -> str:
    if not _has(policy, "win_rate_gold"):
        return "Noise: no gold win rate in these rows, so no check against the reference."
    inside, above, below, few, cis = [], [], [], [], {}
    for a in order:
        mean, low, high, n = mean_ci(policy.loc[policy["algo"] == a, "win_rate_gold"])
        if n == 0:
            continue
        cis[a] = (mean, low, high, n)
        if n < 2:
            few.append(a)
        elif low <= 0.5 <= high:
            inside.append(a)
        elif low > 0.5:
            above.append(a)
        else:
            below.append(a)
    parts = ["Noise (gold win rate, 95% t-interval over seeds):"]
    if inside:
        parts.append(f"CI contains 0.5 (not distinguishable from the reference): {_join(inside)}.")
    if above:
        parts.append(f"CI entirely above 0.5 (better than the reference): {_join(above)}.")
    if below:
        parts.append(f"CI entirely below 0.5 (worse than the reference): {_join(below)}.")
    if few:
        parts.append(f"Fewer than 2 seeds, no CI: {_join(few)}.")
    ranked = [a for a in order if a in cis]
    if len(ranked) >= 2:
        best, second = ranked[0], ranked[1]
        b, s = cis[best], cis[second]
        names = f"best ({best}, {_fmt(b[0])}) and second best ({second}, {_fmt(s[0])})"
        if b[3] < 2 or s[3] < 2:
            parts.append(f"The {names} cannot be compared: a CI is missing.")
        elif b[1] <= s[2] and s[1] <= b[2]:
            parts.append(f"The CIs of the {names} overlap: these seeds do not establish their order.")
        else:
            parts.append(f"The CIs of the {names} do not overlap.")
    return " ".join(parts)


def _reference_line(rows: pd.DataFrame, caps: list[str]) -> str | None:
    items = []
    for col, label, digits in (
        ("gold_reward_ref", "gold reward", 3),
        ("length_ref", "length", 1),
        ("mwe_matching_rate_ref", "MWE matching", 3),
        ("syc_answer_drop_ref", "answer-syc. drop", 3),
        ("syc_flip_rate_ref", "flip rate", 3),
    ):
        if _has(rows, col):
            items.append(f"{label} {_fmt(_mean(rows[col]), digits)}")
    for c in caps:
        if _has(rows, f"cap_ref_{c}"):
            items.append(f"{c} {_fmt(_mean(rows[f'cap_ref_{c}']))}")
    if not items:
        return None
    return "Reference model (mean over rows): " + "; ".join(items) + "."


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


def _new_fig(size=(6.4, 4.0)):
    Figure = _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _bar_labels(ax, order: list[str]) -> None:
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=30 if len(order) > 4 else 0, ha="right" if len(order) > 4 else "center")


def _plot_frontier(policy: pd.DataFrame, order: list[str], task: str) -> tuple[bytes, str] | None:
    if not _has(policy, "kl_k3"):
        return None
    if _has(policy, "gold_reward", "gold_reward_ref"):
        y_all = policy["gold_reward"] - policy["gold_reward_ref"]
        ylabel, ref_y = "gold reward − reference gold reward", 0.0
        what = "Gold-reward gain over the reference"
    elif _has(policy, "win_rate_gold"):
        y_all = policy["win_rate_gold"]
        ylabel, ref_y = "gold win rate vs reference", 0.5
        what = "Gold win rate against the reference"
    else:
        return None
    x_all = policy["kl_k3"]
    fig, ax = _new_fig()
    ax.scatter([0.0], [ref_y], marker="*", s=180, color="black", zorder=3)
    ax.annotate("reference", (0.0, ref_y), textcoords="offset points", xytext=(6, -12), fontsize=8)
    plotted = False
    for a, color in zip(order, _colors(len(order))):
        sel = (policy["algo"] == a).to_numpy()
        x, y = x_all[sel].to_numpy(float), y_all[sel].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        plotted = True
        ax.scatter(x[ok], y[ok], s=18, alpha=0.45, color=color)
        mx, my = float(x[ok].mean()), float(y[ok].mean())
        ax.scatter([mx], [my], s=90, color=color, edgecolor="black", linewidth=0.6, zorder=3)
        ax.annotate(a, (mx, my), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if not plotted:
        return None
    ax.axhline(ref_y, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("KL(policy ‖ reference), k3 estimator [nats / sequence]")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: reward vs KL frontier", fontsize=10)
    ax.grid(alpha=0.3)
    caption = (f"{what} against KL(policy ‖ reference) (k3) on {task}: small dots are seeds, large dots "
               "algorithm means, the star is the reference.")
    return _png(fig), caption


def _err(values) -> tuple[float, float, float]:
    mean, low, high, n = mean_ci(values)
    if n < 2:
        return mean, 0.0, 0.0
    return mean, mean - low, high - mean


def _grouped_bars(ax, policy: pd.DataFrame, order: list[str], series: list[tuple[str, str]]) -> list:
    """One bar per (algorithm, series): mean over seeds with its 95% CI; returns the series' colours."""
    colors = _colors(len(series))
    width = 0.8 / len(series)
    for k, ((col, label), color) in enumerate(zip(series, colors)):
        stats = [_err(policy.loc[policy["algo"] == a, col]) for a in order]
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(order))]
        heights = [s[0] if np.isfinite(s[0]) else 0.0 for s in stats]
        yerr = [[s[1] for s in stats], [s[2] for s in stats]]
        ax.bar(xs, heights, width=width * 0.95, yerr=yerr, capsize=3, color=color, label=label)
    return colors


def _plot_winrates(policy: pd.DataFrame, order: list[str], task: str) -> tuple[bytes, str] | None:
    series = [(c, label) for c, label in (("win_rate_gold", "gold"), ("win_rate_judge", "judge"))
              if _has(policy, c)]
    if not series:
        return None
    fig, ax = _new_fig()
    _grouped_bars(ax, policy, order, series)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="reference (0.5)")
    _bar_labels(ax, order)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs reference")
    ax.set_title(f"{task}: win rates with 95% CI over seeds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    judged = " and ".join({"gold": "gold rule", "judge": "AI judge"}[label] for _, label in series)
    caption = (f"Win rate against the reference on {task} ({judged}), with 95% t-intervals over seeds; "
               "the dashed line at 0.5 is parity.")
    return _png(fig), caption


def _plot_sycophancy(policy: pd.DataFrame, rows: pd.DataFrame, order: list[str], task: str):
    series = [(c, label) for c, label in (("syc_answer_drop", "answer drop"), ("syc_flip_rate", "flip rate"))
              if _has(policy, c)]
    if not series:
        return None
    fig, ax = _new_fig()
    for (col, label), color in zip(series, _grouped_bars(ax, policy, order, series)):
        if _has(rows, f"{col}_ref"):
            ax.axhline(_mean(rows[f"{col}_ref"]), color=color, linestyle="--", linewidth=1.2,
                       label=f"reference {label}")
    _bar_labels(ax, order)
    ax.set_ylabel("rate")
    ax.set_title(f"{task}: answer sycophancy", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    caption = (f"Answer sycophancy on {task}: accuracy drop when the prompt suggests a wrong answer and the rate "
               "of flipped answers, per algorithm (95% CI over seeds); dashed lines are the reference's values.")
    return _png(fig), caption


def _plot_length(policy: pd.DataFrame, rows: pd.DataFrame, order: list[str], task: str):
    if not _has(policy, "length"):
        return None
    fig, ax = _new_fig()
    stats = [_err(policy.loc[policy["algo"] == a, "length"]) for a in order]
    heights = [s[0] if np.isfinite(s[0]) else 0.0 for s in stats]
    ax.bar(range(len(order)), heights, width=0.6, yerr=[[s[1] for s in stats], [s[2] for s in stats]], capsize=3,
           color=_colors(len(order)))
    if _has(rows, "length_ref"):
        ax.axhline(_mean(rows["length_ref"]), color="black", linestyle="--", linewidth=1, label="reference")
        ax.legend(fontsize=8)
    _bar_labels(ax, order)
    ax.set_ylabel("mean response length [tokens]")
    ax.set_title(f"{task}: response length", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    caption = f"Mean response length in tokens on {task} per algorithm; the dashed line is the reference's length."
    return _png(fig), caption


def _write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically: a temp file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        remove_inside(path.parent, Path(tmp))
        raise


# ----------------------------------------------------------------------------------------------------------------
# The report


def _unique(df: pd.DataFrame, col: str) -> list[str]:
    if col not in df.columns:
        return []
    return list(dict.fromkeys(v for v in df[col].astype(str) if v.strip()))


def _overview(doc: Doc, df: pd.DataFrame, caps: list[str]) -> None:
    tasks, algos = _unique(df, "task"), sorted(_unique(df, "algo"))
    seeds = sorted({float(s) for s in df["seed"] if np.isfinite(s)})
    n_policy = int((df["output_kind"] == "policy").sum())
    n_rm = len(df) - n_policy
    text = (f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} ({_join(tasks)}), {len(algos)} algorithm"
            f"{'s' if len(algos) != 1 else ''} ({_join(algos)}), seeds {_join(_seed_str(s) for s in seeds)}: "
            f"{len(df)} cells ({n_policy} policy, {n_rm} reward model).")
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
              "half); [low, high] is a 95% Student-t interval over seeds; Δ gold reward is the policy's mean gold "
              "score minus the reference's; KL is KL(policy ‖ reference) per sequence with the k3 estimator, "
              "± the 95% CI half-width over seeds (or the per-run SE, marked SE, with one seed); lengths are mean "
              "response tokens; answer-syc. drop is the accuracy lost when the prompt suggests a wrong answer.")
    if caps:
        legend += f" Δ capability is the mean over {', '.join(caps)} of policy − reference accuracy."
    legend += " Other cells are means over seeds; peak MB is the largest over seeds; – means not measured."
    doc.para(legend)


def _task_section(doc: Doc, df: pd.DataFrame, task: str, caps: list[str], heading: bool,
                  plots_dir: Path, written: dict[str, Path], names: set[str]) -> None:
    rows = df[df["task"] == task]
    policy = rows[rows["output_kind"] == "policy"]
    if heading:
        doc.heading(2, f"Task: {task}")
    if policy.empty:
        doc.para("No policy rows for this task.")
        return
    order = _algo_order(policy)
    columns = _headline_columns(policy, caps)
    headers = ["algorithm", "n seeds"] + [c.header for c in columns]
    table = []
    for a in order:
        r = policy[policy["algo"] == a]
        table.append([a, str(len(r))] + [c.cell(r) for c in columns])
    doc.table(headers, table)
    ref = _reference_line(rows, caps)
    if ref:
        doc.para(ref)
    doc.para(_noise_line(policy, order))

    slug = _slug(task)
    while slug in names:
        slug += "_"
    names.add(slug)
    for kind, made in (
        ("frontier", _plot_frontier(policy, order, task)),
        ("winrates", _plot_winrates(policy, order, task)),
        ("sycophancy", _plot_sycophancy(policy, rows, order, task)),
        ("length", _plot_length(policy, rows, order, task)),
    ):
        if made is None:
            continue
        png, caption = made
        name = f"{kind}_{slug}"
        path = plots_dir / f"{name}.png"
        _write_bytes(path, png)
        written[name] = path
        doc.figure(name, f"plots/{name}.png", png, caption)


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
    """Write report.md, report.html and plots/*.png for a results CSV (or a folder holding results.csv).

    Returns {"md": path, "html": path, "<plot name>": path, ...}; plot names are <kind>_<task>.
    """
    _require_matplotlib()
    df = load_results(source)
    csv = Path(df.attrs["path"])
    out = Path(out_dir) if out_dir is not None else csv.parent
    plots_dir = out / "plots"
    caps = capability_names(df.columns)

    suites = _unique(df, "suite") or ["benchmark"]
    versions = _unique(df, "suite_version")
    title = f"{', '.join(suites)} benchmark report" + (f" (version {', '.join(versions)})" if versions else "")
    doc = Doc()
    doc.heading(1, title)
    _overview(doc, df, caps)

    written: dict[str, Path] = {}
    tasks = _unique(df, "task")
    names: set[str] = set()
    for task in tasks:
        if len(tasks) == 1:
            doc.heading(2, f"Results: {task}")
        _task_section(doc, df, task, caps, len(tasks) > 1, plots_dir, written, names)
    _reward_model_section(doc, df)

    doc.heading(2, "How to reproduce")
    commands = _unique(df, "command")
    segs: list = []
    if commands:
        segs += ["Run ", ("code", commands[0]), " (the command recorded in the CSV"
                 + (f"; {len(commands)} distinct commands across rows" if len(commands) > 1 else "") + "). "]
    segs += [("code", f"prefopt report {csv.parent}"),
             f" re-renders this report from {csv.name} alone."]
    doc.para(*segs)

    # Plots this render did not produce but an earlier one did would be stale: remove them.
    if plots_dir.is_dir():
        for p in plots_dir.glob("*.png"):
            if p.name.startswith(PLOT_PREFIXES) and p.stem not in written:
                remove_inside(plots_dir, p)

    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, to_markdown(doc))
    atomic_write_text(html_path, to_html(doc, title))
    return {"md": md_path, "html": html_path, **written}


__all__ = ["load_results", "render"]
