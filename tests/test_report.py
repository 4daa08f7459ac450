"""The benchmark report: statistics by hand, and render() on small hand-made results CSVs."""

from __future__ import annotations

import json
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
CALIBRATION_OK = {"judge_cal_agreement": 0.8, "judge_cal_low": 0.7, "judge_cal_high": 0.88, "judge_cal_n": 200,
                  "judge_cal_tie_rate": 0.05, "judge_cal_position_bias": 0.1, "judge_cal_threshold": 0.6}
CALIBRATION_BAD = dict(CALIBRATION_OK, judge_cal_agreement=0.5, judge_cal_low=0.4, judge_cal_high=0.6)
BETA_WR = [0.45, 0.55, 0.50]  # CI contains 0.5


def _rows() -> list[dict]:
    rows = []
    for algo, wrs, kl in (("beta", BETA_WR, [1.0, 1.2, NAN]), ("alpha", ALPHA_WR, [2.0, 2.5, 3.0])):
        for seed, (wr, k) in enumerate(zip(wrs, kl)):
            rows.append({
                "suite": "toy", "suite_version": "1", "task": "qa", "algo": algo, "seed": seed,
                "config_hash": f"h{algo}{seed}", "output_kind": "policy",
                "gold_reward": 0.5 + wr / 10, "gold_reward_ref": 0.5,
                "win_rate_gold": wr, "win_rate_gold_se": 0.02,
                "win_rate_judge": NAN if (algo, seed) == ("beta", 2) else wr + 0.02, "win_rate_judge_se": 0.03,
                "judge": "gold-noisy", "judge_agreement": 0.8, "judge_tie_rate": 0.1, "judge_position_bias": 0.05,
                **CALIBRATION_OK,
                "kl_k1": k, "kl_k1_se": 0.1, "kl_k3": k, "kl_k3_se": 0.1,
                "length": 40.0 + seed, "length_ref": 35.0,
                "syc_answer_rate": 0.2, "syc_answer_n": 40, "syc_answer_acc_neutral": 0.8,
                "syc_answer_acc_suggested": 0.6, "syc_answer_answer_drop": 0.2, "syc_answer_rate_ref": 0.15,
                "syc_answer_n_ref": 40, "syc_are_you_sure_rate": 0.1 + seed / 10, "syc_are_you_sure_n": 30,
                "syc_are_you_sure_rate_ref": 0.08, "syc_are_you_sure_n_ref": 30,
                "proxy": "", "proxy_gain_z": NAN, "gold_gain_z": NAN, "hacking_gap": NAN,
                "cap_arith": 0.5 + seed / 100, "cap_ref_arith": 0.52, "capdelta_arith": seed / 100 - 0.02,
                "capdelta_low_arith": seed / 100 - 0.05, "capdelta_high_arith": seed / 100 + 0.01, "capn_arith": 100,
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


def _table(md: str, first_header: str, having: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The first table whose first header is `first_header` (and that has a header `having`)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")
                 and (having is None or f"| {having} |" in line))
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
    header, body = _table(md, "algorithm", "gold win rate [95% CI]")
    assert [row[0] for row in body] == ["alpha", "beta"]  # by mean gold win rate, descending
    col = {h: i for i, h in enumerate(header)}
    alpha, beta = body
    assert alpha[col["n seeds"]] == "3"
    assert alpha[col["gold win rate [95% CI]"]] == _ci_text(ALPHA_WR)
    assert beta[col["gold win rate [95% CI]"]] == _ci_text(BETA_WR)
    kl_half = 4.303 * np.std([2.0, 2.5, 3.0], ddof=1) / math.sqrt(3)
    assert alpha[col["KL k3 (nats)"]] == f"2.50 ± {kl_half:.2f}"
    assert alpha[col["length (policy / ref)"]] == "41.0 / 35.0"
    assert alpha[col["Δ gold reward"]] == "+0.065"
    assert "LC win rate (gold) [95% CI]" not in col  # no samples files: no LC fit
    assert "reward" not in [row[0] for row in body]  # reward-model rows stay out of the policy table

    header, body = _table(md, "algorithm", "judge win rate [95% CI]")  # an informative judge: its numbers shown
    col = {h: i for i, h in enumerate(header)}
    beta = body[[row[0] for row in body].index("beta")]
    assert beta[col["judge win rate [95% CI]"]] == "0.520 [-0.115, 1.155]"  # 2 finite seeds: t(1) = 12.706
    assert beta[col["agreement with gold"]] == "0.800" and beta[col["position bias"]] == "0.050"
    assert "AI judge gold-noisy: calibration against gold before the suite: agreement 0.80 [0.70, 0.88] on 200 " \
           "pairs; ties 0.05, position bias 0.10." in md

    header, body = _table(md, "algorithm", "Δ arith [paired 95% CI]")
    alpha = body[[row[0] for row in body].index("alpha")]
    assert alpha[header.index("Δ arith [paired 95% CI]")] == "-0.010 [-0.040, +0.020]"  # seeds' bounds averaged
    assert "Reference accuracy: arith 0.520 on 100 items." in md

    header, body = _table(md, "model")
    assert header == ["model", "answer (n=40)", "are_you_sure (n=30)"]
    assert body[0] == ["reference", "0.150", "0.080"]
    assert body[1] == ["alpha", "0.200", "0.200"]  # are_you_sure: seeds 0.1, 0.2, 0.3

    header, body = _table(md, "algorithm", "s/step")
    alpha = body[[row[0] for row in body].index("alpha")]
    assert alpha[header.index("peak MB")] == "902" and alpha[header.index("s/step")] == "3.00"
    assert "Reward hacking" not in md  # no proxy in these rows, no hacking file


def test_noise_line_names_the_algorithm_covering_half(rendered):
    md = rendered[1]["md"].read_text()
    noise = next(line for line in md.splitlines() if line.startswith("Noise"))
    assert "CI contains 0.5 (not distinguishable from the reference): beta." in noise
    assert "CI entirely above 0.5 (better than the reference): alpha." in noise
    assert "overlap" in noise
    ses = [np.std(np.asarray(v, float)[np.isfinite(v)], ddof=1) / math.sqrt(np.isfinite(v).sum())
           for v in (ALPHA_WR, BETA_WR)]  # fmt: skip
    se = float(np.median(ses))  # the minimum detectable difference, by hand: (z_0.975 + z_0.8) * SE
    assert f"departure from parity (0.5) of {(1.959964 + 0.841621) * se:.3f} is detectable" in noise
    assert f"a difference of {(1.959964 + 0.841621) * se * math.sqrt(2):.3f} between two algorithms" in noise


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
    assert "AI judge" not in md and "Sanity rows" not in md and "Example replies" not in md
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
    rows[0].update(cpu_count=2, train_pairs=111, proxy_win_rate=0.4, syc_answer_acc_neutral_ref=0.7,
                   syc_feedback_unparsed=3, config_hash="012345678901", git="0123e45", note="kept as text")
    _write(tmp_path, rows)
    df = load_results(tmp_path)
    for col in ("seed", "cpu_count", "train_pairs", "proxy_win_rate", "syc_answer_acc_neutral_ref",
                "syc_feedback_unparsed", "cap_arith", "cap_ref_arith", "capdelta_arith", "capdelta_low_arith",
                "capn_arith", "judge_cal_n", "judge_position_bias"):  # fmt: skip
        assert df[col].dtype == float, col
    assert df.loc[0, "config_hash"] == "012345678901" and df.loc[0, "git"] == "0123e45"
    assert df.loc[0, "note"] == "kept as text" and df.loc[1, "note"] == ""


# ---------------------------------------------------------------------------------------------------------------
# a full results folder: 12 algorithms x 2 seeds, sanity rows, per-prompt samples, training curves, reward hacking

N_PROMPTS = 20
ALGOS = [f"algo{k:02d}" for k in range(12)]
ONLINE = ALGOS[6:]  # log reward, gold and kl; the others loss and margin
PROXIED = ALGOS[6:8]  # trained against the proxy
JUDGE_WR = 0.987  # every policy row's judge win rate: must not appear when the judge is not informative
KL_BOUND_16 = math.log(16) - 15 / 16
LONG_REPLY = "word " * 80


def _ref_record(i: int) -> dict:
    return {"i": i, "prompt": f"Question {i}: what is {i} plus {i}?", "reply": f"reference answer {i}",
            "length": 10 + i % 5, "gold": (i % 3) / 2}


def _cell_records(algo: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(ALGOS.index(algo) * 10 + seed if algo in ALGOS else 1000 + len(algo))
    out = []
    for i in range(N_PROMPTS):
        if algo == "sanity-empty":
            reply, gold, length = "", -0.5, 0
        elif algo == "sanity-constant":
            reply, gold, length = "WATER", 0.0, 1
        else:
            reply = LONG_REPLY if (algo, seed, i) == ("algo00", 0, 0) else f"{algo} seed {seed} says {2 * i}"
            gold = round(float(rng.uniform(0.1, 0.9)), 2) + (0.5 if algo == "sanity-best-of-16" else 0.0)
            length = int(8 + rng.integers(0, 10))
        out.append({"i": i, "prompt": _ref_record(i)["prompt"], "reply": reply, "length": length, "gold": gold,
                    "judge": float(rng.choice([0.0, 0.5, 1.0])), "judge_proba": None})
    return out


def _decisions(records: list[dict]) -> list[float]:
    refs = [_ref_record(r["i"])["gold"] for r in records]
    return [1.0 if r["gold"] > g else 0.0 if r["gold"] < g else 0.5 for r, g in zip(records, refs)]


def _full_rows(calibration: dict) -> list[dict]:
    base = {"suite": "full", "suite_version": "2", "task": "qa", "judge": "gold-noisy", **calibration,
            "gold_reward_ref": 0.5, "length_ref": 12.0, "syc_answer_rate_ref": 0.3, "syc_answer_n_ref": 40,
            "cap_ref_arith": 0.5, "capn_arith": 100}
    rows = []
    for k, algo in enumerate(ALGOS):
        for seed in (0, 1):
            records = _cell_records(algo, seed)
            row = dict(base, algo=algo, seed=seed, config_hash=f"h{k}{seed}", output_kind="policy",
                       gold_reward=float(np.mean([r["gold"] for r in records])),
                       win_rate_gold=float(np.mean(_decisions(records))), win_rate_gold_se=0.1,
                       win_rate_judge=JUDGE_WR, win_rate_judge_se=0.01, judge_agreement=0.7, judge_tie_rate=0.1,
                       judge_position_bias=0.05, kl_k1=0.1 * k + seed / 10, kl_k3=0.1 * k + seed / 10,
                       kl_k3_se=0.02, length=float(np.mean([r["length"] for r in records])),
                       syc_answer_rate=0.2 + k / 100, syc_answer_n=40, cap_arith=0.5 + k / 100,
                       capdelta_arith=k / 100, capdelta_low_arith=k / 100 - 0.03, capdelta_high_arith=k / 100 + 0.03,
                       steps=10, seconds_per_step=1.0 + k, peak_rss_mb=800.0, train_seconds=10.0, proxy="")
            if algo in PROXIED:
                row.update(proxy="reward:rm", proxy_reward=1.0 + k / 10, proxy_reward_ref=0.5, proxy_gain_z=2.0,
                           gold_gain_z=0.5, proxy_win_rate=0.8, hacking_gap=1.5 + seed / 10, hacking_gap_low=1.0,
                           hacking_gap_high=2.0)
            rows.append(row)
    for algo in ("sanity-empty", "sanity-constant", "sanity-reference", "sanity-best-of-16"):
        records = _cell_records(algo, 0)
        rows.append(dict(base, algo=algo, seed=0, config_hash="hs", output_kind="sanity",
                         gold_reward=float(np.mean([r["gold"] for r in records])),
                         win_rate_gold=float(np.mean(_decisions(records))), win_rate_gold_se=0.05,
                         win_rate_judge=JUDGE_WR - 0.001, win_rate_judge_se=0.01,
                         length=float(np.mean([r["length"] for r in records])),
                         kl_bound=KL_BOUND_16 if algo == "sanity-best-of-16" else NAN,
                         kl_k1=NAN if algo == "sanity-best-of-16" else 0.0,
                         kl_k3=NAN if algo == "sanity-best-of-16" else 0.0))  # fmt: skip
    return rows


def _write_jsonl(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_full(folder, calibration=CALIBRATION_OK, files: bool = True) -> None:
    from prefopt.bench.results import curve_path, hacking_path, reference_samples_path, samples_path

    rows = _full_rows(calibration)
    _write(folder, rows)
    if not files:
        return
    _write_jsonl(reference_samples_path(folder, "qa"), [_ref_record(i) for i in range(N_PROMPTS)])
    for row in rows:
        _write_jsonl(samples_path(folder, "qa", row["algo"], row["seed"]), _cell_records(row["algo"], row["seed"]))
        if row["output_kind"] != "policy":
            continue
        if row["algo"] in ONLINE:
            lines = [{"step": s, "reward": 0.5 + s / 10, "gold": 0.5 - s / 50, "kl": s / 5} for s in range(1, 11)]
        else:
            lines = [{"step": s, "loss": 0.7 - s / 50 - row["seed"] / 100, "margin": s / 10} for s in range(1, 11)]
        _write_jsonl(curve_path(folder, "qa", row["algo"], row["seed"]), lines)
    hacking = {"proxy": "reward:rm", "planted": {"feature": "exclamation", "rate_ref": 0.1},
               "best_of_n": [{"n": n, "kl": math.log(n) - (n - 1) / n, "proxy": 0.3 * math.log2(n),
                              "proxy_low": 0.2 * math.log2(n), "proxy_high": 0.4 * math.log2(n),
                              "gold": 0.1 * math.log2(n), "gold_low": 0.0, "gold_high": 0.2 * math.log2(n)}
                             for n in (1, 2, 4, 8, 16)],
               "overoptimisation": {"peak_gold_n": 8}}  # fmt: skip
    hacking_path(folder, "qa").parent.mkdir(parents=True, exist_ok=True)
    hacking_path(folder, "qa").write_text(json.dumps(hacking))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    _write_full(folder)
    out = render(folder)
    return folder, out, out["md"].read_text()


def _all_tables(md: str) -> list[list[str]]:
    lines = md.splitlines()
    return [[c for c in lines[i].strip().strip("|").split(" | ")] for i in range(len(lines) - 1)
            if lines[i].startswith("| ") and lines[i + 1].startswith("|:---")]


def _row(body: list[list[str]], name: str) -> list[str]:
    return next(row for row in body if row[0] == name)


def test_full_folder_renders_every_section_and_plot(full):
    _folder, out, md = full
    assert set(out) - {"md", "html"} == {f"{k}_qa" for k in ("frontier", "winrates", "length", "sycophancy",
                                                              "hacking", "curves")}  # fmt: skip
    for name in set(out) - {"md", "html"}:
        assert out[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(plots/{name}.png)" in md
    for section in ("Gold rule", "Sanity rows", "AI judge", "Sycophancy", "Capability", "Reward hacking",
                    "Training and cost", "Example replies"):  # fmt: skip
        assert f"### {section}" in md
    assert "12 algorithms" in md and "4 sanity" in md
    assert "every number in the tables comes from results.csv and the per-prompt samples files" in md


def test_no_table_wider_than_nine_columns(full):
    tables = _all_tables(full[2])
    assert len(tables) >= 8
    assert max(len(header) for header in tables) <= 9


def test_joint_lc_win_rate_matches_the_fit_on_the_samples(full):
    from prefopt.evaluation.length_control import length_controlled_win_rates

    md = full[2]
    models, instructions, decisions, len_model, len_ref = [], [], [], [], []
    cells = [(a, s) for a in ALGOS for s in (0, 1)]
    cells += [(a, 0) for a in ("sanity-empty", "sanity-constant", "sanity-reference", "sanity-best-of-16")]
    for algo, seed in sorted(cells):
        records = _cell_records(algo, seed)
        for rec, d in zip(records, _decisions(records)):
            models.append(algo)
            instructions.append(rec["i"])
            decisions.append(d)
            len_model.append(rec["length"])
            len_ref.append(_ref_record(rec["i"])["length"])
    lc = length_controlled_win_rates(models, instructions, decisions, len_model, len_ref, bootstrap=200, seed=0)

    header, body = _table(md, "algorithm", "LC win rate (gold) [95% CI]")
    col = header.index("LC win rate (gold) [95% CI]")
    for algo in ("algo00", "algo07"):
        est = lc[algo]
        assert _row(body, algo)[col] == f"{est.lc:.3f} [{est.low:.3f}, {est.high:.3f}]"
        assert est.low < est.lc < est.high
    header, body = _table(md, "sanity row")
    est = lc["sanity-empty"]
    assert _row(body, "sanity-empty")[header.index("LC win rate (gold) [95% CI]")] == \
        f"{est.lc:.3f} [{est.low:.3f}, {est.high:.3f}]"  # fmt: skip


def test_sanity_rows_are_a_separate_table(full):
    md = full[2]
    header, body = _table(md, "sanity row")
    assert [row[0] for row in body] == ["sanity-empty", "sanity-constant", "sanity-reference", "sanity-best-of-16"]
    assert header[:3] == ["sanity row", "reply", "gold reward"] and "n seeds" not in header
    assert _row(body, "sanity-constant")[1] == '"WATER" to every prompt'
    assert _row(body, "sanity-best-of-16")[header.index("KL (nats)")] == f"≤ {KL_BOUND_16:.2f} (bound)"
    assert _row(body, "sanity-empty")[header.index("gold win rate")] == "0.000 ± 0.050 SE"
    assert "shows the noise floor" in md and "must score below the reference" in md
    _, policy_body = _table(md, "algorithm", "gold win rate [95% CI]")
    assert not [row for row in policy_body if row[0].startswith("sanity-")]


def test_informative_judge_shows_its_win_rates(full):
    md = full[2]
    assert "calibration against gold before the suite: agreement 0.80 [0.70, 0.88] on 200 pairs" in md
    header, body = _table(md, "algorithm", "judge win rate [95% CI]")
    assert _row(body, "algo03")[header.index("judge win rate [95% CI]")] == f"{JUDGE_WR:.3f} [{JUDGE_WR:.3f}, " \
        f"{JUDGE_WR:.3f}]"  # fmt: skip
    assert "LC win rate (judge) [95% CI]" in header
    assert "judge win rate" in _table(md, "sanity row")[0]


def test_uninformative_judge_hides_its_win_rates(tmp_path):
    _write_full(tmp_path, CALIBRATION_BAD)
    out = render(tmp_path)
    md = out["md"].read_text()
    assert ("AI judge gold-noisy: not informative (agreement 0.50 [0.40, 0.60] on 200 pairs; ties 0.05, position "
            "bias 0.10). Its win rates are not shown") in md
    assert "judge win rate" not in md and "LC win rate (judge)" not in md
    assert f"{JUDGE_WR:.3f}" not in md and f"{JUDGE_WR - 0.001:.3f}" not in md
    assert f"{JUDGE_WR:.3f}" not in out["html"].read_text()
    header, _body = _table(md, "algorithm", "agreement with gold")
    assert header == ["algorithm", "n seeds", "agreement with gold", "ties", "position bias"]
    assert "(gold rule)" in md  # the win-rate plot draws gold only


def test_judge_state_agrees_with_calibration_describe():
    from prefopt.bench.report import judge_state
    from prefopt.evaluation.judge_protocol import Calibration

    for cal in (CALIBRATION_OK, CALIBRATION_BAD, dict(CALIBRATION_OK, judge_cal_threshold=0.85)):
        state = judge_state(pd.DataFrame([cal]))
        c = Calibration(cal["judge_cal_agreement"], cal["judge_cal_low"], cal["judge_cal_high"], cal["judge_cal_n"],
                        cal["judge_cal_tie_rate"], cal["judge_cal_position_bias"])
        assert state.text == c.describe(cal["judge_cal_threshold"], details=True)
        assert state.show == c.informative(cal["judge_cal_threshold"])
    assert judge_state(pd.DataFrame([{"win_rate_judge": 0.6}])).text is None  # an old folder: no calibration


def test_example_prompts_table(full):
    from prefopt.bench.report import Samples, example_prompts

    md = full[2]
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | prompt "))
    header = lines[start].strip("|").split(" | ")
    chosen = [int(h.strip().split()[-1]) for h in header[1:]]
    assert len(chosen) == 3
    # the three prompts whose seed-0 gold scores (reference and algorithms) spread most, ties by lowest index
    spread = {i: np.ptp([_ref_record(i)["gold"]] + [_cell_records(a, 0)[i]["gold"] for a in ALGOS])
              for i in range(N_PROMPTS)}
    assert chosen == sorted(spread, key=lambda i: (-spread[i], i))[:3]
    samples = Samples({i: _ref_record(i) for i in range(N_PROMPTS)},
                      {(a, s): {r["i"]: r for r in _cell_records(a, s)} for a in ALGOS for s in (0, 1)})
    assert example_prompts(samples, ALGOS)[0] == chosen
    i = chosen[0]
    _, body = _table(md, "model", f"prompt {i}")
    ref_row = _row(body, "reference")
    assert ref_row[1] == f"reference answer {i} (gold {_ref_record(i)['gold']:.2f})"
    assert _row(body, "prompt")[1] == _ref_record(i)["prompt"]
    algo_row = _row(body, "algo05")
    assert algo_row[1] == f"algo05 seed 0 says {2 * i} (gold {_cell_records('algo05', 0)[i]['gold']:.2f})"
    assert [row[0] for row in body][2:] == [row[0] for row in _table(md, "algorithm", "gold win rate [95% CI]")[1]]


def test_example_reply_is_cut_to_200_characters(tmp_path):
    from prefopt.bench.report import _clip

    assert _clip(LONG_REPLY) == ("word " * 40)[:199].rstrip() + "…" and len(_clip(LONG_REPLY)) <= 200
    assert _clip("a\n|b|") == "a |b|" and _clip("  ") == "(empty)"


def test_sycophancy_capability_and_hacking_tables(full):
    md = full[2]
    header, body = _table(md, "model")
    assert header == ["model", "answer (n=40)"]
    assert body[0] == ["reference", "0.300"] and _row(body, "algo03") == ["algo03", "0.230"]
    header, body = _table(md, "algorithm", "Δ arith [paired 95% CI]")
    assert _row(body, "algo03")[2] == "+0.030 [+0.000, +0.060]"
    header, body = _table(md, "algorithm", "hacking gap [95% CI]")
    assert sorted(row[0] for row in body) == PROXIED
    gap = _row(body, "algo06")[header.index("hacking gap [95% CI]")]
    assert gap == f"+1.550 [{1.55 - 12.706 * 0.05:+.3f}, {1.55 + 12.706 * 0.05:+.3f}]"  # 2 seeds: t(1)
    assert _row(body, "algo06")[header.index("proxy")] == "reward:rm"
    header, body = _table(md, "n")
    assert header == ["n", "KL (nats)", "proxy gain (z) [95% CI]", "gold gain (z) [95% CI]"]
    assert body[-1] == ["16", f"{KL_BOUND_16:.2f}", "+1.200 [+0.800, +1.600]", "+0.400 [+0.000, +0.800]"]
    assert "planted feature: feature exclamation; rate_ref 0.100." in md


def test_plot_styles_are_distinct_beyond_ten():
    from prefopt.bench.report import plot_styles

    for n in (5, 12, 20, 25, 60):
        styles = plot_styles([f"a{k}" for k in range(n)])
        assert len(set(styles.values())) == n
        if n <= 20:
            assert len({colour for colour, _ in styles.values()}) == n  # distinct colours up to 20
    assert len({marker for _, marker in plot_styles([f"a{k}" for k in range(12)]).values()}) > 1


def test_curve_mean_over_seeds():
    from prefopt.bench.report import _curve_mean

    runs = [[{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 2, "loss": 0.7}],
            [{"step": 1, "loss": 0.8}, {"step": 3, "margin": 1.0}]]  # fmt: skip
    assert _curve_mean(runs, "loss") == {1.0: pytest.approx(0.9), 2.0: pytest.approx(0.6)}
    assert _curve_mean(runs, "kl") == {}


def test_full_folder_without_side_files_still_renders(tmp_path):
    _write_full(tmp_path, files=False)
    out = render(tmp_path)
    md = out["md"].read_text()
    assert set(out) - {"md", "html"} == {f"{k}_qa" for k in ("frontier", "winrates", "length", "sycophancy",
                                                              "hacking")}  # fmt: skip
    assert "LC win rate (gold)" not in md and "Example replies" not in md and "Best-of-n against the proxy" not in md
    assert "### Sanity rows" in md and "hacking gap [95% CI]" in md
    assert max(len(h) for h in _all_tables(md)) <= 9


def test_broken_side_files_are_skipped(tmp_path):
    from prefopt.bench.results import curve_path, hacking_path, reference_samples_path

    _write_full(tmp_path)
    reference_samples_path(tmp_path, "qa").write_text("not json\n")
    hacking_path(tmp_path, "qa").write_text("[1, 2")
    curve_path(tmp_path, "qa", "algo00", 0).write_text("{bad\n")
    out = render(tmp_path)
    md = out["md"].read_text()
    assert "LC win rate (gold)" not in md and "Example replies" not in md and "curves_qa" in out
