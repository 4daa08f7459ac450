"""The report's headline: arms compared at matched KL, from the per-prompt samples files alone.

An arm is a suite entry swept over strengths (``dpo: {sweep: {beta: [...]}}``; its rows share ``arm``). For every
cell the samples file holds, per held-out prompt, the policy reply's gold win rate against the reference's replies
(``win_gold``) and its sequence KL (``kl_k3``); :mod:`prefopt.evaluation.frontier` turns them into each arm's
gold-win-rate-vs-KL frontier, reads it off at common KL budgets (the reference itself is the point (0, 1/2)) and
compares arms there with a crossed seed x prompt bootstrap and Holm's correction. The section also states the
study's minimum detectable difference, and sets the arms' verdicts beside published findings about them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from prefopt.bench.results import as_number as _number
from prefopt.evaluation.frontier import Arm, Comparison, common_budgets, compare_at_budgets, paired_difference
from prefopt.evaluation.stats import holm, min_detectable_difference

ANCHOR = 0.5  # the reference against its own replies: the point (KL 0, win rate 1/2) on every frontier
KL_KEY, SCORE_KEY = "kl_k3", "win_gold"  # the per-prompt fields the frontier is built from
BUDGETS = 3  # common KL budgets per task
REPLICATES = 2000  # bootstrap replicates
ALPHA = 0.05  # the tests' level
DASH = "–"

# Published findings about arms a suite may hold: the report sets its own verdict beside them.
PUBLISHED = (
    {
        "arms": ("dpo", "ipo", "hinge"),
        "source": "Tang et al. 2024, Generalized Preference Optimization (arXiv 2402.05749)",
        "claim": "in a controlled setting with a known gold reward, DPO, IPO and SLiC (hinge) reach similar trade-offs "
                 "between KL and gold reward across their strengths, though the strength that gives a KL differs.",
        "expects": "same",
    },
)


@dataclass
class ArmPoints:
    """One arm's cells: its entries by strength, and the (K, S, P) per-prompt arrays of the frontier."""

    name: str
    entries: list[str]
    strengths: list[float]
    option: str
    arm: Arm
    tuned: dict = field(default_factory=dict)  # option -> the tuned value(s) (one per task, so one here)
    budget: str = ""  # what it trained on, as the rows state it


@dataclass
class MatchedKL:
    """The analysis of one task: its arms, the seeds and prompts they share, and the comparison."""

    arms: list[ArmPoints]
    seeds: list[int]
    prompts: int
    comparison: Comparison | None
    dropped: list[str] = field(default_factory=list)  # entries left out, with why
    from_anchor: bool = False  # the arms' measured KL ranges do not overlap: budgets lie on the reference segment
    measured_pairs: list[dict] = field(default_factory=list)  # then: the pairs whose own ranges overlap, compared
    # inside that overlap (compare_at_budgets' pair rows; Holm over all of them together)

    def measured_ranges(self) -> dict[str, tuple[float, float]]:
        """Each arm's (lowest, highest) mean KL over its strengths (seed means averaged)."""
        out = {}
        for a in self.arms:
            points = a.arm.kl.mean(axis=(1, 2))  # (K,)
            out[a.name] = (float(points.min()), float(points.max()))
        return out


def _win(record: dict, reference: dict | None) -> float:
    """A record's gold win rate: its win_gold, or (older files) the decision against the one reference reply."""
    from prefopt.evaluation.metrics import score_decisions

    value = record.get(SCORE_KEY)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    gold, ref = _number(record.get("gold")), _number((reference or {}).get("gold"))
    if math.isfinite(gold) and math.isfinite(ref):
        return score_decisions([gold], [ref])[0]
    return math.nan


def analyse(policy: pd.DataFrame, cells: dict, reference: dict, replicates: int = REPLICATES) -> MatchedKL | None:
    """The matched-KL comparison of one task's policy rows. ``cells``: (entry, seed) -> {prompt index: record},
    ``reference``: {prompt index: record} (report.Samples). None when the rows hold no arm with per-prompt KL.

    Seeds are those every entry has; prompts those with a finite KL and win rate in every cell, so that every arm
    is measured on the same seeds and prompts (the comparison is paired)."""
    if policy.empty or "arm" not in policy.columns:
        return None
    arms: dict[str, list[tuple[float, str]]] = {}
    option: dict[str, str] = {}
    for row in policy.drop_duplicates("algo").to_dict("records"):
        arm = row.get("arm")
        arm = str(arm) if isinstance(arm, str) and arm else str(row["algo"])
        strength = _number(row.get("strength"))
        arms.setdefault(arm, []).append((strength if math.isfinite(strength) else 0.0, str(row["algo"])))
        option[arm] = str(row.get("strength_option")) if isinstance(row.get("strength_option"), str) else ""
    entries = [e for points in arms.values() for _, e in points]
    seeds_of = {e: {int(s) for s in policy.loc[policy["algo"] == e, "seed"]} for e in entries}
    seeds = sorted(set.intersection(*seeds_of.values()))
    dropped = [f"{e} seed {s}" for e in entries for s in sorted(seeds_of[e] - set(seeds))]
    if not seeds:
        return None
    prompts = None
    for e in entries:
        for s in seeds:
            records = cells.get((e, s), {})
            ok = {i for i, r in records.items()
                  if math.isfinite(_number(r.get(KL_KEY))) and math.isfinite(_win(r, reference.get(i)))}  # fmt: skip
            prompts = ok if prompts is None else prompts & ok
    if not prompts:
        return None
    order = sorted(prompts)
    out = []
    for name, points in arms.items():
        points = sorted(points)
        kl = np.array([[[_number(cells[(e, s)][i][KL_KEY]) for i in order] for s in seeds] for _, e in points])
        win = np.array([[[_win(cells[(e, s)][i], reference.get(i)) for i in order] for s in seeds] for _, e in points])
        rows = policy[policy["arm"].astype(str) == name] if "arm" in policy.columns else policy
        tuned = {c[len("tuned_"):]: sorted({float(v) for v in rows[c] if np.isfinite(v)})
                 for c in rows.columns if c.startswith("tuned_")}  # fmt: skip
        out.append(ArmPoints(name, [e for _, e in points], [s for s, _ in points], option[name],
                             Arm(name, kl, win), {k: v for k, v in tuned.items() if v}, _budget_text(rows)))  # fmt: skip
    # budgets inside every arm's measured points first; only when those ranges do not overlap, budgets on the
    # segments from the reference (0, 1/2) to each arm's points, which assume the frontier is straight there
    budgets = common_budgets([a.arm for a in out], BUDGETS, anchor=None)
    from_anchor = not budgets
    if from_anchor:
        budgets = common_budgets([a.arm for a in out], BUDGETS, anchor=ANCHOR)
    comparison = compare_at_budgets([a.arm for a in out], budgets, ANCHOR, replicates=replicates) if budgets else None
    measured = _measured_pairs(out, replicates) if from_anchor else []
    return MatchedKL(out, seeds, len(order), comparison, dropped, from_anchor, measured)


def _measured_pairs(arms: list[ArmPoints], replicates: int) -> list[dict]:
    """Each pair of arms whose measured KL ranges overlap, compared at budgets inside that overlap; Holm's
    correction over every such test together (one family)."""
    rows = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            budgets = common_budgets([a.arm, b.arm], BUDGETS, anchor=None)
            if budgets:
                rows += compare_at_budgets([a.arm, b.arm], budgets, ANCHOR, replicates=replicates).pairs
    adjusted = holm([r["p"] for r in rows])
    for row, p in zip(rows, adjusted):
        row["p_holm"], row["significant"] = float(p), bool(p < ALPHA)
    return rows


def _budget_text(rows: pd.DataFrame) -> str:
    for column, what in (("comparisons_seen", "labelled comparisons"), ("reward_queries", "reward queries")):
        if column in rows.columns:
            values = sorted({int(v) for v in rows[column] if np.isfinite(v)})
            if values:
                return f"{'/'.join(map(str, values))} {what}"
    return ""


# ---------------------------------------------------------------- formatting


def _f(x: float, digits: int = 3, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return DASH
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _interval(value: float, low: float, high: float, signed: bool = False) -> str:
    if not np.isfinite(value):
        return DASH
    return f"{_f(value, signed=signed)} [{_f(low, signed=signed)}, {_f(high, signed=signed)}]"


def _p(p: float) -> str:
    return DASH if not np.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _rank(rank: float, low: float, high: float) -> str:
    if not np.isfinite(rank):
        return DASH
    return f"{int(rank)} ({int(low)}–{int(high)})" if np.isfinite(low) else str(int(rank))


def point_rows(result: MatchedKL, replicates: int = REPLICATES) -> list[list[str]]:
    """The arms' measured points: per strength, KL and gold win rate with crossed-bootstrap intervals."""
    table = []
    for a in result.arms:
        tuned = ", ".join(f"{k} {'/'.join(f'{v:g}' for v in vs)}" for k, vs in a.tuned.items()) or DASH
        for k, (entry, strength) in enumerate(zip(a.entries, a.strengths)):
            kl = paired_difference(a.arm.kl[k], np.zeros_like(a.arm.kl[k]), replicates)
            win = paired_difference(a.arm.score[k], np.full_like(a.arm.score[k], ANCHOR), replicates)
            table.append([a.name, f"{a.option} {strength:g}" if a.option else entry, tuned,
                          _interval(kl["diff"], kl["low"], kl["high"]),
                          _interval(win["diff"] + ANCHOR, win["low"] + ANCHOR, win["high"] + ANCHOR),
                          _p(win["p"]), a.budget or DASH])  # fmt: skip
    return table


def parity_mde(result: MatchedKL, replicates: int = REPLICATES) -> float:
    """The smallest departure from parity (win rate 1/2) one of this study's points can detect (median SE)."""
    ses = [paired_difference(a.arm.score[k], np.full_like(a.arm.score[k], ANCHOR), replicates)["se"]
           for a in result.arms for k in range(len(a.entries))]  # fmt: skip
    return min_detectable_difference(float(np.median(ses))) if ses else math.nan


def ranges_text(result: MatchedKL) -> str:
    return ", ".join(f"{name} {lo:.2f}–{hi:.2f}" for name, (lo, hi) in result.measured_ranges().items())


def verdict(pair: dict) -> str:
    if not np.isfinite(pair["p_holm"]):
        return "not measured"
    if not pair["significant"]:
        return "cannot tell apart"
    return f"{pair['a']} better" if pair["diff"] > 0 else f"{pair['b']} better"


def _above(pair: dict) -> str:
    """A significant pair as "A above B by d [low, high]" (the better arm first)."""
    better, worse, sign = (pair["a"], pair["b"], 1) if pair["diff"] > 0 else (pair["b"], pair["a"], -1)
    low, high = sorted((sign * pair["low"], sign * pair["high"]))
    return f"{better} above {worse} by {abs(pair['diff']):.3f} [{low:.3f}, {high:.3f}]"


def published_lines(result: MatchedKL) -> list[str]:
    """Each published finding whose arms are all here, beside what this study finds about them."""
    c = result.comparison
    names = {a.name for a in result.arms}
    lines = []
    for finding in PUBLISHED:
        arms = finding["arms"]
        if not set(arms) <= names:
            continue
        ours = "not comparable: the arms share no KL budget"
        if c is not None and result.from_anchor:
            ours = (f"not tested: the arms' measured KL ranges do not overlap ({ranges_text(result)}), so they "
                    "meet only on the straight segments from the reference, which no strength measured")  # fmt: skip
            measured = [p for p in result.measured_pairs if p["a"] in arms and p["b"] in arms]
            for a, b in sorted({(p["a"], p["b"]) for p in measured}):
                rows = [p for p in measured if (p["a"], p["b"]) == (a, b)]
                apart = [p for p in rows if p["significant"]]
                said = (f"{verdict(apart[0])}" if apart else "cannot tell apart")
                ours += (f"; {a} and {b}, inside their shared measured range (KL {rows[0]['budget']:g}-"
                         f"{rows[-1]['budget']:g}): {said} (largest gap {max(abs(p['diff']) for p in rows):.3f})")
        elif c is not None:
            pairs = [p for p in c.pairs if p["a"] in arms and p["b"] in arms]
            apart = [p for p in pairs if p["significant"]]
            gaps = [abs(p["diff"]) for p in pairs]
            if not apart:
                ours = (f"reproduced within this study's resolution: no pair of {', '.join(arms)} differs at any of "
                        f"the {len(c.budgets)} budgets after Holm's correction (largest gap {max(gaps):.3f}; a gap "
                        f"of {c.mde_holm:.3f} would be detected with 80% power)")  # fmt: skip
            else:
                said = "; ".join(f"{_above(p)} at KL {p['budget']:g}" for p in apart)
                ours = f"not reproduced: {said}"
                if finding["expects"] != "same":
                    ours = f"found: {said}"
        lines.append(f"{finding['source']}: {finding['claim']} Here: {ours}.")
    return lines
