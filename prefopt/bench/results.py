"""The results table: one CSV row per finished cell, written by the runner and read by the report.

This module is the one place that knows the columns, so the writer and the reader cannot drift apart. Optional
metric columns may be missing (a reward model has no samples; the AI judge, probes or capability can be
switched off); columns not named here are kept as they are.
"""

from __future__ import annotations

import math
from pathlib import Path

from prefopt.bench.suite import SANITY_PREFIX, Cell, Suite, config_hash
from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_bytes, atomic_write_text

RESULTS = "results.csv"

# ---------------------------------------------------------------- the columns

# Who a row is; every row has all of them.
IDENTITY = ("suite", "suite_version", "task", "algo", "seed", "config_hash", "output_kind")
OUTPUT_KINDS = ("policy", "reward_model", "sanity")  # what an algorithm produces; "sanity": a sanity row, whose
# algo is SANITY_PREFIX + empty | constant | reference | best-of-<n>
ROW_KEY = ("task", "algo", "seed", "output_kind")  # one cell; of repeated rows, the report keeps the last

# The code and machine a row was produced with.
PROVENANCE = ("git", "python", "torch", "transformers", "peft", "device", "precision")

# Read back as text: a config hash such as "040305344283" or a git id such as "0123e45" is not a number.
TEXT_COLUMNS = ("suite", "suite_version", "task", "algo", "config_hash", "output_kind", "arm", "strength_option",
                "judge", "proxy", *PROVENANCE,
                "command", "finished_at")  # fmt: skip

# Policy (or sanity reply) vs the reference's samples on held-out prompts (policy and sanity rows). The
# length-controlled win rates are not columns: the report fits them jointly over a task's rows from the per-prompt
# samples files (samples_path), as AlpacaEval 2 LC does.
SAMPLE_METRICS = (
    "gold_reward", "gold_reward_ref",
    "win_rate_gold", "win_rate_gold_se",
    "win_rate_judge", "win_rate_judge_se", "judge_agreement", "judge_tie_rate", "judge_position_bias",
    "kl_k1", "kl_k1_se", "kl_k3", "kl_k3_se", "kl_bound",
    "length", "length_ref",
)  # fmt: skip
# The judge's calibration against gold before the suite (the same in every row of a task; see
# prefopt.evaluation.judge_protocol): agreement with its 95% Wilson interval, pairs, tie and position-bias rates, and
# the agreement a judge needs to be read (judge_cal_threshold).
JUDGE_CALIBRATION = ("judge_cal_agreement", "judge_cal_low", "judge_cal_high", "judge_cal_n", "judge_cal_tie_rate",
                     "judge_cal_position_bias", "judge_cal_threshold")  # fmt: skip
# Measured on the policy and, once per task, on the reference (its column: reference_column(name)). Sycophancy
# columns are syc_<behaviour>_rate, syc_<behaviour>_n and each behaviour's extras
# (prefopt.evaluation.sycophancy.summary); every syc_ column is numeric.
SYCOPHANCY_PREFIX = "syc_"
SIDE_METRICS = ("mwe_matching_rate",)
# How far the proxy a policy was trained against over-rates it (policies trained against a proxy only):
# standardised gains over the reference (mean difference / the reference's sd) by the proxy and by gold, and
# hacking_gap = proxy_gain_z - gold_gain_z with a 95% paired bootstrap interval over prompts.
PROXY_METRICS = ("proxy_reward", "proxy_reward_ref", "proxy_gain_z", "gold_gain_z", "proxy_win_rate", "hacking_gap",
                 "hacking_gap_low", "hacking_gap_high")  # fmt: skip
# A swept entry's arm (the entry's name before the sweep; an unswept entry is its own arm), the swept option
# and its value (strength), and tuned_<option>: the value the arm's search on dev prompts chose.
SWEEP = ("strength",)
TUNED_PREFIX = "tuned_"
# Training and its cost. The budget: comparisons_seen (offline: labelled comparisons, steps x global batch, halved
# for an unpaired objective) or reward_queries (online: completions scored).
RUN_METRICS = ("pref_accuracy", "steps", "global_batch", "train_pairs", "comparisons_seen", "reward_queries",
               "train_seconds", "seconds_per_step", "peak_rss_mb", "tokens_processed", "eval_seconds",
               "cpu_count")  # fmt: skip
CAPABILITY_PREFIX = "cap_"  # cap_<task>: the policy's lm-eval accuracy; cap_ref_<task>: the reference's
# capdelta_<task>, capdelta_low_<task>, capdelta_high_<task>: policy - reference accuracy on the same items with a
# paired 95% interval; capn_<task>: the items scored.
CAPABILITY_DELTA_PREFIX = "capdelta_"
CAPABILITY_N_PREFIX = "capn_"
NUMERIC_PREFIXES = (CAPABILITY_PREFIX, CAPABILITY_DELTA_PREFIX, CAPABILITY_N_PREFIX, SYCOPHANCY_PREFIX, TUNED_PREFIX)


def is_sanity(algo: str) -> bool:
    """Whether a row's algo names a sanity row rather than a suite entry."""
    return str(algo).startswith(SANITY_PREFIX)


def reference_column(name: str) -> str:
    """The reference's column of a side metric: syc_answer_rate -> syc_answer_rate_ref, cap_x -> cap_ref_x."""
    if name.startswith(CAPABILITY_PREFIX):
        return name.replace(CAPABILITY_PREFIX, f"{CAPABILITY_PREFIX}ref_", 1)
    return f"{name}_ref"


NUMERIC_COLUMNS = ("seed", *SWEEP, *SAMPLE_METRICS, *JUDGE_CALIBRATION, *SIDE_METRICS, *map(reference_column, SIDE_METRICS),
                   *PROXY_METRICS, *RUN_METRICS)  # fmt: skip


def is_numeric(column: str) -> bool:
    return column in NUMERIC_COLUMNS or column.startswith(NUMERIC_PREFIXES)


# ---------------------------------------------------------------- files beside the table
# Per-prompt samples, training curves and reward-hacking curves: what the report needs beyond the table (the joint
# length-controlled fit, example replies, curves over training). Written by the runner, read by the report.
SAMPLES_DIR, CURVES_DIR, HACKING_DIR = "samples", "curves", "hacking"


def samples_path(results_dir: Path, task: str, algo: str, seed: int) -> Path:
    """One line per held-out prompt (gzip-compressed JSON lines; read with :func:`read_records`):
    {"i", "prompt", "reply", "length", "gold", "win_gold", "judge", "judge_proba"} and, for a policy,
    {"logp", "ref_logp", "kl_k1", "kl_k3"}.

    ``i`` indexes the task's held-out prompts (the same i in every file of a task); ``win_gold`` is the reply's gold
    decision against each of the reference's replies to prompt i (1 better, 0 worse, 1/2 tie), averaged;
    ``judge`` is the judge's decision against the reference's first reply (null without a judge) and
    ``judge_proba`` its averaged probability (null for a judge without probabilities); ``logp`` and ``ref_logp``
    are the reply's summed log-probs under the policy and the reference, ``kl_k1`` and ``kl_k3`` its sequence KL
    estimates (their means over prompts are the row's kl_k1 and kl_k3).
    """
    return Path(results_dir) / SAMPLES_DIR / task / algo / f"seed{seed}.jsonl.gz"


def reference_samples_path(results_dir: Path, task: str) -> Path:
    """The reference's replies to the task's held-out prompts, one line per prompt (gzip JSON lines):
    {"i", "prompt", "reply", "length", "gold"} for its first reply and "more": [{"reply", "length", "gold"}] for
    the others (eval.reference_samples - 1 of them)."""
    return Path(results_dir) / SAMPLES_DIR / task / "reference.jsonl.gz"


def tuning_path(results_dir: Path) -> Path:
    """The learning-rate (or other option) search on the dev prompts: one row per (task, arm, value)."""
    return Path(results_dir) / "tuning.csv"


def as_number(value) -> float:
    """A JSON value as a float; anything that is not a finite number -> NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def write_records(path: Path, rows) -> None:
    """JSON lines, gzip-compressed when the name ends in .gz (byte-for-byte reproducible: no name, mtime 0);
    written atomically."""
    import gzip
    import json

    text = "".join(json.dumps(r) + "\n" for r in rows)
    if str(path).endswith(".gz"):
        atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        atomic_write_text(path, text)


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (gzip or plain; for a .gz name missing on disk, the plain file of
    older results), skipping lines that are not objects; [] when it is missing or unreadable."""
    import gzip
    import json
    import zlib

    path = Path(path)
    if str(path).endswith(".gz") and not path.exists():
        path = path.with_suffix("")
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile):
        return []
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def curve_path(results_dir: Path, task: str, algo: str, seed: int) -> Path:
    """The training run's metrics.jsonl lines (numbers only): loss, margins, reward, gold, kl ... by step."""
    return Path(results_dir) / CURVES_DIR / task / algo / f"seed{seed}.jsonl"


def hacking_path(results_dir: Path, task: str) -> Path:
    """The task's reward-hacking measurements that are not cells: best-of-n curve, the planted feature."""
    return Path(results_dir) / HACKING_DIR / f"{task}.json"


def capability_names(columns) -> list[str]:
    """Capability tasks with both a policy (cap_<name>) and a reference (cap_ref_<name>) column."""
    cols = set(columns)
    policy = [c[len(CAPABILITY_PREFIX):] for c in cols
              if c.startswith(CAPABILITY_PREFIX) and not c.startswith(f"{CAPABILITY_PREFIX}ref_")]  # fmt: skip
    return sorted(name for name in policy if reference_column(CAPABILITY_PREFIX + name) in cols)


# ---------------------------------------------------------------- reading and appending


def read_results(path: Path):
    """The table as written (an empty one when there is none yet); text columns stay text."""
    import pandas as pd

    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path, keep_default_na=True, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise PrefoptError(f"{path}: cannot read the results table ({str(e).splitlines()[0]})") from None


def append_row(path: Path, row: dict) -> None:
    """Add one cell's row; the whole CSV is rewritten atomically, so a kill never leaves half a row.

    The caller holds the CSV's lock (:func:`prefopt.bench.paths.results_lock`), so that no other bench rewrites
    the CSV between this read and this write.
    """
    import pandas as pd

    table = read_results(path)
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True) if len(table) else pd.DataFrame([row])
    atomic_write_text(path, table.to_csv(index=False))


def row_number(path: Path, i: int, row: dict, field: str, kind=float):
    """A number read from row i of a results or tuning table (a hand-edited or damaged file is untrusted): the
    value as `kind`, or one PrefoptError naming the file, row and field."""
    value = row.get(field)
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or (kind is int and float(value) != number):
        raise PrefoptError(f"{path} row {i} field '{field}': expected a number, got {str(value)[:40]!r}")
    return number


def done_cells(table, suite: Suite, path: Path, code_version: str | None = None) -> set[Cell]:
    """Cells with a row. A row whose config hash differs from the suite's is an error, and so is, when
    code_version (the running code's git id) is given, a row written by another code version: a resumed
    suite never mixes the numbers of two versions."""
    done = set()
    if not len(table):
        return done
    for i, row in enumerate(table.to_dict("records"), start=1):
        cell = Cell(str(row["task"]), str(row["algo"]), row_number(path, i, row, "seed", int))
        in_suite = cell.algo in suite.algorithms and cell.task in suite.task_names
        if in_suite and str(row.get("config_hash")) != config_hash(suite, cell):
            raise PrefoptError(
                f"{path} row {i}: {cell.task}/{cell.algo}/seed{cell.seed} was run with another configuration "
                f"(config_hash {row.get('config_hash')}); use a new results folder or --restart"
            )
        written_by = row.get("git")
        if code_version and isinstance(written_by, str) and written_by and written_by != code_version:
            raise PrefoptError(
                f"{path} row {i}: {cell.task}/{cell.algo}/seed{cell.seed} was run by code version {written_by}, "
                f"this is {code_version}; a suite is not resumed across versions: use a new results folder, "
                f"--restart, or check out {written_by}"
            )
        done.add(cell)
    return done
