"""The results table: one CSV row per finished cell, written by the runner and read by the report.

This module is the one place that knows the columns, so the writer and the reader cannot drift apart. Optional
metric columns may be missing (a reward model has no samples; the AI judge, probes or capability can be
switched off); columns not named here are kept as they are.
"""

from __future__ import annotations

from pathlib import Path

from prefopt.bench.suite import Cell, Suite, config_hash
from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_text

RESULTS = "results.csv"

# ---------------------------------------------------------------- the columns

# Who a row is; every row has all of them.
IDENTITY = ("suite", "suite_version", "task", "algo", "seed", "config_hash", "output_kind")
OUTPUT_KINDS = ("policy", "reward_model")  # what an algorithm produces
ROW_KEY = ("task", "algo", "seed", "output_kind")  # one cell; of repeated rows, the report keeps the last

# The code and machine a row was produced with.
PROVENANCE = ("git", "python", "torch", "transformers", "peft", "device", "precision")

# Read back as text: a config hash such as "040305344283" or a git id such as "0123e45" is not a number.
TEXT_COLUMNS = ("suite", "suite_version", "task", "algo", "config_hash", "output_kind", "judge", "proxy", *PROVENANCE,
                "command", "finished_at")  # fmt: skip

# Policy vs reference samples on held-out prompts (policy rows only).
SAMPLE_METRICS = (
    "gold_reward", "gold_reward_ref",
    "win_rate_gold", "win_rate_gold_se", "lc_win_rate_gold",
    "win_rate_judge", "win_rate_judge_se", "judge_agreement", "judge_tie_rate",
    "kl_k1", "kl_k1_se", "kl_k3", "kl_k3_se",
    "length", "length_ref",
)  # fmt: skip
# Measured on the policy and, once per task, on the reference (its column: reference_column(name)).
SIDE_METRICS = ("syc_acc_neutral", "syc_acc_suggested", "syc_answer_drop", "syc_flip_rate", "mwe_matching_rate")
# How far the proxy a policy was trained against over-rates it (policies trained against a proxy only).
PROXY_METRICS = ("proxy_gain_z", "gold_gain_z", "proxy_win_rate", "hacking_gap")
# Training and its cost.
RUN_METRICS = ("pref_accuracy", "steps", "global_batch", "train_pairs", "train_seconds", "seconds_per_step",
               "peak_rss_mb", "tokens_processed", "eval_seconds", "cpu_count")  # fmt: skip
CAPABILITY_PREFIX = "cap_"  # cap_<task>: the policy's lm-eval accuracy; cap_ref_<task>: the reference's


def reference_column(name: str) -> str:
    """The reference's column of a side metric: syc_flip_rate -> syc_flip_rate_ref, cap_x -> cap_ref_x."""
    if name.startswith(CAPABILITY_PREFIX):
        return name.replace(CAPABILITY_PREFIX, f"{CAPABILITY_PREFIX}ref_", 1)
    return f"{name}_ref"


NUMERIC_COLUMNS = ("seed", *SAMPLE_METRICS, *SIDE_METRICS, *map(reference_column, SIDE_METRICS), *PROXY_METRICS,
                   *RUN_METRICS)  # fmt: skip


def is_numeric(column: str) -> bool:
    return column in NUMERIC_COLUMNS or column.startswith(CAPABILITY_PREFIX)


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


def done_cells(table, suite: Suite, path: Path) -> set[Cell]:
    """Cells with a row; a row whose config hash differs from the suite's is an error."""
    done = set()
    if not len(table):
        return done
    for i, row in enumerate(table.to_dict("records"), start=1):
        cell = Cell(str(row["task"]), str(row["algo"]), int(row["seed"]))
        in_suite = cell.algo in suite.algorithms and cell.task in suite.task_names
        if in_suite and str(row.get("config_hash")) != config_hash(suite, cell):
            raise PrefoptError(
                f"{path} row {i}: {cell.task}/{cell.algo}/seed{cell.seed} was run with another configuration "
                f"(config_hash {row.get('config_hash')}); use a new results folder or --restart"
            )
        done.add(cell)
    return done
