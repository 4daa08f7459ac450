"""The report's matched-KL headline on a scripted study whose truth is known (prefopt.bench.matched_kl).

Three arms, each at three strengths x 3 seeds x 240 prompts. Arm "good" sits 0.15 above the other two on every KL;
"same1" and "same2" share one true frontier (independent noise). The report must find good better than both at
every budget, with rank 1 and a rank interval of exactly [1, 1], must not tell same1 from same2, and must state a
minimum detectable difference below the planted 0.15 (so detecting it is what its stated power promises).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from prefopt.bench import matched_kl
from prefopt.bench.report import render
from prefopt.bench.results import reference_samples_path, samples_path, write_records

SEEDS, PROMPTS = (0, 1, 2), 240
STRENGTHS = (0.03, 0.1, 0.3)
KL_OF = {0.03: 4.0, 0.1: 2.0, 0.3: 1.0}  # a weaker regulariser drifts further
GAP = 0.15


def _true_win(kl: float, lift: float) -> float:
    """The planted frontier: from 0.5 at KL 0 rising with KL, plus the arm's lift (which starts after KL 0.5)."""
    return 0.5 + 0.05 * kl + lift * min(1.0, kl / 0.5)


def _study(folder, seed: int = 0, kl_scale: dict | None = None) -> None:
    """kl_scale: arm -> factor on its KLs (to move an arm's measured KL range away from the others')."""
    rng = np.random.default_rng(seed)
    rows = []
    write_records(reference_samples_path(folder, "qa"),
                  [{"i": i, "prompt": f"q{i}", "reply": "r", "length": 3, "gold": 0.0, "more": [{"gold": 0.0}]}
                   for i in range(PROMPTS)])  # fmt: skip
    for arm, lift in (("good", GAP), ("same1", 0.0), ("same2", 0.0)):
        for strength in STRENGTHS:
            entry = f"{arm}_beta{strength:g}"
            for s in SEEDS:
                seed_kl = KL_OF[strength] * rng.uniform(0.9, 1.1) * (kl_scale or {}).get(arm, 1.0)  # seeds differ
                kl = rng.gamma(4.0, seed_kl / 4.0, PROMPTS)  # (P,) per-prompt KL around the seed's mean
                win = (rng.random(PROMPTS) < _true_win(seed_kl, lift)).astype(float)  # (P,) one outcome per prompt
                write_records(samples_path(folder, "qa", entry, s), [
                    {"i": i, "reply": "x", "length": 3, "gold": float(w), "win_gold": float(w), "kl_k3": float(k)}
                    for i, (w, k) in enumerate(zip(win, kl))])  # fmt: skip
                rows.append({"suite": "scripted", "suite_version": "1", "task": "qa", "algo": entry, "seed": s,
                             "config_hash": entry, "output_kind": "policy", "arm": arm, "strength_option": "beta",
                             "strength": strength, "tuned_lr": 3e-4, "comparisons_seen": 128,
                             "win_rate_gold": float(win.mean()), "kl_k3": float(kl.mean()),
                             "gold_reward": float(win.mean()), "gold_reward_ref": 0.0})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)


def _analysis(folder):
    from prefopt.bench.report import _load_samples, load_results

    df = load_results(folder)
    samples = _load_samples(folder, "qa", df)
    return matched_kl.analyse(df[df["output_kind"] == "policy"], samples.cells, samples.reference, replicates=1000)


def test_the_planted_gap_is_found_at_every_budget_and_identical_arms_are_not_told_apart(tmp_path):
    _study(tmp_path)
    result = _analysis(tmp_path)
    c = result.comparison
    assert [a.name for a in result.arms] == ["good", "same1", "same2"]
    assert [a.strengths for a in result.arms] == [list(STRENGTHS)] * 3 and result.seeds == list(SEEDS)
    assert result.prompts == PROMPTS and len(c.budgets) == 3
    for pair in c.pairs:
        if pair["a"] == "good":
            assert pair["significant"] and pair["diff"] > 0 and pair["low"] > 0, pair
            lift = GAP * min(1.0, pair["budget"] / 0.5)
            assert pair["low"] <= lift <= pair["high"], pair  # the interval holds the planted difference
        else:
            assert (pair["a"], pair["b"]) == ("same1", "same2") and not pair["significant"], pair
    good = c.names.index("good")
    assert (c.rank[:, good] == 1).all() and (c.rank_low[:, good] == 1).all() and (c.rank_high[:, good] == 1).all()
    same = [c.names.index("same1"), c.names.index("same2")]
    assert (c.rank_high[:, same] == 3).all()  # either can be last: the ranks of equals overlap
    assert 0 < c.mde < c.mde_holm < GAP  # the stated power covers the planted gap


def test_identical_arms_are_rarely_told_apart_over_many_scripted_studies(tmp_path):
    """Over 10 scripted studies, same1 vs same2 is significant after Holm in at most 1 of 30 budget comparisons."""
    false = 0
    for seed in range(10):
        folder = tmp_path / f"s{seed}"
        _study(folder, seed)
        c = _analysis(folder).comparison
        false += sum(p["significant"] for p in c.pairs if p["a"] == "same1")
    assert false <= 1


def test_the_report_states_the_verdicts_ranks_and_detectable_difference(tmp_path):
    _study(tmp_path)
    paths = render(tmp_path)
    text = paths["md"].read_text()
    assert "Matched-KL comparison (the headline)" in text
    section = text.split("Matched-KL comparison (the headline)")[1].split("### Gold rule")[0]
    assert section.count("good better") == 6 and section.count("cannot tell apart") == 3
    assert "good | " in section and "1 (1–1)" in section
    assert "What this study can detect" in section
    assert "lr 0.0003" in section and "128 labelled comparisons" in section
    assert "matched_kl_qa" in paths


def test_published_finding_is_set_beside_ours_when_its_arms_are_there(tmp_path):
    _study(tmp_path)
    result = _analysis(tmp_path)
    assert matched_kl.published_lines(result) == []  # no dpo/ipo/hinge arms here
    for arm, new in zip(result.arms, ("dpo", "ipo", "hinge")):
        arm.name = new
    result.comparison.names = ["dpo", "ipo", "hinge"]
    for pair in result.comparison.pairs:
        pair["a"] = {"good": "dpo", "same1": "ipo"}[pair["a"]]
        pair["b"] = {"same1": "ipo", "same2": "hinge"}[pair["b"]]
    (line,) = matched_kl.published_lines(result)
    assert line.startswith("Tang et al. 2024") and re.search(r"not reproduced: dpo above ipo by 0\.1\d\d \[0\.\d+, "
                                                             r"0\.\d+\] at KL", line)  # fmt: skip
    gap = next(p for p in result.comparison.pairs if p["significant"] and (p["a"], p["b"]) == ("dpo", "ipo"))
    assert f"by {gap['diff']:.3f} [{gap['low']:.3f}, {gap['high']:.3f}]" in line  # the planted 0.15, with its CI


def test_an_arm_without_per_prompt_kl_gives_no_section(tmp_path):
    _study(tmp_path)
    path = samples_path(tmp_path, "qa", "good_beta0.1", 0)
    from prefopt.bench.results import read_records

    records = [{k: v for k, v in r.items() if k != "kl_k3"} for r in read_records(path)]
    write_records(path, records)
    assert _analysis(tmp_path) is None


@pytest.mark.parametrize(("record", "reference", "expected"), [
    ({"win_gold": 0.25}, {"gold": 1.0}, 0.25),  # the file's own win rate against every reference reply
    ({"gold": 0.7}, {"gold": 0.5}, 1.0),  # older files: the decision against the one reference reply
    ({"gold": 0.5}, {"gold": 0.5}, 0.5),
    ({"gold": None}, {"gold": 0.5}, float("nan")),
])  # fmt: skip
def test_a_records_win_rate(record, reference, expected):
    got = matched_kl._win(record, reference)
    assert got == expected or (np.isnan(expected) and np.isnan(got))


def test_the_gold_table_intervals_come_from_the_crossed_bootstrap_and_best_vs_second_is_a_paired_test(tmp_path):
    from prefopt.bench.report import _load_samples, load_results
    from prefopt.evaluation.frontier import paired_difference

    _study(tmp_path)
    text = render(tmp_path)["md"].read_text()
    samples = _load_samples(tmp_path, "qa", load_results(tmp_path))
    wins = {a: np.array([[samples.cells[(a, s)][i]["win_gold"] for i in range(PROMPTS)] for s in SEEDS])
            for a in ("good_beta0.03", "good_beta0.3")}  # fmt: skip
    d = paired_difference(wins["good_beta0.03"], np.full((3, PROMPTS), 0.5), 2000)
    row = next(line for line in text.splitlines() if line.startswith("| good_beta0.03 |"))
    assert f"{d['diff'] + 0.5:.3f} [{d['low'] + 0.5:.3f}, {d['high'] + 0.5:.3f}] ‡" in row
    noise = next(line for line in text.splitlines() if line.startswith("Noise"))
    assert "crossed seed x prompt bootstrap" in noise
    d = paired_difference(wins["good_beta0.03"], wins["good_beta0.3"], 2000)
    assert f"paired over 3 seeds x {PROMPTS} prompts: {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" in noise


def test_the_report_re_renders_the_same_from_the_committed_files(tmp_path):
    """Fixed bootstrap seeds: the files alone give the same report twice (and state the budget per algorithm)."""
    _study(tmp_path)
    first = render(tmp_path)["md"].read_text()
    assert render(tmp_path)["md"].read_text() == first
    assert "| algorithm | n seeds | comparisons seen |" in first  # the scripted rows have no other cost column
    assert "| good_beta0.1 | 3 | 128 |" in first


def test_with_one_seed_the_report_says_its_intervals_cover_prompts_only(tmp_path):
    _study(tmp_path)
    table = pd.read_csv(tmp_path / "results.csv")
    table[table["seed"] == 0].to_csv(tmp_path / "results.csv", index=False)
    text = render(tmp_path)["md"].read_text()
    assert "With one seed all of this covers the prompts only" in text
    assert "With one seed the intervals and these sizes cover the prompts only" in text


def test_arms_whose_measured_kl_ranges_do_not_overlap_are_said_not_to_be_compared_at_a_measured_kl(tmp_path):
    _study(tmp_path, kl_scale={"good": 10.0})  # good's points at KL 10-40, the others' at 1-4
    result = _analysis(tmp_path)
    assert result.from_anchor and all(b < result.measured_ranges()["good"][0] for b in result.comparison.budgets)
    # the two arms whose ranges do overlap are still compared where both were measured
    assert {(p["a"], p["b"]) for p in result.measured_pairs} == {("same1", "same2")}
    low = max(result.measured_ranges()[a][0] for a in ("same1", "same2"))
    assert all(p["budget"] >= low and not p["significant"] for p in result.measured_pairs)
    for pair in result.measured_pairs:
        pair["a"], pair["b"] = "ipo", "hinge"
    for arm, new in zip(result.arms, ("dpo", "ipo", "hinge")):
        arm.name = new
    (line,) = matched_kl.published_lines(result)
    assert "Here: not tested: the arms' measured KL ranges do not overlap (dpo " in line
    assert "; ipo and hinge, inside their shared measured range (KL " in line and "cannot tell apart" in line
    text = render(tmp_path)["md"].read_text()
    assert "The arms were not measured at a common KL." in text
    assert "Pairs whose own measured KL ranges overlap, compared inside that overlap" in text


def test_overlapping_arms_are_compared_inside_their_measured_ranges(tmp_path):
    _study(tmp_path)
    result = _analysis(tmp_path)
    low = max(lo for lo, _ in result.measured_ranges().values())
    assert not result.from_anchor and all(b >= low for b in result.comparison.budgets)
