"""The benchmark harness: suite files, cell order, pair building, resume after a kill (prefopt.bench)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import run_cli

from prefopt.bench import results as results_table
from prefopt.bench.pairs import make_pairs
from prefopt.bench.results import done_cells
from prefopt.bench.suite import Cell, algorithm_order, cells, config_hash, load_suite
from prefopt.errors import PrefoptError

ROOT = Path(__file__).resolve().parents[1]


def write_suite(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def micro_suite(path: Path, model_dir: Path, algorithms: dict, seeds=(0, 1), **eval_options) -> Path:
    """A suite a tiny random model finishes in seconds per cell."""
    return write_suite(
        path,
        name="micro",
        version=1,
        model=str(model_dir),
        seeds=list(seeds),
        tasks=["qa"],
        algorithms=algorithms,
        train={"steps": 2, "batch_size": 4, "eval_size": 4, "max_length": 96, "max_prompt_length": 64,
               "precision": "fp32", "lora_r": 4, "lora_alpha": 8},
        pairs={"prompts": 24, "samples": 4, "max_new_tokens": 24},
        eval={"prompts": 4, "max_new_tokens": 8, "judge": "", "probes": 2, "probe_max_new_tokens": 6,
              "capability": [], "batch_size": 8, **eval_options},
    )  # fmt: skip


# ---------------------------------------------------------------- suite files


def test_suite_file_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(PrefoptError, match="does not exist"):
        load_suite(tmp_path / "none.yaml")
    with pytest.raises(PrefoptError, match="missing key 'algorithms'"):
        load_suite(write_suite(tmp_path / "a.yaml", name="x"))
    with pytest.raises(PrefoptError, match="unknown key 'algos'"):
        load_suite(write_suite(tmp_path / "b.yaml", name="x", algos=["dpo"]))
    with pytest.raises(PrefoptError, match=r"c.yaml: eval: unknown option 'promts'"):
        load_suite(write_suite(tmp_path / "c.yaml", name="x", algorithms=["dpo"], eval={"promts": 3}))
    with pytest.raises(PrefoptError, match=r"'\{cell:reward\}', which is not in the suite"):
        load_suite(write_suite(tmp_path / "d.yaml", name="x", algorithms={"ppo": {"judge": "reward:{cell:reward}"}}))
    with pytest.raises(PrefoptError, match="'seeds' must be"):
        load_suite(write_suite(tmp_path / "e.yaml", name="x", algorithms=["dpo"], seeds=[]))
    with pytest.raises(PrefoptError, match=r"f.yaml: option 'pairs.samples': expected int, got 'many'"):
        load_suite(write_suite(tmp_path / "f.yaml", name="x", algorithms=["dpo"], pairs={"samples": "many"}))


def test_referenced_cells_run_first_and_a_subset_keeps_them(tmp_path):
    suite = load_suite(write_suite(
        tmp_path / "s.yaml", name="x", seeds=[0, 1], tasks=["qa"],
        algorithms={"ppo": {"judge": "reward:{cell:reward}"}, "dpo": {}, "reward": {}},
    ))  # fmt: skip
    assert algorithm_order(suite) == ["reward", "ppo", "dpo"]
    assert cells(suite)[:3] == [Cell("qa", "reward", 0), Cell("qa", "ppo", 0), Cell("qa", "dpo", 0)]
    assert [c.algo for c in cells(suite, only=["ppo"])] == ["reward", "ppo", "reward", "ppo"]
    with pytest.raises(PrefoptError, match="kto not in the suite"):
        cells(suite, only=["kto"])


def test_reference_cycles_are_an_error(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.yaml", name="x", algorithms={
        "ppo": {"judge": "reward:{cell:rlaif}"}, "rlaif": {"judge": "reward:{cell:ppo}"}}))  # fmt: skip
    with pytest.raises(PrefoptError, match="cycle"):
        algorithm_order(suite)


def test_config_hash_changes_with_the_cell_config_but_not_the_seed(tmp_path):
    a = load_suite(write_suite(tmp_path / "a.yaml", name="x", algorithms={"dpo": {}, "ipo": {}}, train={"steps": 5}))
    b = load_suite(write_suite(tmp_path / "b.yaml", name="x", algorithms={"dpo": {}, "ipo": {}}, train={"steps": 6}))
    assert config_hash(a, Cell("qa", "dpo", 0)) == config_hash(a, Cell("qa", "dpo", 3))
    assert config_hash(a, Cell("qa", "dpo", 0)) != config_hash(a, Cell("qa", "ipo", 0))
    assert config_hash(a, Cell("qa", "dpo", 0)) != config_hash(b, Cell("qa", "dpo", 0))
    row = {"task": "qa", "algo": "dpo", "seed": 0, "config_hash": config_hash(a, Cell("qa", "dpo", 0))}
    table = pd.DataFrame([row])
    assert done_cells(table, a, Path("r.csv")) == {Cell("qa", "dpo", 0)}
    with pytest.raises(PrefoptError, match=r"r.csv row 1: qa/dpo/seed0 was run with another configuration"):
        done_cells(table, b, Path("r.csv"))


def test_an_all_digit_config_hash_survives_the_csv_round_trip(tmp_path, monkeypatch):
    # A 12-hex-digit hash is all digits about 0.4% of the time; read back as a number it lost its leading zero
    # and the resumed bench refused its own rows.
    suite = load_suite(write_suite(tmp_path / "a.yaml", name="x", algorithms={"dpo": {}}))
    monkeypatch.setattr(results_table, "config_hash", lambda suite, cell: "012345678901")
    csv = tmp_path / "results.csv"
    row = {"task": "qa", "algo": "dpo", "seed": 0, "config_hash": "012345678901", "git": "0123e45"}
    results_table.append_row(csv, row)
    table = results_table.read_results(csv)
    assert table.loc[0, "config_hash"] == "012345678901" and table.loc[0, "git"] == "0123e45"
    assert done_cells(table, suite, csv) == {Cell("qa", "dpo", 0)}


# ---------------------------------------------------------------- pairs from samples


def test_make_pairs_takes_best_against_worst_and_drops_ties():
    rows = make_pairs(
        ["p1", "p2", "p3"],
        [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]],
        [[0.1, 0.9, -0.3], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]],
        noise=0.0, seed=0,
    )  # fmt: skip
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p1", "b", "c"), ("p3", "g", "h")]
    assert rows[0]["gold_chosen"] == 0.9 and rows[0]["gold_rejected"] == -0.3
    assert not any(r["label_swapped"] for r in rows)


def test_make_pairs_label_noise_swaps_that_fraction():
    prompts = [f"p{i}" for i in range(400)]
    rows = make_pairs(prompts, [["good", "bad"]] * 400, [[1.0, 0.0]] * 400, noise=0.25, seed=3)
    swapped = [r for r in rows if r["label_swapped"]]
    assert 0.19 < len(swapped) / 400 < 0.31
    assert all(r["chosen"] == "bad" and r["gold_chosen"] == 0.0 for r in swapped)
    assert make_pairs(prompts, [["good", "bad"]] * 400, [[1.0, 0.0]] * 400, noise=1.0, seed=3)[0]["chosen"] == "bad"


# ---------------------------------------------------------------- end to end on a tiny model


def _rows(csv: Path) -> list[tuple]:
    if not csv.exists():
        return []
    table = pd.read_csv(csv)
    return list(zip(table["task"], table["algo"], table["seed"]))


def _unknown_columns(table: pd.DataFrame) -> list[str]:
    """Columns the runner wrote that the shared schema (and so the report) does not know."""
    return [c for c in table.columns if c not in results_table.TEXT_COLUMNS and not results_table.is_numeric(c)]


@pytest.mark.e2e
def test_micro_suite_killed_midway_resumes_with_each_cell_once(tmp_path, tiny_model_dir):
    suite = micro_suite(tmp_path / "micro.yaml", tiny_model_dir, {"dpo": {}, "sft": {}})
    results, work = tmp_path / "results", tmp_path / "work"
    csv = results / "results.csv"
    cmd = [sys.executable, "-m", "prefopt", "bench", "--suite", str(suite), "--results", str(results),
           "--work-dir", str(work)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not _rows(csv):
        time.sleep(0.2)
    assert proc.poll() is None, f"the bench ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up handlers run
    proc.wait()
    proc.stderr.close()
    before = _rows(csv)
    assert 1 <= len(before) < 4

    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", work]) == 0
    after = _rows(csv)
    expected = {("qa", a, s) for a in ("dpo", "sft") for s in (0, 1)}
    assert sorted(after) == sorted(expected), after  # each cell exactly once
    assert after[: len(before)] == before  # earlier rows kept as they were
    table = pd.read_csv(csv)
    for column in ("win_rate_gold", "kl_k1", "kl_k3", "length", "length_ref", "gold_reward_ref",
                   "syc_answer_drop_ref", "seconds_per_step", "peak_rss_mb", "tokens_processed"):  # fmt: skip
        assert table[column].notna().all(), column
    assert ((table["win_rate_gold"] >= 0) & (table["win_rate_gold"] <= 1)).all()
    assert (table["kl_k3"] >= 0).all()
    assert table["git"].notna().all() and table["config_hash"].nunique() == 2
    assert _unknown_columns(table) == []
    assert (results / "report.md").exists() and (results / "report.html").exists()

    # A third run has nothing to do and leaves the table as it was.
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", work]) == 0
    assert _rows(csv) == after


@pytest.mark.e2e
def test_proxy_trained_policy_reports_hacking_gap_and_the_ai_judge(tmp_path, tiny_model_dir):
    """reward -> ppo on that reward model (a proxy); an LM judge; the report re-renders from the CSV alone."""
    suite = micro_suite(
        tmp_path / "proxy.yaml", tiny_model_dir,
        {"reward": {}, "ppo": {"judge": "reward:{cell:reward}", "max_new_tokens": 6, "ppo_epochs": 1}},
        seeds=(0,), judge=f"lm:{tiny_model_dir}",
    )  # fmt: skip
    results = tmp_path / "results"
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 0
    table = pd.read_csv(results / "results.csv").set_index("algo")
    assert table.loc["reward", "output_kind"] == "reward_model"
    assert math.isnan(table.loc["reward", "win_rate_gold"]) and 0 <= table.loc["reward", "pref_accuracy"] <= 1
    ppo = table.loc["ppo"]
    assert ppo["output_kind"] == "policy" and ppo["proxy"].startswith("reward:")
    assert ppo["hacking_gap"] == pytest.approx(ppo["proxy_win_rate"] - ppo["win_rate_gold"])
    assert 0 <= ppo["win_rate_judge"] <= 1 and 0 <= ppo["judge_agreement"] <= 1 and 0 <= ppo["judge_tie_rate"] <= 1
    assert ppo["judge"] == f"lm:{tiny_model_dir}"
    assert _unknown_columns(table) == []

    (results / "report.md").unlink()
    assert run_cli(["report", results / "results.csv"]) == 0
    assert "ppo" in (results / "report.md").read_text()


@pytest.mark.e2e
def test_a_policy_identical_to_the_reference_wins_half_at_zero_kl(tmp_path, tiny_model_dir):
    """lr=0 leaves the LoRA policy equal to the starting model; sampled with the reference's seed, its samples are the
    reference's: win rate 1/2 (every pair a tie), KL 0, same length, same sycophancy and capability."""
    suite = micro_suite(tmp_path / "same.yaml", tiny_model_dir, {"dpo": {"lr": 0.0}}, seeds=(7,), reference_seed=7,
                        capability=["prefopt_arith"], capability_limit=8)  # fmt: skip
    results = tmp_path / "results"
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 0
    table = pd.read_csv(results / "results.csv")
    assert _unknown_columns(table) == []
    row = table.iloc[0]
    assert row["win_rate_gold"] == 0.5 and row["win_rate_gold_se"] == 0.0
    assert row["lc_win_rate_gold"] == pytest.approx(0.5, abs=1e-9)
    assert row["gold_reward"] == row["gold_reward_ref"] and row["length"] == row["length_ref"]
    assert abs(row["kl_k1"]) < 1e-6 and abs(row["kl_k3"]) < 1e-6
    assert row["syc_answer_drop"] == row["syc_answer_drop_ref"]
    assert row["cap_prefopt_arith"] == row["cap_ref_prefopt_arith"]


def test_bench_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert run_cli(["bench", "--suite", tmp_path / "none.yaml"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
