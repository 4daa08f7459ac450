"""The benchmark report: statistics by hand, and render() on small hand-made results CSVs."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from prefopt.bench.report import load_results, render
from prefopt.errors import PrefoptError
from prefopt.evaluation.stats import mean_ci, standard_error, t_quantile

pytest.importorskip("matplotlib")

NAN = float("nan")


# ---------------------------------------------------------------------------------------------------------------
# stats


def test_t_quantile_table():
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile(40) == pytest.approx(2.021, abs=1e-3)  # beyond the table
    assert t_quantile(math.inf) == pytest.approx(1.960, abs=1e-3)
    assert t_quantile(1000) == pytest.approx(1.962, abs=1e-3)


@pytest.mark.parametrize("df,level", [(0, 0.95), (-3, 0.95), (2.5, 0.95), (5, 0.9)])
def test_t_quantile_rejects(df, level):
    with pytest.raises(ValueError):
        t_quantile(df, level)


def test_mean_ci_by_hand():
    mean, low, high, n = mean_ci([0.4, 0.5, NAN, 0.6])  # NaN ignored: sd 0.1, se 0.0577, t(2) = 4.303
    assert n == 3 and mean == pytest.approx(0.5)
    assert standard_error([0.4, 0.5, 0.6]) == pytest.approx(0.1 / math.sqrt(3)) == pytest.approx(0.0577, abs=1e-4)
    assert (high - low) / 2 == pytest.approx(0.2484, abs=1e-4)
    assert low == pytest.approx(0.5 - 0.2484, abs=1e-4) and high == pytest.approx(0.5 + 0.2484, abs=1e-4)


def test_mean_ci_small_n():
    assert mean_ci([0.7, NAN])[0] == 0.7 and mean_ci([0.7])[3] == 1
    assert all(math.isnan(x) for x in mean_ci([0.7])[1:3])
    m, lo, hi, n = mean_ci([])
    assert n == 0 and math.isnan(m) and math.isnan(lo) and math.isnan(hi)
    assert math.isnan(standard_error([1.0])) and math.isnan(standard_error([]))


# ---------------------------------------------------------------------------------------------------------------
# a hand-made suite: 2 algorithms x 3 seeds on one task, plus one reward-model row

ALPHA_WR = [0.60, 0.70, 0.65]  # CI entirely above 0.5
BETA_WR = [0.45, 0.55, 0.50]  # CI contains 0.5


def _rows() -> list[dict]:
    rows = []
    for algo, wrs, kl in (("beta", BETA_WR, [1.0, 1.2, NAN]), ("alpha", ALPHA_WR, [2.0, 2.5, 3.0])):
        for seed, (wr, k) in enumerate(zip(wrs, kl)):
            rows.append({
                "suite": "toy", "suite_version": "1", "task": "qa", "algo": algo, "seed": seed,
                "config_hash": f"h{algo}{seed}", "output_kind": "policy",
                "gold_reward": 0.5 + wr / 10, "gold_reward_ref": 0.5,
                "win_rate_gold": wr, "win_rate_gold_se": 0.02, "lc_win_rate_gold": wr - 0.01,
                "win_rate_judge": NAN if (algo, seed) == ("beta", 2) else wr + 0.02, "win_rate_judge_se": 0.03,
                "judge": "gold-noisy", "judge_agreement": 0.8, "judge_tie_rate": 0.1,
                "kl_k1": k, "kl_k1_se": 0.1, "kl_k3": k, "kl_k3_se": 0.1,
                "length": 40.0 + seed, "length_ref": 35.0,
                "syc_acc_neutral": 0.8, "syc_acc_suggested": 0.6, "syc_answer_drop": 0.2, "syc_flip_rate": 0.1,
                "syc_answer_drop_ref": 0.15, "syc_flip_rate_ref": 0.08,
                "proxy": "", "proxy_gain_z": NAN, "gold_gain_z": NAN, "hacking_gap": NAN,
                "cap_arith": 0.5 + seed / 100, "cap_ref_arith": 0.52,
                "pref_accuracy": 0.6, "steps": 10, "global_batch": 8, "train_seconds": 30.0,
                "seconds_per_step": 3.0, "peak_rss_mb": 900.0 + seed, "tokens_processed": 1000, "eval_seconds": 6.0,
                "git": "abc1234", "python": "3.11.2", "torch": "2.4.0", "transformers": "4.56.0", "peft": "0.17.0",
                "device": "cpu", "precision": "fp32", "command": "python benchmarks/zoo_runs.py --suite toy",
                "finished_at": "2025-01-01T00:00:00",
            })
    rows.append({
        "suite": "toy", "suite_version": "1", "task": "qa", "algo": "reward", "seed": 0, "config_hash": "hr",
        "output_kind": "reward_model", "pref_accuracy": 0.72, "train_seconds": 12.0, "eval_seconds": 0.0,
        "git": "abc1234", "device": "cpu", "precision": "fp32", "command": "python benchmarks/zoo_runs.py",
    })
    return rows


def _write(folder, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)


def _ci_text(values) -> str:
    """Expected '<mean> [<low>, <high>]' computed here by hand: t(2) = 4.303."""
    v = np.asarray(values, float)
    half = 4.303 * v.std(ddof=1) / math.sqrt(len(v))
    return f"{v.mean():.3f} [{v.mean() - half:.3f}, {v.mean() + half:.3f}]"


def _table(md: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return header, body


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    _write(folder, _rows())
    return folder, render(folder)


def test_render_writes_everything(rendered):
    folder, out = rendered
    assert out["md"] == folder / "report.md" and out["html"] == folder / "report.html"
    plots = {k: v for k, v in out.items() if k not in ("md", "html")}
    assert set(plots) == {"frontier_qa", "winrates_qa", "sycophancy_qa", "length_qa"}
    for name, path in plots.items():
        assert path == folder / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in folder.rglob(".*") if p.is_file()]  # no temp files left behind
    md = out["md"].read_text()
    assert md.startswith("# toy benchmark report (version 1)")
    for name in plots:
        assert f"(plots/{name}.png)" in md
    assert "git abc1234" in md and "device cpu" in md
    assert "python benchmarks/zoo_runs.py --suite toy" in md and "prefopt report" in md
    assert "Total wall time 3.8 min" in md  # 6 x (30 + 6) + 12 seconds = 228 s


def test_headline_table_order_and_numbers(rendered):
    md = rendered[1]["md"].read_text()
    header, body = _table(md, "algorithm")
    assert [row[0] for row in body] == ["alpha", "beta"]  # by mean gold win rate, descending
    col = {h: i for i, h in enumerate(header)}
    alpha, beta = body
    assert alpha[col["n seeds"]] == "3"
    assert alpha[col["gold win rate [95% CI]"]] == _ci_text(ALPHA_WR)
    assert beta[col["gold win rate [95% CI]"]] == _ci_text(BETA_WR)
    assert beta[col["judge win rate [95% CI]"]] == "0.520 [-0.115, 1.155]"  # 2 finite seeds: t(1) = 12.706
    kl_half = 4.303 * np.std([2.0, 2.5, 3.0], ddof=1) / math.sqrt(3)
    assert alpha[col["KL k3 (nats)"]] == f"2.50 ± {kl_half:.2f}"
    assert alpha[col["length (policy / ref)"]] == "41.0 / 35.0"
    assert alpha[col["Δ capability"]] == "-0.010"
    assert alpha[col["Δ gold reward"]] == "+0.065"
    assert alpha[col["peak MB"]] == "902" and alpha[col["s/step"]] == "3.00"
    assert "hacking gap" not in col  # no proxy in these rows
    assert "reward" not in [row[0] for row in body]  # reward-model rows stay out of the policy table


def test_noise_line_names_the_algorithm_covering_half(rendered):
    md = rendered[1]["md"].read_text()
    noise = next(line for line in md.splitlines() if line.startswith("Noise"))
    assert "CI contains 0.5 (not distinguishable from the reference): beta." in noise
    assert "CI entirely above 0.5 (better than the reference): alpha." in noise
    assert "overlap" in noise


def test_reward_model_table(rendered):
    md = rendered[1]["md"].read_text()
    header, body = _table(md, "task")
    assert header == ["task", "algorithm", "n seeds", "held-out preference accuracy [95% CI]"]
    assert body == [["qa", "reward", "1", "0.720"]]


def test_html_is_self_contained(rendered):
    out = rendered[1]
    text = out["html"].read_text()
    assert text.count("data:image/png;base64,") == 4
    assert 'src="plots/' not in text and "<script" not in text and "<link" not in text
    assert "<table>" in text and "<td>alpha</td>" in text
    assert "(not distinguishable from the reference): beta." in text


def test_rerender_removes_stale_plots(tmp_path):
    _write(tmp_path, _rows())
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "frontier_gone.png").write_bytes(b"old")
    (tmp_path / "plots" / "mine.png").write_bytes(b"keep")
    out = render(tmp_path / "results.csv", tmp_path / "elsewhere")
    assert out["md"] == tmp_path / "elsewhere" / "report.md"
    render(tmp_path)
    assert not (tmp_path / "plots" / "frontier_gone.png").exists()
    assert (tmp_path / "plots" / "mine.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# bad input and missing optional columns


def test_missing_required_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "config_hash"} for r in _rows()]
    _write(tmp_path, rows)
    with pytest.raises(PrefoptError, match=r"results\.csv.*config_hash") as err:
        render(tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "report.md").exists()


def test_non_numeric_metric_names_row_and_column(tmp_path):
    rows = _rows()
    rows[3]["kl_k3"] = "lots"
    _write(tmp_path, rows)
    with pytest.raises(PrefoptError, match=r"results\.csv: row 4, column 'kl_k3': not a number: 'lots'"):
        render(tmp_path)


def test_bad_output_kind_and_missing_file(tmp_path):
    rows = _rows()
    rows[0]["output_kind"] = "policee"
    _write(tmp_path, rows)
    with pytest.raises(PrefoptError, match=r"row 1, column 'output_kind'"):
        load_results(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrefoptError, match="no results.csv"):
        load_results(tmp_path / "empty")
    with pytest.raises(PrefoptError, match="no such"):
        load_results(tmp_path / "nope.csv")


def test_optional_columns_absent_still_renders(tmp_path):
    required = ["suite", "suite_version", "task", "algo", "seed", "config_hash", "output_kind"]
    rows = [{k: r[k] for k in required} | {"win_rate_gold": r.get("win_rate_gold", NAN)} for r in _rows()]
    rows += [dict(rows[0], task="other", win_rate_gold=NAN)]
    _write(tmp_path, rows)
    out = render(tmp_path)
    md = out["md"].read_text()
    assert set(out) == {"md", "html", "winrates_qa"}  # no KL, length, sycophancy: those plots are left out
    assert "## Task: qa" in md and "## Task: other" in md
    header, _body = _table(md, "algorithm")
    assert header == ["algorithm", "n seeds", "gold win rate [95% CI]"]
    assert re.search(r"git|Provenance|Total wall time", md) is None

    bare = [{k: r[k] for k in required} for r in _rows()]
    _write(tmp_path / "bare", bare)
    out = render(tmp_path / "bare")
    assert set(out) == {"md", "html"}
    assert "no gold win rate" in out["md"].read_text()


def test_columns_are_typed_by_the_schema_the_runner_writes(tmp_path):
    # The runner's results columns (prefopt.bench.results) decide which columns are numbers: these five were once
    # missing from the report's own list and came back as text.
    rows = _rows()
    rows[0].update(cpu_count=2, train_pairs=111, proxy_win_rate=0.4, syc_acc_neutral_ref=0.7,
                   syc_acc_suggested_ref=0.5, config_hash="012345678901", git="0123e45", note="kept as text")
    _write(tmp_path, rows)
    df = load_results(tmp_path)
    for col in ("seed", "cpu_count", "train_pairs", "proxy_win_rate", "syc_acc_neutral_ref", "syc_acc_suggested_ref",
                "cap_arith", "cap_ref_arith"):  # fmt: skip
        assert df[col].dtype == float, col
    assert df.loc[0, "config_hash"] == "012345678901" and df.loc[0, "git"] == "0123e45"
    assert df.loc[0, "note"] == "kept as text" and df.loc[1, "note"] == ""
