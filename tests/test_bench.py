"""The benchmark harness: suite files, cell order, pair building, resume after a kill (prefopt.bench)."""

from __future__ import annotations

import json
import math
import os
import re
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
from prefopt.bench import runner
from prefopt.bench.custom_task import custom_task
from prefopt.bench.pairs import empty_samples, make_pairs
from prefopt.bench.paths import remove_inside, results_lock
from prefopt.bench.results import done_cells
from prefopt.bench.suite import Cell, algorithm_order, cells, config_hash, load_suite
from prefopt.errors import PrefoptError

ROOT = Path(__file__).resolve().parents[1]


def write_suite(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def micro_suite(path: Path, model_dir: Path, algorithms: dict, seeds=(0, 1), **eval_options) -> Path:
    """A suite a tiny random model finishes in seconds per cell. Its task is a custom one whose gold rule
    (tests/helpers.py: letter_share) grades a random model's gibberish by degrees: the built-in rules give
    every such reply their minimum, so no two samples would differ and no pair could be made."""
    prompts = path.parent / "letters.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write a line about topic {i}."}) + "\n" for i in range(80)))
    return write_suite(
        path,
        name="micro",
        version=1,
        model=str(model_dir),
        seeds=list(seeds),
        tasks=[{"name": "letters", "prompts": str(prompts), "gold": "helpers:letter_share"}],
        algorithms=algorithms,
        train={"steps": 2, "batch_size": 4, "eval_size": 4, "max_length": 96, "max_prompt_length": 64,
               "precision": "fp32", "lora_r": 4, "lora_alpha": 8},
        pairs={"prompts": 24, "samples": 4, "max_new_tokens": 24},
        eval={"prompts": 4, "max_new_tokens": 8, "judge": "", "probes": 2, "probe_max_new_tokens": 6,
              "capability": [], "best_of": 4, "calibration_pairs": 8, "batch_size": 8, **eval_options},
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


def test_make_pairs_skips_empty_samples_and_identical_texts():
    rows = make_pairs(
        ["p1", "p2", "p3", "p4"],
        [["", "good", "bad"], ["  ", "only", "\n"], ["same", "same ", "x"], ["a", "", "b"]],
        [[5.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [0.2, -1.0, 0.2]],
        noise=0.0, seed=0,
    )  # fmt: skip
    # p1: the empty sample scored best but is skipped; p2: one non-empty sample left; p3: "same " is "same";
    # p4: the non-empty samples tie.
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p1", "good", "bad"), ("p3", "same", "x")]
    assert rows[0]["gold_chosen"] == 1.0 and rows[1]["gold_rejected"] == 0.5
    assert empty_samples([["", "good", "bad"], ["  ", "only", "\n"], ["same", "same ", "x"], ["a", "", "b"]]) == 4


class _FakeSampler:
    """Samples that cycle through `texts`, one per conversation (so each prompt gets all of them)."""

    def __init__(self, texts):
        self.texts = texts

    def sample(self, convs, sampling, progress=False):
        texts = [self.texts[i % len(self.texts)] for i in range(len(convs))]
        return None, texts, [len(t.split()) for t in texts]


def _fake_prepare_bench(tmp_path, monkeypatch, texts):
    from prefopt.tasks.qa import QATask

    monkeypatch.setattr(runner.Bench, "reference", lambda self: (None, None))
    monkeypatch.setattr(runner.Bench, "sampler", lambda self, model: _FakeSampler(texts))
    monkeypatch.setattr(QATask, "gold_scores", lambda self, prompts, responses: [float(len(r.strip()))
                                                                               for r in responses])
    suite = load_suite(write_suite(
        tmp_path / "s.yaml", name="fake", tasks=["qa"], algorithms={"dpo": {}},
        pairs={"prompts": 6, "samples": len(texts)},
        eval={"prompts": 3, "judge": "", "probes": 0, "capability": []},
    ))  # fmt: skip
    return runner.Bench(suite, tmp_path / "results", tmp_path / "work", progress=False)


def test_bench_pairs_never_hold_empty_responses_and_the_marker_counts_them(tmp_path, monkeypatch):
    from prefopt.data.formats import load_records

    bench = _fake_prepare_bench(tmp_path, monkeypatch, ["", "short", "a much longer answer", "   "])
    prep = bench.prepare("qa")
    records = load_records(prep["pairs_file"])  # the loader the cells train with accepts every pair
    assert len(records) == prep["pairs"] == 6
    assert all((r.chosen, r.rejected) == ("a much longer answer", "short") for r in records)
    marker = json.loads((tmp_path / "work" / "qa" / "prep" / "prepared.json").read_text())
    assert marker["empty_samples"] == prep["empty_samples"] == 12
    assert "empty_samples" in runner.PREPARED_SUMMARY  # and so in results/<suite>/suite.json


def test_bench_with_too_few_non_empty_samples_fails_with_one_line(tmp_path, monkeypatch):
    bench = _fake_prepare_bench(tmp_path, monkeypatch, ["", "only", " ", ""])
    with pytest.raises(PrefoptError, match=r"only 0 of 6 prompts gave two samples with different gold scores "
                                           r"\(18 empty samples skipped\)") as error:
        bench.prepare("qa")
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- names, removals and the results lock


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize(("values", "field"), [
    ({"name": "../escape"}, "name"),
    ({"name": "/tmp/escape"}, "name"),
    ({"name": ".."}, "name"),
    ({"name": "a/b"}, "name"),
    ({"tasks": ["../qa"]}, "tasks[0]"),
    ({"tasks": ["qa", "/abs"]}, "tasks[1]"),
    ({"tasks": [{"name": "../x", "prompts": "p.jsonl", "gold": "m:f"}]}, "tasks[0].name"),
    ({"tasks": [{"name": "/abs/x", "prompts": "p.jsonl", "gold": "m:f"}]}, "tasks[0].name"),
    ({"algorithms": {"../dpo": {}}}, "algorithms.../dpo"),
])  # fmt: skip
def test_suite_task_and_algorithm_names_must_be_plain_names(tmp_path, values, field):
    suite = write_suite(tmp_path / "s.yaml", **{"name": "ok", "algorithms": {"dpo": {}}, **values})
    with pytest.raises(PrefoptError, match=re.escape(f"{suite}: {field}: must be a plain name")):
        load_suite(suite)


def test_custom_task_named_climbing_out_is_refused(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    with pytest.raises(PrefoptError, match="custom task field 'name': must be a plain name"):
        custom_task({"name": "../x", "prompts": str(prompts), "gold": "gold:qa"})


@pytest.mark.parametrize("name", ["../../../sentinel", "ABSOLUTE"])
def test_restart_with_a_climbing_suite_name_removes_nothing(tmp_path, monkeypatch, capsys, name):
    sentinel = tmp_path / "sentinel"
    (sentinel / "keep").mkdir(parents=True)
    (sentinel / "keep" / "file.txt").write_text("precious")
    cwd = tmp_path / "cwd"
    (cwd / "runs" / "bench").mkdir(parents=True)  # as an earlier bench left it
    monkeypatch.chdir(cwd)  # default work folder runs/bench/<name>: ../../../sentinel is tmp_path/sentinel
    suite = write_suite(tmp_path / "s.yaml", name=str(sentinel) if name == "ABSOLUTE" else name,
                        model=str(tmp_path / "no-model"), algorithms={"dpo": {}})
    rc = run_cli(["bench", "--suite", suite, "--restart"])
    assert (sentinel / "keep" / "file.txt").read_text() == "precious"
    assert rc == 2 and f"{suite}: name: must be a plain name" in _one_line_error(capsys)
    assert sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*")) == ["runs", "runs/bench"]  # nothing created


def test_a_custom_task_named_dot_dot_x_removes_nothing_outside_the_work_folder(tmp_path, capsys):
    outside = tmp_path / "x" / "prep"
    outside.mkdir(parents=True)
    (outside / "file.txt").write_text("precious")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(8)))
    suite = write_suite(tmp_path / "s.yaml", name="custom", model=str(tmp_path / "no-model"), algorithms={"dpo": {}},
                        tasks=[{"name": "../x", "prompts": str(prompts), "gold": "gold:qa"}])
    (tmp_path / "work").mkdir()  # as an earlier bench left it
    args = ["bench", "--suite", suite, "--results", tmp_path / "results", "--work-dir", tmp_path / "work"]
    rc = run_cli(args)  # no --restart
    assert (outside / "file.txt").read_text() == "precious"
    assert rc == 2 and f"{suite}: tasks[0].name: must be a plain name" in _one_line_error(capsys)


def test_remove_inside_removes_only_what_is_strictly_inside_its_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "f.txt").write_text("x")
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (root / "link").symlink_to(outside, target_is_directory=True)
    for bad in (root, root / "..", root / "a" / ".." / "..", outside, tmp_path, Path("/"), root / "link" / "keep.txt"):
        with pytest.raises(PrefoptError, match="refusing to remove"):
            remove_inside(root, bad)
    assert (outside / "keep.txt").exists() and root.is_dir()
    remove_inside(root, root / "link")  # the link goes, not what it points to
    assert not (root / "link").exists() and (outside / "keep.txt").exists()
    remove_inside(root, root / "a")
    remove_inside(root, root / "f.txt")
    remove_inside(root, root / "never-there")
    assert list(root.iterdir()) == []


def test_restart_removes_only_the_suites_csv_and_task_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.Bench, "run", lambda self, only=None: (0, []))  # no model: only the clearing runs
    results, work = tmp_path / "results", tmp_path / "work"
    (work / "qa" / "dpo" / "seed0").mkdir(parents=True)
    (work / "unrelated").mkdir()
    results.mkdir()
    (results / "results.csv").write_text("suite\nx\n")
    (results / "notes.txt").write_text("mine")
    suite = write_suite(tmp_path / "s.yaml", name="ok", algorithms={"dpo": {}})
    outcome = runner.run_suite(str(suite), str(results), str(work), restart=True, progress=False)
    assert outcome["failures"] == []
    assert not (results / "results.csv").exists() and not (work / "qa").exists()
    assert (results / "notes.txt").read_text() == "mine" and (work / "unrelated").is_dir()


def test_a_second_bench_on_the_same_results_folder_is_refused(tmp_path, capsys):
    results, work = tmp_path / "results", tmp_path / "work"
    results.mkdir()
    csv = results / "results.csv"
    csv.write_text("suite,task\nok,qa\n")
    suite = write_suite(tmp_path / "s.yaml", name="ok", model=str(tmp_path / "no-model"), algorithms={"dpo": {}})
    with results_lock(csv) as lock:  # as the other bench process would hold it
        assert lock == results / "results.csv.lock"
        assert lock.read_text().strip() == str(os.getpid())
        args = ["bench", "--suite", suite, "--results", results, "--work-dir", work, "--restart"]
        assert run_cli(args) == 2
        err = _one_line_error(capsys)
        assert f"another prefopt bench (pid {os.getpid()}) is writing to {results}" in err and str(lock) in err
        with pytest.raises(PrefoptError, match=f"pid {os.getpid()}"), results_lock(csv):
            pass
    assert csv.read_text() == "suite,task\nok,qa\n"  # the refused --restart removed nothing
    assert not work.exists()
    with results_lock(csv):  # released: the next bench takes it
        pass


# ---------------------------------------------------------------- end to end on a tiny model


def _rows(csv: Path) -> list[tuple]:
    """The cells' rows (sanity rows left out)."""
    if not csv.exists():
        return []
    table = pd.read_csv(csv)
    table = table[table["output_kind"] != "sanity"]
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
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # the task's gold function: tests/helpers.py
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env=env)
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
    expected = {("letters", a, s) for a in ("dpo", "sft") for s in (0, 1)}
    assert sorted(after) == sorted(expected), after  # each cell exactly once
    assert after[: len(before)] == before  # earlier rows kept as they were
    table = pd.read_csv(csv)
    for column in ("win_rate_gold", "kl_k1", "kl_k3", "length", "length_ref", "gold_reward_ref",
                   "syc_answer_answer_drop_ref", "seconds_per_step", "peak_rss_mb", "tokens_processed"):  # fmt: skip
        assert table.loc[table["output_kind"] == "policy", column].notna().all(), column
    sanity = table[table["output_kind"] == "sanity"].set_index("algo")
    assert sorted(sanity.index) == ["sanity-best-of-4", "sanity-constant", "sanity-empty", "sanity-reference"]
    assert sanity["win_rate_gold"].between(0, 1).all()
    assert (results / "samples" / "letters" / "dpo" / "seed0.jsonl.gz").exists()
    assert (results / "curves" / "letters" / "sft" / "seed1.jsonl").exists()
    policies = table[table["output_kind"] == "policy"]
    assert ((policies["win_rate_gold"] >= 0) & (policies["win_rate_gold"] <= 1)).all()
    assert (policies["kl_k3"] >= 0).all()
    assert policies["git"].notna().all() and policies["config_hash"].nunique() == 2
    assert _unknown_columns(table) == []
    assert (results / "report.md").exists() and (results / "report.html").exists()

    # A third run has nothing to do and leaves the table as it was.
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", work]) == 0
    assert _rows(csv) == after
    prepared = json.loads((results / "suite.json").read_text())["prepared"]
    assert prepared["letters"]["pairs"] >= 2  # recorded from the cache though nothing ran


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
    assert ppo["hacking_gap"] == pytest.approx(ppo["proxy_gain_z"] - ppo["gold_gain_z"])
    assert ppo["hacking_gap_low"] <= ppo["hacking_gap_high"]
    assert 0 <= ppo["judge_cal_agreement"] <= 1 and ppo["judge_cal_n"] >= 1
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
    row = table[table["output_kind"] == "policy"].iloc[0]
    assert row["win_rate_gold"] == 0.5 and row["win_rate_gold_se"] == 0.0
    assert row["gold_reward"] == row["gold_reward_ref"] and row["length"] == row["length_ref"]
    assert abs(row["kl_k1"]) < 1e-6 and abs(row["kl_k3"]) < 1e-6
    for behaviour in ("answer", "are_you_sure", "feedback", "mimicry"):
        assert row[f"syc_{behaviour}_rate"] == row[f"syc_{behaviour}_rate_ref"] or math.isnan(row[f"syc_{behaviour}_rate"])
    assert row["capdelta_prefopt_arith"] == 0.0 and row["capn_prefopt_arith"] == 8
    assert row["cap_prefopt_arith"] == row["cap_ref_prefopt_arith"]


def test_bench_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert run_cli(["bench", "--suite", tmp_path / "none.yaml"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.e2e
def test_hacking_arm_trains_on_planted_proxy_pairs_and_writes_curves(tmp_path, tiny_model_dir):
    """reward-proxy on length-planted pairs; dpo on the same pairs measured against it; ppo against it with gold
    tracked per step; best-of-n under the proxy into hacking/<task>.json; the report draws them."""
    suite = micro_suite(
        tmp_path / "hack.yaml", tiny_model_dir,
        {"reward-proxy": {"algo": "reward", "pairs": "proxy"},
         "dpo-proxy": {"algo": "dpo", "pairs": "proxy", "proxy": "reward:{cell:reward-proxy}"},
         # the custom task's rule is no gold:<task> judge; any judge can be tracked, which is what is tested here
         "ppo-proxy": {"algo": "ppo", "judge": "reward:{cell:reward-proxy}", "gold": "reward:{cell:reward-proxy}",
                       "max_new_tokens": 6, "ppo_epochs": 1}},
        seeds=(0,),
    )  # fmt: skip
    text = suite.read_text() + "hacking: {feature: length, weight: 2.0}\n"
    suite.write_text(text)
    results, work = tmp_path / "results", tmp_path / "work"
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", work]) == 0
    proxy_pairs = [json.loads(line) for line in (work / "letters" / "prep" / "proxy_pairs.jsonl").open()]
    gold_pairs = [json.loads(line) for line in (work / "letters" / "prep" / "pairs.jsonl").open()]
    assert proxy_pairs and proxy_pairs != gold_pairs

    def longer(rows):
        return sum(len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows) / len(rows)

    assert longer(proxy_pairs) > longer(gold_pairs)  # the planted feature is in the proxy's labels only
    from helpers import letter_share

    for r in proxy_pairs:  # both scores kept, each named for what it is
        assert r["gold_chosen"] == letter_share(r["prompt"], r["chosen"]) and r["proxy_chosen"] > r["proxy_rejected"]
    table = pd.read_csv(results / "results.csv").set_index("algo")
    for name in ("dpo-proxy", "ppo-proxy"):
        row = table.loc[name]
        assert row["proxy"].startswith("reward:") and math.isfinite(row["hacking_gap"]), name
        assert row["hacking_gap"] == pytest.approx(row["proxy_gain_z"] - row["gold_gain_z"])
    assert "reward --algo" not in table.loc["dpo-proxy", "command"] and "--algo dpo" in table.loc["dpo-proxy", "command"]
    curve = [json.loads(line) for line in (results / "curves" / "letters" / "ppo-proxy" / "seed0.jsonl").open()]
    steps = [r for r in curve if "reward" in r]
    assert steps and all("gold" in r and "kl" in r for r in steps)
    hacking = json.loads((results / "hacking" / "letters.json").read_text())
    assert [p["n"] for p in hacking["best_of_n"]] == [1, 2, 4]
    assert hacking["best_of_n"][0]["kl"] == 0.0 and hacking["planted"]["feature"] == "length"
    agree = [float(r["gold_chosen"] > r["gold_rejected"]) + 0.5 * float(r["gold_chosen"] == r["gold_rejected"])
             for r in proxy_pairs]  # fmt: skip
    assert hacking["planted"]["proxy_pairs_gold_agreement"] == pytest.approx(sum(agree) / len(agree))
    assert "overoptimisation" in hacking
    assert (results / "plots" / "hacking_letters.png").exists()


def test_suite_bench_keys_are_checked(tmp_path):
    with pytest.raises(PrefoptError, match=r"algorithms.dpo-x.pairs: expected one of gold, proxy"):
        load_suite(write_suite(tmp_path / "a.yaml", name="x", algorithms={"dpo-x": {"algo": "dpo", "pairs": "both"}}))
    with pytest.raises(PrefoptError, match="add a 'hacking' section"):
        load_suite(write_suite(tmp_path / "b.yaml", name="x", algorithms={"d": {"algo": "dpo", "pairs": "proxy"}}))
    with pytest.raises(PrefoptError, match="reserved|sanity rows"):
        load_suite(write_suite(tmp_path / "c.yaml", name="x", algorithms={"sanity-dpo": {"algo": "dpo"}}))
    suite = load_suite(write_suite(tmp_path / "d.yaml", name="x", algorithms={"d2": {"algo": "dpo", "beta": 0.2}}))
    from prefopt.bench.suite import cell_options

    options = cell_options(suite, Cell("qa", "d2", 0), tmp_path, "data.jsonl")
    assert suite.algo("d2") == "dpo" and "algo" not in options and options["beta"] == 0.2


@pytest.mark.e2e
def test_an_http_judge_is_calibrated_before_the_suite_and_a_position_biased_one_is_not_informative(
    tmp_path, tiny_model_dir, monkeypatch
):  # fmt: skip
    """judge=http:... in a suite: calibrated on pairs of known gold preference first. A server that judges by the
    gold rule agrees with it on every pair; one that always answers "A" ties every pair (its two orders disagree)."""
    from helpers import letter_share
    from test_judges import ChatServer

    for name in ("PREFOPT_JUDGE_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    faithful = ChatServer(rule=lambda a, b: "A" if letter_share("", a) > letter_share("", b) else "B")
    biased = ChatServer(rule=lambda a, b: "A")
    try:
        for server, name in ((faithful, "faithful"), (biased, "biased")):
            suite = micro_suite(tmp_path / f"{name}.yaml", tiny_model_dir, {"sft": {}}, seeds=(0,),
                                judge=f"http:{server.url}", calibration_pairs=6)  # fmt: skip
            results = tmp_path / name
            assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 0
            row = pd.read_csv(results / "results.csv").set_index("algo").loc["sft"]
            report = (results / "report.md").read_text()
            assert row["judge_cal_n"] == 6 and row["judge"].startswith("http:")
            if name == "faithful":
                assert row["judge_cal_agreement"] == 1.0 and row["judge_cal_tie_rate"] == 0.0
                assert "not informative (agreement" not in report
            else:
                assert row["judge_cal_agreement"] == 0.5 and row["judge_cal_tie_rate"] == 1.0
                assert row["judge_cal_position_bias"] == 1.0
                assert "not informative (agreement 0.50" in report
    finally:
        faithful.close()
        biased.close()


@pytest.mark.e2e
def test_a_suite_whose_capability_items_overlap_its_prompts_refuses_to_run(tmp_path, tiny_model_dir):
    suite = micro_suite(tmp_path / "leak.yaml", tiny_model_dir, {"sft": {}}, seeds=(0,), capability=["prefopt_world"])
    prompts = tmp_path / "letters.jsonl"  # a training prompt that copies a capability item verbatim
    lines = prompts.read_text().splitlines()
    world = [json.loads(line) for line in (Path(__file__).parents[1] / "prefopt/evaluation/capability/prefopt_world.jsonl").open()]
    lines[0] = json.dumps({"prompt": world[3]["question"]})
    prompts.write_text("\n".join(lines) + "\n")
    results = tmp_path / "results"
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 2
    assert not (results / "results.csv").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("name", ["quick", "standard", "full"])
def test_the_shipped_suites_load(name):
    suite = load_suite(Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.yaml")
    assert suite.name == name


def test_the_full_suite_has_every_registered_algorithm_and_the_online_zoo_trains_on_gold():
    from prefopt.core import registry

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "full.yaml").read_text())
    algorithms = raw["algorithms"]
    assert set(registry.discover()) <= {spec.get("algo", name) for name, spec in algorithms.items()}
    for name in ("grpo", "dr-grpo", "dapo", "gspo", "rloo", "reinforce-pp", "online-dpo"):
        assert algorithms[name]["judge"] == "gold:{task}"  # the same reward source as the offline arms' labels


def test_a_resumed_suite_refuses_rows_of_another_code_version(tmp_path):
    suite = load_suite(write_suite(tmp_path / "a.yaml", name="x", algorithms={"dpo": {}}))
    row = {"task": "qa", "algo": "dpo", "seed": 0, "config_hash": config_hash(suite, Cell("qa", "dpo", 0)),
           "git": "0123e45"}
    table = pd.DataFrame([row])
    assert done_cells(table, suite, Path("r.csv"), code_version="0123e45") == {Cell("qa", "dpo", 0)}
    with pytest.raises(PrefoptError, match=r"r.csv row 1: qa/dpo/seed0 was run by code version 0123e45, this is "
                                           r"89abcde; a suite is not resumed across versions"):
        done_cells(table, suite, Path("r.csv"), code_version="89abcde")
    # outside a git checkout there is no version to compare: the row counts as done
    assert done_cells(table, suite, Path("r.csv"), code_version=None) == {Cell("qa", "dpo", 0)}


@pytest.mark.e2e
def test_bench_refuses_to_resume_a_results_folder_of_another_code_version(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "git_hash", lambda: "89abcde")
    suite_path = write_suite(tmp_path / "a.yaml", name="x", algorithms={"dpo": {}})
    suite = load_suite(suite_path)
    out = tmp_path / "results"
    out.mkdir()
    row = {"suite": "x", "suite_version": 1, "task": "qa", "algo": "dpo", "seed": 0,
           "config_hash": config_hash(suite, Cell("qa", "dpo", 0)), "output_kind": "model", "git": "0123e45"}
    results_table.append_row(out / "results.csv", row)
    before = (out / "results.csv").read_text()
    code = run_cli(["bench", "--suite", suite_path, "--results", out, "--work-dir", tmp_path / "work"])
    assert code == 2
    assert "was run by code version 0123e45, this is 89abcde" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == before  # nothing run, nothing written


# ---------------------------------------------------------------- sweeps, tuning, per-prompt records


def test_a_sweep_expands_into_one_entry_per_strength_of_one_arm(tmp_path):
    path = write_suite(tmp_path / "s.yaml", name="s", algorithms={"dpo": {"sweep": {"beta": [0.3, 0.03, 0.1]}},
                                                                  "sft": {}})  # fmt: skip
    suite = load_suite(path)
    assert list(suite.algorithms) == ["dpo_beta0.03", "dpo_beta0.1", "dpo_beta0.3", "sft"]
    assert suite.algorithms["dpo_beta0.1"]["beta"] == 0.1 and suite.arm("dpo_beta0.1") == "dpo"
    assert suite.strength("dpo_beta0.3") == ("beta", 0.3) and suite.strength("sft") is None
    assert suite.arm_entries("dpo") == ["dpo_beta0.03", "dpo_beta0.1", "dpo_beta0.3"]
    assert suite.tuning_entry("dpo") == "dpo_beta0.1" and suite.tuning_entry("sft") == "sft"
    assert [c.algo for c in cells(suite, ["dpo"])] == ["dpo_beta0.03", "dpo_beta0.1", "dpo_beta0.3"] * 1
    assert not suite.tuned("dpo")  # no tune section


@pytest.mark.parametrize(("entry", "message"), [
    ({"sweep": {"beta": []}}, "non-empty list"),
    ({"sweep": {"beta": [0.1, "x"]}}, "expected numbers"),
    ({"sweep": {"beta": [0.1], "lr": [1]}}, "one option"),
    ({"sweep": {"beta": [0.1]}, "beta": 0.2}, "cannot sweep 'beta'"),
    ({"arm": "x"}, "set by a sweep"),
])  # fmt: skip
def test_sweep_errors_name_the_file_and_entry(tmp_path, entry, message):
    path = write_suite(tmp_path / "s.yaml", name="s", algorithms={"dpo": entry})
    with pytest.raises(PrefoptError, match=rf"s\.yaml: algorithms\.dpo.*{message}"):
        load_suite(path)


def test_tune_section_errors_name_the_file_and_key(tmp_path):
    path = write_suite(tmp_path / "s.yaml", name="s", algorithms={"dpo": {}}, tune={"values": []})
    with pytest.raises(PrefoptError, match=r"s\.yaml: tune\.values"):
        load_suite(path)
    path = write_suite(tmp_path / "s.yaml", name="s", algorithms={"dpo": {}}, eval={"reference_samples": 0})
    with pytest.raises(PrefoptError, match=r"s\.yaml: eval\.reference_samples"):
        load_suite(path)


def test_an_entry_that_sets_the_tuned_option_is_not_tuned(tmp_path):
    path = write_suite(tmp_path / "s.yaml", name="s", tune={"values": [1e-4, 1e-3]},
                       algorithms={"dpo": {"sweep": {"beta": [0.1, 0.3]}}, "sft": {"lr": 1e-4}})  # fmt: skip
    suite = load_suite(path)
    assert suite.tuned("dpo") and not suite.tuned("sft")


def test_per_arm_tune_values_search_each_arm_on_its_own_scale(tmp_path):
    path = write_suite(tmp_path / "s.yaml", name="s", tune={"option": "beta", "values": {"dpo": [0.03, 0.3],
                                                                                        "ipo": [0.1, 1.0]}},
                       algorithms={"dpo": {"sweep": {"lr": [1e-4, 1e-3]}}, "ipo": {"sweep": {"lr": [1e-4, 1e-3]}},
                                   "sft": {}})  # fmt: skip
    suite = load_suite(path)
    assert suite.tune.values_for("dpo") == [0.03, 0.3] and suite.tune.values_for("ipo") == [0.1, 1.0]
    assert suite.tuned("dpo") and suite.tuned("ipo") and not suite.tuned("sft")  # sft: no values, not searched
    assert suite.strength("ipo_lr0.001") == ("lr", 0.001)


@pytest.mark.parametrize(("values", "message"), [
    ({"dpo": [0.1], "dpoo": [0.2]}, r"tune\.values: 'dpoo' is not an arm of this suite \(arms: dpo\)"),
    ({"dpo": []}, r"tune\.values\.dpo: expected a non-empty list of numbers"),
    ({"dpo": 0.1}, r"tune\.values\.dpo: expected a non-empty list of numbers"),
])  # fmt: skip
def test_per_arm_tune_values_errors_name_the_arm(tmp_path, values, message):
    path = write_suite(tmp_path / "s.yaml", name="s", tune={"option": "beta", "values": values},
                       algorithms={"dpo": {"sweep": {"lr": [1e-4, 1e-3]}}})  # fmt: skip
    with pytest.raises(PrefoptError, match=rf"s\.yaml: {message}"):
        load_suite(path)


def test_numbers_read_back_from_a_results_table_are_checked(tmp_path):
    from prefopt.bench.results import row_number

    path = tmp_path / "results.csv"
    assert row_number(path, 3, {"seed": "2"}, "seed", int) == 2 and row_number(path, 1, {"v": 0.5}, "v") == 0.5
    for value, kind in (("x", float), (None, float), ("1.5", int), ("", int)):
        with pytest.raises(PrefoptError, match=r"results\.csv row 3 field 'seed': expected a number"):
            row_number(path, 3, {"seed": value}, "seed", kind)


def test_gold_win_rates_average_the_decisions_against_every_reference_reply():
    # 0.5 vs (0.2, 0.5, 0.9): win, tie, loss -> 0.5; 1.0 vs (0.0,) -> 1
    assert runner.gold_win_rates([0.5, 1.0], [[0.2, 0.5, 0.9], [0.0]]) == [0.5, 1.0]


@pytest.mark.e2e
def test_a_tuned_sweep_records_its_search_strengths_and_per_prompt_kl(tmp_path, tiny_model_dir, capsys):
    suite = micro_suite(tmp_path / "sweep.yaml", tiny_model_dir, {"dpo": {"sweep": {"beta": [0.1, 0.5]}}},
                        seeds=(0,), reference_samples=2, sanity=False, probes=0)  # fmt: skip
    raw = yaml.safe_load(suite.read_text())
    raw["tune"] = {"values": [1e-5, 1e-3], "dev_prompts": 4, "seed": 0}
    suite.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 0
    tuning = pd.read_csv(results / "tuning.csv")
    assert sorted(tuning["value"]) == [1e-5, 1e-3] and (tuning["entry"] == "dpo_beta0.1").all()
    assert tuning["win_rate_gold_dev"].between(0, 1).all() and (tuning["dev_prompts"] == 4).all()
    best = tuning.sort_values("value").iloc[tuning.sort_values("value")["win_rate_gold_dev"].to_numpy().argmax()]
    table = pd.read_csv(results / "results.csv")
    assert _unknown_columns(table) == []
    assert sorted(table["algo"]) == ["dpo_beta0.1", "dpo_beta0.5"] and (table["arm"] == "dpo").all()
    assert sorted(table["strength"]) == [0.1, 0.5] and (table["strength_option"] == "beta").all()
    assert (table["tuned_lr"] == best["value"]).all()
    assert (table["comparisons_seen"] == table["steps"] * table["global_batch"]).all()
    from prefopt.bench.results import read_records, reference_samples_path, samples_path

    reference = read_records(reference_samples_path(results, "letters"))
    assert len(reference) == 4 and all(len(r["more"]) == 1 for r in reference)
    for row in table.to_dict("records"):
        records = read_records(samples_path(results, "letters", row["algo"], 0))
        assert len(records) == 4
        assert sum(r["kl_k1"] for r in records) / 4 == pytest.approx(row["kl_k1"], abs=1e-5)
        assert sum(r["win_gold"] for r in records) / 4 == pytest.approx(row["win_rate_gold"])
        for r, ref in zip(records, reference):
            golds = [ref["gold"], ref["more"][0]["gold"]]
            assert r["win_gold"] == sum(1.0 if r["gold"] > g else 0.0 if r["gold"] < g else 0.5 for g in golds) / 2
            assert r["kl_k1"] == pytest.approx(r["logp"] - r["ref_logp"], abs=1e-4)
    # resumed: nothing trains again, the search included
    before = (results / "tuning.csv").read_text()
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 0
    assert (results / "tuning.csv").read_text() == before
    # a damaged search table is one line naming file, row and field, not a traceback (one cell left to run)
    (results / "tuning.csv").write_text(before.replace(",1e-05,", ",x,", 1))
    (results / "results.csv").write_text("".join((results / "results.csv").read_text().splitlines(True)[:2]))
    capsys.readouterr()
    assert run_cli(["bench", "--suite", suite, "--results", results, "--work-dir", tmp_path / "work"]) == 2
    assert re.search(r"tuning\.csv row \d field 'value': expected a number, got 'x'", capsys.readouterr().err)


@pytest.mark.parametrize("name", ["standard", "full"])
def test_the_matched_kl_suites_give_every_arm_three_strengths_and_equal_budgets(name):
    """Offline arms: the same steps and labelled comparisons a step (an unpaired objective's batch holds each pair
    twice); online arms: the same steps and reward queries a step; every arm with a strength is swept over three of them."""
    from prefopt.core import registry
    from prefopt.training.config import split_options

    suite = load_suite(ROOT / "benchmarks" / f"{name}.yaml")
    assert suite.tune is not None and suite.eval.reference_samples >= 2
    per_step: dict[str, set] = {"offline": set(), "online": set()}
    for entry, options in suite.algorithms.items():
        cls = registry.get(suite.algo(entry))
        run_options = {**suite.train, **{k: v for k, v in options.items() if k not in ("algo", "pairs", "proxy",
                                                                                      "sweep", "arm", "strength")}}
        run, config = split_options(dict(run_options, model="m", data="d"), cls.Config, entry)
        if cls.produces != "policy":
            continue
        if cls.online:
            per_step["online"].add((run.steps, run.batch_size * cls(config).completions_per_prompt()))
        else:
            per_step["offline"].add((run.steps, run.batch_size / (2 if cls.inputs == "unpaired" else 1)))
        if suite.strength(entry) is not None:
            assert len(suite.arm_entries(suite.arm(entry))) == 3, entry
    assert len(per_step["offline"]) == 1, per_step
    assert len(per_step["online"]) <= 1, per_step
