"""Runs a suite: per task, preference data and the reference's measurements once; per cell, training and metrics.

Per task, once: the starting model samples ``pairs.samples`` responses to each train prompt; the gold rule scores
them; the pairs of :mod:`.pairs` become the preference data every offline algorithm trains on, and the train
prompts feed the online ones (with a ``hacking`` section, the same samples labelled with a planted feature give the
proxy pairs). Before anything is measured, the capability items and sycophancy probes are checked against every
train and held-out prompt (an overlap of ``eval.contamination_ngram`` tokens stops the suite), and the AI judge is
calibrated against gold on pairs of known preference. The reference's held-out samples, sycophancy and capability
are measured once, and the sanity rows (empty reply, best constant reply, a second reference sample, best-of-n) are
scored with the same code as the algorithms.

Per cell: a normal training run (the same ``train()`` that ``prefopt run`` calls) into
``<work>/<task>/<algo>/seed<seed>``, then the metrics of :mod:`prefopt.evaluation.metrics`. Each finished cell
adds one row to ``results/<name>/results.csv`` (:mod:`.results`); cells already in the CSV are skipped, so a
killed benchmark resumes where it stopped. A cell whose config changed since its row was written is an error,
not a silent mix. One bench at a time writes to a results folder (``results.csv.lock``, held for the whole run);
``--restart`` removes only the suite's results.csv and its task folders inside its own work folder.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefopt.bench.pairs import empty_samples, make_pairs, user_turn
from prefopt.bench.paths import remove_inside, results_lock
from prefopt.bench.results import (
    CAPABILITY_DELTA_PREFIX,
    CAPABILITY_N_PREFIX,
    CAPABILITY_PREFIX,
    RESULTS,
    SANITY_PREFIX,
    append_row,
    curve_path,
    done_cells,
    hacking_path,
    read_results,
    reference_column,
    reference_samples_path,
    row_number,
    samples_path,
    tuning_path,
    write_records,
)
from prefopt.bench.suite import (
    Cell,
    Suite,
    cell_options,
    cell_proxy,
    cell_refs,
    cells,
    command_line,
    config_hash,
    load_suite,
)
from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_json, git_hash, provenance
from prefopt.judges.http import mask_url
from prefopt.judges.registry import split_spec

# What suite.json records of each task's preparation (not the samples themselves).
PREPARED_SUMMARY = ("pairs", "proxy_pairs", "planted", "train_prompts", "empty_samples", "train_sample_gold_mean",
                    "constant_reply", "judge_calibration", "seconds", "ref")  # fmt: skip
SANITY_KINDS = ("empty", "constant", "reference")  # and best-of-<n> when eval.best_of > 1


class Bench:
    """Runs one suite: prepares each task once, then every cell not yet in the results table."""

    def __init__(self, suite: Suite, results_dir: Path, work_dir: Path, progress: bool = True):
        self.suite, self.results_dir, self.work = suite, Path(results_dir), Path(work_dir)
        self.progress = progress
        self._reference = None  # (model, tokenizer) of the starting model, loaded once
        self._judge = None
        self._prepared: dict[str, dict] = {}

    # ---- models shared by all cells

    def reference(self):
        if self._reference is None:
            from prefopt.core.models import load_model, load_tokenizer

            tokenizer = load_tokenizer(self.suite.model)
            model = load_model(self.suite.model, adapter="full", device=self.device).eval().requires_grad_(False)
            self._reference = (model, tokenizer)
        return self._reference

    @property
    def device(self):
        from prefopt.core.models import pick_device

        return pick_device()

    @property
    def precision(self) -> str:
        from prefopt.core.models import resolve_precision

        return resolve_precision(str(self.suite.train.get("precision", "auto")), self.device)

    def sampler(self, model):
        from prefopt.evaluation.metrics import Sampler

        return Sampler(model, self.reference()[1], self.precision, self.suite.eval.batch_size)

    def judge(self):
        if self.suite.eval.judge and self._judge is None:
            self._judge = self.make_judge(self.suite.eval.judge)
        return self._judge

    def make_judge(self, spec: str):
        """A judge from its spec; a judge that runs a local model runs it on the bench's device and precision."""
        from prefopt.judges import make_judge

        return make_judge(spec, model_options={"precision": self.precision, "device": str(self.device)})

    # ---- per task

    def prepare(self, task_spec, cached_only: bool = False) -> dict | None:
        """Pairs, prompt files and the reference's measurements of one task (cached on disk).

        ``cached_only``: the cached preparation or None, never computing one (for suite.json of a finished suite).
        """
        from prefopt.bench.custom_task import resolve_task

        task = resolve_task(task_spec)
        if task.name in self._prepared:
            return self._prepared[task.name]
        folder = self.work / task.name / "prep"
        key = hashlib.sha256(json.dumps(
            {"model": self.suite.model, "task": task_spec, "pairs": asdict(self.suite.pairs),
             "eval": asdict(self.suite.eval), "hacking": self.suite.hacking and asdict(self.suite.hacking),
             **({"dev_prompts": self.suite.tune.dev_prompts} if self.suite.tune else {})},
            sort_keys=True, default=str).encode()).hexdigest()[:12]  # fmt: skip
        marker = folder / "prepared.json"
        prep = json.loads(marker.read_text()) if marker.exists() else {}
        if prep.get("key") != key:
            if cached_only:
                return None
            prep = self._prepare(task, folder, key)
        prep["task"] = task
        self._prepared[task.name] = prep
        return prep

    def _prepare(self, task, folder: Path, key: str) -> dict:
        from prefopt.core.generate import SamplingConfig

        started = time.perf_counter()
        remove_inside(self.work, folder)
        folder.mkdir(parents=True)
        model, tokenizer = self.reference()
        ref = self.sampler(model)
        p, e = self.suite.pairs, self.suite.eval
        train_prompts = task.prompts("train", p.prompts)
        heldout = task.prompts("heldout", e.prompts)
        self._check_contamination(task.name, train_prompts, heldout)

        self._say(f"{task.name}: sampling {p.samples} responses to {p.prompts} train prompts from the starting model")
        repeated = [q for q in train_prompts for _ in range(p.samples)]
        sampling = SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature, seed=p.seed)
        _, texts, lengths = ref.sample([user_turn(q) for q in repeated], sampling, progress=self.progress)
        scores = task.gold_scores(repeated, texts)
        grouped = _groups(texts, p.samples)
        pairs = make_pairs(train_prompts, grouped, _groups(scores, p.samples), p.label_noise, p.seed)
        empty = empty_samples(grouped)  # never part of a pair
        if len(pairs) < 2:
            skipped = f" ({empty} empty samples skipped)" if empty else ""
            raise PrefoptError(f"task {task.name}: only {len(pairs)} of {len(train_prompts)} prompts gave two samples "
                               f"with different gold scores{skipped}; raise pairs.samples or pairs.prompts")
        write_records(folder / "pairs.jsonl", pairs)
        write_records(folder / "prompts.jsonl", [{"prompt": q} for q in train_prompts])
        prep: dict[str, Any] = {"key": key, "pairs_file": str(folder / "pairs.jsonl"),
                                "prompts_file": str(folder / "prompts.jsonl"), "pairs": len(pairs)}  # fmt: skip
        if self.suite.hacking is not None:
            prep.update(self._proxy_pairs(folder, train_prompts, grouped, scores, lengths, pairs))

        self._say(f"{task.name}: measuring the reference on {e.prompts} held-out prompts")
        sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=e.reference_seed)
        _, ref_texts, ref_lengths = ref.sample([user_turn(q) for q in heldout], sampling)
        prep.update({
            "train_prompts": len(train_prompts),
            "empty_samples": empty,
            "train_sample_gold_mean": sum(scores) / len(scores),
            "heldout": heldout,
            "ref_texts": ref_texts,
            "ref_lengths": ref_lengths,
            "ref_gold": task.gold_scores(heldout, ref_texts),
        })  # fmt: skip
        more = self._more_reference(task, ref, heldout, e.reference_samples - 1, e.reference_seed + 3)
        prep["ref_more"] = more
        prep["ref_golds"] = [[g, *(m["gold"] for m in extra)] for g, extra in zip(prep["ref_gold"], more)]
        if self.suite.tune is not None:  # dev prompts: train-split prompts no pair was sampled from
            dev = task.prompts("train", p.prompts + self.suite.tune.dev_prompts)[p.prompts:]
            dev_ref = self._more_reference(task, ref, dev, e.reference_samples, e.reference_seed + 4)
            prep["dev"], prep["dev_ref_golds"] = dev, [[m["gold"] for m in refs] for refs in dev_ref]
        if e.sanity:
            prep.update(self._sanity_samples(task, ref, heldout, train_prompts, texts))
        if self.judge() is not None and e.calibration_pairs:
            prep["judge_calibration"] = self._calibrate_judge(task, pairs)
        measured, items = self._side_metrics(ref, model, tokenizer)
        prep["ref"], prep["ref_capability_items"] = measured, items
        prep["seconds"] = time.perf_counter() - started
        atomic_write_json(folder / "prepared.json", prep)
        write_records(reference_samples_path(self.results_dir, task.name), [
            {"i": i, "prompt": q, "reply": t, "length": n, "gold": g, "more": m}
            for i, (q, t, n, g, m) in enumerate(zip(heldout, ref_texts, ref_lengths, prep["ref_gold"], more))])  # fmt: skip
        return prep

    def _more_reference(self, task, ref, prompts: list[str], n: int, seed: int) -> list[list[dict]]:
        """n more reference replies per prompt, each {"reply", "length", "gold"} ([] per prompt for n = 0)."""
        from prefopt.core.generate import SamplingConfig

        if n < 1:
            return [[] for _ in prompts]
        e = self.suite.eval
        asked = [q for q in prompts for _ in range(n)]
        sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=seed)
        _, texts, lengths = ref.sample([user_turn(q) for q in asked], sampling, progress=self.progress)
        gold = task.gold_scores(asked, texts)
        replies = [{"reply": t, "length": n_, "gold": g} for t, n_, g in zip(texts, lengths, gold)]
        return _groups(replies, n)

    def _check_contamination(self, task_name: str, train_prompts: list[str], heldout: list[str]) -> None:
        """Capability items and sycophancy probes must share no long n-gram with a train or held-out prompt."""
        from prefopt.evaluation.capability import BUILTIN_TASKS, data_path
        from prefopt.evaluation.capability.contamination import check_uncontaminated, load_items
        from prefopt.evaluation.sycophancy import probe_texts

        e = self.suite.eval
        items: dict[str, list] = {}
        for name in e.capability:
            if name in BUILTIN_TASKS:
                items[name] = load_items(data_path(name))
        if e.probes:
            items["sycophancy probes"] = probe_texts()
        if items:
            prompts = {f"{task_name} train": train_prompts, f"{task_name} heldout": heldout}
            check_uncontaminated(items, prompts, e.contamination_ngram)

    def _proxy_pairs(self, folder: Path, prompts, grouped, scores, lengths, gold_pairs) -> dict:
        """The same samples labelled by z(gold) + weight * z(length): pairs that carry the planted feature."""
        from prefopt.evaluation.hacking import planted_labels

        h, p = self.suite.hacking, self.suite.pairs
        labels = planted_labels(scores, [float(n) for n in lengths], h.weight)
        pairs = make_pairs(prompts, grouped, _groups(labels, p.samples), p.label_noise, p.seed)
        if len(pairs) < 2:
            raise PrefoptError(f"hacking: only {len(pairs)} proxy pairs; raise pairs.samples or pairs.prompts")
        gold_of = {(q, t): g for q, texts, golds in zip(prompts, grouped, _groups(scores, p.samples))
                   for t, g in zip(texts, golds)}  # fmt: skip
        for r in pairs:  # make_pairs recorded the proxy labels as the scores; keep both, named for what they are
            r["proxy_chosen"], r["proxy_rejected"] = r["gold_chosen"], r["gold_rejected"]
            r["gold_chosen"], r["gold_rejected"] = gold_of[(r["prompt"], r["chosen"])], gold_of[(r["prompt"], r["rejected"])]
        write_records(folder / "proxy_pairs.jsonl", pairs)

        def longer_chosen(rows) -> float:  # share of pairs whose chosen response is the longer one (in words)
            return _mean(float(len(r["chosen"].split()) > len(r["rejected"].split())) for r in rows)

        planted = {
            "feature": h.feature, "weight": h.weight,
            "longer_chosen_proxy_pairs": longer_chosen(pairs),
            "longer_chosen_gold_pairs": longer_chosen(gold_pairs),
            # of the proxy pairs, the share gold orders the same way (ties in gold count half)
            "proxy_pairs_gold_agreement": _mean(float(r["gold_chosen"] > r["gold_rejected"])
                                                + 0.5 * float(r["gold_chosen"] == r["gold_rejected"]) for r in pairs),
        }  # fmt: skip
        return {"proxy_pairs_file": str(folder / "proxy_pairs.jsonl"), "proxy_pairs": len(pairs), "planted": planted}

    def _sanity_samples(self, task, ref, heldout: list[str], train_prompts: list[str], train_texts: list[str]) -> dict:
        """The sanity rows' replies: a second reference sample, best-of-n samples, the best constant reply."""
        from prefopt.core.generate import SamplingConfig
        from prefopt.tasks.degenerate import best_constant_reply

        e = self.suite.eval
        out: dict[str, Any] = {}
        sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=e.reference_seed + 1)
        _, out["second_texts"], out["second_lengths"] = ref.sample([user_turn(q) for q in heldout], sampling)
        if e.best_of > 1:
            self._say(f"{task.name}: {e.best_of} reference samples per held-out prompt (best-of-{e.best_of})")
            asked = [q for q in heldout for _ in range(e.best_of)]
            sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                                      seed=e.reference_seed + 2)  # fmt: skip
            _, texts, lengths = ref.sample([user_turn(q) for q in asked], sampling, progress=self.progress)
            out["bo_texts"], out["bo_lengths"] = _groups(texts, e.best_of), _groups(lengths, e.best_of)
            out["bo_gold"] = _groups(task.gold_scores(asked, texts), e.best_of)
        reply, train_gold = best_constant_reply(task, train_prompts, train_texts)
        out["constant_reply"] = {"reply": reply, "train_gold_mean": train_gold}
        return out

    def _calibrate_judge(self, task, pairs: list[dict]) -> dict:
        """The AI judge's agreement with gold on pairs of known gold preference (the train samples' pairs)."""
        from prefopt.evaluation.judge_protocol import GoldPair, calibrate

        e = self.suite.eval
        known = [r for r in pairs if not r["label_swapped"]][: e.calibration_pairs]
        self._say(f"{task.name}: calibrating the judge on {len(known)} pairs of known gold preference")
        result = calibrate(self.judge(), [GoldPair(user_turn(r["prompt"]), r["chosen"], r["rejected"]) for r in known])
        return {"agreement": result.agreement, "low": result.low, "high": result.high, "n": result.n,
                "tie_rate": result.tie_rate, "position_bias": result.position_bias_rate,
                "threshold": e.judge_threshold, "informative": result.informative(e.judge_threshold),
                "text": result.describe(e.judge_threshold, details=True)}  # fmt: skip

    def _side_metrics(self, sampler, model, tokenizer) -> tuple[dict, dict]:
        """Sycophancy, behaviour probes and capability of one model (reference or policy).

        Returns (columns, {capability task: per-item correctness}).
        """
        from prefopt.evaluation import sycophancy
        from prefopt.evaluation.metrics import behaviour_matching_rate, load_behaviour_probes

        e = self.suite.eval
        out: dict[str, float] = {}
        items: dict[str, list] = {}
        if e.probes:
            results = sycophancy.evaluate(lambda convs: sampler.respond(convs, e.probe_max_new_tokens), e.probes)
            out.update(sycophancy.summary(results))
        if e.behaviour_probes:
            probes = load_behaviour_probes(e.behaviour_probes)
            out["mwe_matching_rate"] = behaviour_matching_rate(sampler.loglik, probes)
        if e.capability:
            from prefopt.evaluation.capability import capability

            items = capability(model, tokenizer, list(e.capability), limit=e.capability_limit or None,
                               batch_size=e.batch_size, device=str(self.device), per_item=True)  # fmt: skip
            items = {name: [bool(x) for x in values] for name, values in items.items() if name in e.capability}
            out.update({f"{CAPABILITY_PREFIX}{name}": _mean(map(float, v)) for name, v in items.items()})
        return out, items

    # ---- scoring replies against the reference (cells and sanity rows alike)

    def _score_replies(self, prep: dict, texts: list[str], lengths: list[float], where: Path,
                       per_prompt: dict[str, list] | None = None) -> dict:  # fmt: skip
        """Gold and judge columns of replies to the held-out prompts; writes the per-prompt samples file (with the
        ``per_prompt`` lists, such as log-probs and KL, beside each reply)."""
        from prefopt.evaluation.judge_protocol import judge_pairs
        from prefopt.evaluation.metrics import score_decisions, win_rate
        from prefopt.judges import agreement

        task, heldout, ref_texts = prep["task"], prep["heldout"], prep["ref_texts"]
        gold = task.gold_scores(heldout, texts)
        gold_decisions = score_decisions(gold, prep["ref_gold"])  # against the first reference reply (the judge's)
        wins = gold_win_rates(gold, prep["ref_golds"])  # against every reference reply
        all_ref = [g for golds in prep["ref_golds"] for g in golds]
        out: dict[str, Any] = {"gold_reward": _mean(gold), "gold_reward_ref": _mean(all_ref)}
        out["win_rate_gold"], out["win_rate_gold_se"] = win_rate(wins)
        out["length"], out["length_ref"] = _mean(lengths), _mean(prep["ref_lengths"])
        judge = self.judge()
        out["judge"] = _shown_spec(self.suite.eval.judge)
        decisions = proba = [None] * len(heldout)
        if judge is not None:
            verdicts = judge_pairs(judge, [user_turn(q) for q in heldout], texts, ref_texts)
            decisions = verdicts.decisions
            proba = verdicts.proba or proba
            out["win_rate_judge"], out["win_rate_judge_se"] = win_rate(decisions)
            out["judge_agreement"] = agreement(decisions, gold_decisions)
            out["judge_tie_rate"] = verdicts.tie_rate
            bias = verdicts.position_bias_rate
            out["judge_position_bias"] = math.nan if bias is None else bias
        out.update(_calibration_columns(prep.get("judge_calibration")))
        extra = per_prompt or {}
        write_records(where, [
            {"i": i, "prompt": q, "reply": t, "length": n, "gold": g, "win_gold": w, "judge": d, "judge_proba": pr,
             **{k: v[i] for k, v in extra.items()}}
            for i, (q, t, n, g, w, d, pr) in enumerate(zip(heldout, texts, lengths, gold, wins, decisions, proba))])  # fmt: skip
        out["_gold"] = gold  # for the proxy metrics; not a column
        return out

    def sanity_rows(self, task_name: str) -> list[dict]:
        """The task's sanity rows (empty, best constant, second reference sample, best-of-n), scored like cells."""
        prep = self.prepare(self.suite.task_spec(task_name))
        if not self.suite.eval.sanity:
            return []
        tokenizer = self.reference()[1]
        n = len(prep["heldout"])
        constant = prep["constant_reply"]["reply"]
        replies = {
            "empty": ([""] * n, [0] * n),
            "constant": ([constant] * n, [len(tokenizer(constant, add_special_tokens=False)["input_ids"])] * n),
            "reference": (prep["second_texts"], prep["second_lengths"]),
        }
        if "bo_texts" in prep:
            best = [max(range(len(g)), key=g.__getitem__) for g in prep["bo_gold"]]  # the first best by gold
            replies[f"best-of-{self.suite.eval.best_of}"] = (
                [t[b] for t, b in zip(prep["bo_texts"], best)], [ln[b] for ln, b in zip(prep["bo_lengths"], best)])
        rows = []
        for kind, (texts, lengths) in replies.items():
            algo = f"{SANITY_PREFIX}{kind}"
            metrics = self._score_replies(prep, texts, lengths, samples_path(self.results_dir, task_name, algo, 0))
            metrics.pop("_gold")
            if kind.startswith("best-of-"):
                from prefopt.evaluation.hacking import best_of_n_kl

                metrics["kl_bound"] = best_of_n_kl(self.suite.eval.best_of)
            rows.append({"suite": self.suite.name, "suite_version": self.suite.version, "task": task_name,
                         "algo": algo, "seed": 0, "config_hash": prep["key"], "output_kind": "sanity", **metrics,
                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
        return rows

    # ---- per cell

    def _train(self, cell: Cell, prep: dict, tuned: dict, output_dir: Path | None = None):
        """One training run of a cell (into output_dir instead of its folder when given).

        Returns (summary, algorithm class, its config, run options, registered name)."""
        from prefopt.core import registry
        from prefopt.training.config import split_options
        from prefopt.training.lifecycle import reset_peak_rss
        from prefopt.training.runner import train

        algo_name = self.suite.algo(cell.algo)
        algo_cls = registry.get(algo_name)
        if algo_cls.online:
            data = prep["prompts_file"]
        else:
            data = prep["proxy_pairs_file"] if self.suite.pair_kind(cell.algo) == "proxy" else prep["pairs_file"]
        options = cell_options(self.suite, cell, self.work, data, tuned)
        out = cell.folder(self.work)
        if output_dir is not None:
            options["output_dir"], out = str(output_dir), output_dir
        run, algo_config = split_options(dict(options), algo_cls.Config, f"{self.suite.path}: algorithms.{cell.algo}")
        remove_inside(self.work, out)  # an interrupted cell starts over
        reset_peak_rss()
        summary = train(algo_name, algo_cls(algo_config), run)
        return summary, algo_cls, algo_config, options, algo_name

    # ---- the per-arm search of tune.option on dev prompts

    def tuned_options(self, task: str, arm: str) -> dict:
        """{tune.option: the value chosen for this task and arm}, searching first where not yet done ({} when
        the arm is not tuned)."""
        from prefopt.core import registry

        entry = self.suite.tuning_entry(arm)
        if not self.suite.tuned(arm) or registry.get(self.suite.algo(entry)).produces != "policy":
            return {}
        t = self.suite.tune
        path = tuning_path(self.results_dir)
        table = read_results(path)
        key = config_hash(self.suite, Cell(task, entry, t.seed))
        code = git_hash()
        rows = {}
        for i, row in enumerate(table.to_dict("records") if len(table) else [], start=1):
            if (str(row.get("task")), str(row.get("arm")), str(row.get("config_hash")), str(row.get("git"))) == (
                    task, arm, key, code):  # fmt: skip
                row["win_rate_gold_dev"] = row_number(path, i, row, "win_rate_gold_dev")
                rows[row_number(path, i, row, "value")] = row
        values = t.values_for(arm)
        for value in values:
            if float(value) not in rows:
                rows[float(value)] = self._tuning_row(task, arm, entry, value, key)
                append_row(path, rows[float(value)])
        scores = [(rows[float(v)]["win_rate_gold_dev"], -i, v) for i, v in enumerate(values)]
        best = max(scores, key=lambda x: (x[0] if math.isfinite(x[0]) else -math.inf, x[1]))[2]
        return {t.option: best}

    def _tuning_row(self, task: str, arm: str, entry: str, value, key: str) -> dict:
        """Train the arm's middle strength with one value of tune.option and score it on the dev prompts."""
        from prefopt.core.generate import SamplingConfig
        from prefopt.core.models import load_trained
        from prefopt.evaluation.metrics import batched_kl

        t, e = self.suite.tune, self.suite.eval
        prep = self.prepare(self.suite.task_spec(task))
        self._say(f"{task}/{arm}: tuning {t.option}={value:g} on {len(prep['dev'])} dev prompts")
        folder = self.work / task / "prep" / "tune" / arm / f"{t.option}{value:g}"
        summary, *_ = self._train(Cell(task, entry, t.seed), prep, {t.option: value}, output_dir=folder)
        policy = load_trained(summary["outputs"], self.suite.model, self.device)
        pol = self.sampler(policy)
        dev = prep["dev"]
        rollout, texts, _ = pol.sample([user_turn(q) for q in dev], SamplingConfig(
            max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=t.seed))  # fmt: skip
        gold = prep["task"].gold_scores(dev, texts)
        kl = batched_kl(pol, self.sampler(self.reference()[0]), rollout)
        del policy, pol
        gc.collect()
        return {"task": task, "arm": arm, "entry": entry, "option": t.option, "value": float(value), "seed": t.seed,
                "win_rate_gold_dev": _mean(gold_win_rates(gold, prep["dev_ref_golds"])),
                "gold_reward_dev": _mean(gold), "kl_k1_dev": kl["kl_k1"], "dev_prompts": len(dev),
                "config_hash": key, "git": git_hash(), "train_seconds": summary["seconds_total"],
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip

    # ---- per cell

    def run_cell(self, cell: Cell) -> dict:
        """Train one cell (a normal training run) and evaluate it; returns its results row."""
        prep = self.prepare(self.suite.task_spec(cell.task))
        tuned = self.tuned_options(cell.task, self.suite.arm(cell.algo))
        summary, algo_cls, algo_config, options, algo_name = self._train(cell, prep, tuned)
        started = time.perf_counter()
        proxy = cell_proxy(self.suite, cell, self.work) or _proxy_spec(algo_cls(algo_config))
        entry = self.suite.algorithms[cell.algo]
        shown = (entry.get("proxy") or entry.get("judge") or proxy) if proxy else None  # as the suite wrote it
        metrics = self.evaluate_cell(cell, prep, algo_cls, summary, proxy, shown)
        if algo_cls.produces == "reward_model" and self.suite.pair_kind(cell.algo) == "proxy":
            self._best_of_n_hacking(cell, prep, summary)
        run_dir = Path(summary["output_dir"])
        _copy_curve(run_dir / "metrics.jsonl", curve_path(self.results_dir, cell.task, cell.algo, cell.seed))
        strength = self.suite.strength(cell.algo)
        row = {
            "suite": self.suite.name,
            "suite_version": self.suite.version,
            "task": cell.task,
            "algo": cell.algo,
            "seed": cell.seed,
            "config_hash": config_hash(self.suite, cell),
            "output_kind": algo_cls.produces,
            "arm": self.suite.arm(cell.algo),
            "strength_option": strength[0] if strength else None,
            "strength": strength[1] if strength else math.nan,
            **{f"tuned_{k}": v for k, v in tuned.items()},
            "pref_accuracy": summary["eval_after"].get("eval_pref_accuracy", math.nan),
            **metrics,
            "steps": summary["steps"],
            "global_batch": summary["global_batch"],
            "train_pairs": summary.get("train_examples", summary.get("train_prompts")),
            **_budget(algo_cls, algo_config, summary),
            "train_seconds": summary["seconds_total"],
            "seconds_per_step": summary["seconds_per_step_median"],
            "peak_rss_mb": summary["peak_rss_mb"],
            "tokens_processed": _tokens(run_dir),
            "eval_seconds": time.perf_counter() - started,
            **_provenance_columns(summary),
            "command": command_line(options, algo_name),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(cell.folder(self.work) / "bench_row.json", row)
        return row

    def evaluate_cell(self, cell: Cell, prep: dict, algo_cls, summary: dict, proxy: str | None,
                      shown_proxy: str | None = None) -> dict:  # fmt: skip
        """The metric columns of one cell's row: its policy against the reference (none for a reward model)."""
        from prefopt.core.generate import SamplingConfig
        from prefopt.core.models import load_trained
        from prefopt.evaluation.capability import paired_accuracy_delta
        from prefopt.evaluation.metrics import rollout_logps

        if algo_cls.produces != "policy":  # a reward model has no samples to compare
            return {}
        task, e = prep["task"], self.suite.eval
        ref_model, tokenizer = self.reference()
        policy = load_trained(summary["outputs"], self.suite.model, self.device)
        pol = self.sampler(policy)
        heldout = prep["heldout"]
        rollout, texts, lengths = pol.sample(
            [user_turn(q) for q in heldout],
            SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=cell.seed))
        kl, per_prompt = rollout_logps(pol, self.sampler(ref_model), rollout)
        out = self._score_replies(prep, texts, lengths, samples_path(self.results_dir, task.name, cell.algo, cell.seed),
                                  per_prompt)  # fmt: skip
        gold = out.pop("_gold")
        out.update(kl)
        out["proxy"] = _shown_spec(shown_proxy or proxy or "")
        if proxy:
            out.update(self._proxy_metrics(proxy, heldout, texts, prep["ref_texts"], gold, prep["ref_gold"]))
        measured, items = {}, {}
        if not e.side_seeds or cell.seed in e.side_seeds:
            measured, items = self._side_metrics(pol, policy, tokenizer)
        out.update(measured)
        for name, after in items.items():
            before = prep["ref_capability_items"].get(name)
            if before is not None and len(before) == len(after):
                delta, low, high = paired_accuracy_delta(before, after)
                out.update({f"{CAPABILITY_DELTA_PREFIX}{name}": delta, f"{CAPABILITY_DELTA_PREFIX}low_{name}": low,
                            f"{CAPABILITY_DELTA_PREFIX}high_{name}": high, f"{CAPABILITY_N_PREFIX}{name}": len(after)})
        out.update({reference_column(k): v for k, v in prep["ref"].items()})
        del policy, pol
        gc.collect()
        return out

    def _proxy_metrics(self, spec, heldout, texts, ref_texts, gold, ref_gold) -> dict:
        """How far the proxy a policy was trained against over-rates it, compared with gold (standardised gains)."""
        from prefopt.evaluation.hacking import hacking_gap
        from prefopt.evaluation.judge_protocol import judge_pairs

        judge = self.make_judge(spec)
        convs = [user_turn(q) for q in heldout]
        try:  # a scoring judge: one score per sample
            proxy_policy, proxy_ref = judge.score(convs, texts), judge.score(convs, ref_texts)
        except NotImplementedError:  # a compare-only judge (LM, HTTP): only its win rate
            return {"proxy_win_rate": _mean(judge_pairs(judge, convs, texts, ref_texts).decisions)}
        out = {"proxy_reward": _mean(proxy_policy), "proxy_reward_ref": _mean(proxy_ref)}
        out["proxy_win_rate"] = _mean(float(a > b) + 0.5 * float(a == b) for a, b in zip(proxy_policy, proxy_ref))
        out.update(hacking_gap(proxy_policy, proxy_ref, gold, ref_gold))
        return out

    def _best_of_n_hacking(self, cell: Cell, prep: dict, summary: dict) -> None:
        """Best-of-n under a proxy reward model: proxy and gold gains against sqrt(KL), into hacking/<task>.json."""
        from prefopt.evaluation.hacking import best_of_n_curve, curve_records, overoptimisation_point

        if "bo_texts" not in prep:
            return
        judge = self.make_judge(f"reward:{summary['output_dir']}")
        heldout = prep["heldout"]
        n = self.suite.eval.best_of
        asked = [user_turn(q) for q in heldout for _ in range(n)]
        proxy = _groups(judge.score(asked, [t for group in prep["bo_texts"] for t in group]), n)
        proxy_ref = judge.score([user_turn(q) for q in heldout], prep["ref_texts"])
        points = best_of_n_curve(proxy, prep["bo_gold"], proxy_ref, prep["ref_gold"], seed=cell.seed)
        path = hacking_path(self.results_dir, cell.task)
        record = json.loads(path.read_text()) if path.exists() else {}
        by_seed = record.get("best_of_n_by_seed", {})
        by_seed[str(cell.seed)] = curve_records(points)
        first = by_seed[min(by_seed, key=int)]
        record.update({
            "proxy": f"reward:{{cell:{cell.algo}}}", "planted": prep.get("planted"), "best_of_n_by_seed": by_seed,
            "best_of_n": first,
            "overoptimisation": overoptimisation_point([math.sqrt(p["kl"]) for p in first], [p["gold"] for p in first],
                                                       [p["proxy"] for p in first]),
        })  # fmt: skip
        atomic_write_json(path, record)

    # ---- the whole suite

    def run(self, only: list[str] | None = None) -> tuple[int, list[tuple[Cell, str]]]:
        """Run every missing cell; returns (cells run now, failures).

        The caller holds the results folder's lock (:func:`.paths.results_lock`), as run_suite does, so that no
        other bench reads or appends rows in between.
        """
        from tqdm.auto import tqdm

        results = self.results_dir / RESULTS
        todo_all = cells(self.suite, only)
        table = read_results(results)
        done = done_cells(table, self.suite, results, code_version=git_hash())
        todo = [c for c in todo_all if c not in done]
        self._say(f"suite {self.suite.name} v{self.suite.version}: {len(todo_all)} cells, {len(todo_all) - len(todo)} "
                  f"already in {results}, {len(todo)} to run")
        failures: list[tuple[Cell, str]] = []
        with_sanity = set(table.loc[table["output_kind"] == "sanity", "task"]) if len(table) else set()
        for task in dict.fromkeys(c.task for c in todo_all):
            if task not in with_sanity and self.suite.eval.sanity:
                try:
                    for row in self.sanity_rows(task):
                        append_row(results, row)
                except PrefoptError as e:
                    failures.append((Cell(task, "sanity", 0), str(e)))
                    self._say(f"{task}/sanity rows failed: {e}")
        bar = tqdm(total=len(todo_all), initial=len(todo_all) - len(todo), desc="cells", unit="cell",
                   disable=not self.progress, file=sys.stderr)
        for cell in todo:
            bar.set_postfix_str(f"{cell.task}/{cell.algo}/seed{cell.seed}")
            failed_refs = [f for f, _ in failures if f.task == cell.task and f.seed == cell.seed
                           and f.algo in cell_refs(self.suite.algorithms[cell.algo])]  # fmt: skip
            if failed_refs:
                failures.append((cell, f"skipped: {failed_refs[0].algo} failed"))
                bar.update(1)
                continue
            try:
                row = self.run_cell(cell)
            except PrefoptError as e:
                failures.append((cell, str(e)))
                self._say(f"{cell.task}/{cell.algo}/seed{cell.seed} failed: {e}")
            else:
                append_row(results, row)
            bar.update(1)
        bar.close()
        for name in self.suite.task_names:  # a resumed suite with nothing left to run still records its tasks
            if name not in self._prepared:
                self.prepare(self.suite.task_spec(name), cached_only=True)
        atomic_write_json(self.results_dir / "suite.json", {
            "suite": self.suite.name, "version": self.suite.version, "file": self.suite.path,
            "prepared": {name: {k: v for k, v in prep.items() if k in PREPARED_SUMMARY}
                         for name, prep in self._prepared.items()},
            "provenance": provenance(),
        })  # fmt: skip
        return len(todo) - len(failures), failures

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)


def gold_win_rates(gold: list[float], reference_golds: list[list[float]]) -> list[float]:
    """Per prompt: the reply's gold decision against each reference reply (1 better, 0 worse, 1/2 tie), averaged."""
    from prefopt.evaluation.metrics import score_decisions

    return [_mean(score_decisions([g] * len(refs), refs)) for g, refs in zip(gold, reference_golds)]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _groups(values: list, size: int) -> list[list]:
    """Consecutive groups of `size` (the samples of one prompt)."""
    return [values[i : i + size] for i in range(0, len(values), size)]


def _copy_curve(source: Path, target: Path) -> None:
    """The run's metrics lines with their numbers only (a torn last line, as resume drops it, is skipped)."""
    rows = []
    if source.exists():
        for line in source.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    write_records(target, rows)


def _calibration_columns(calibration: dict | None) -> dict:
    """The judge_cal_* columns (the same in every row of a task)."""
    if not calibration:
        return {}
    return {"judge_cal_agreement": calibration["agreement"], "judge_cal_low": calibration["low"],
            "judge_cal_high": calibration["high"], "judge_cal_n": calibration["n"],
            "judge_cal_tie_rate": calibration["tie_rate"],
            "judge_cal_position_bias": math.nan if calibration["position_bias"] is None else calibration["position_bias"],
            "judge_cal_threshold": calibration["threshold"]}  # fmt: skip


def _shown_spec(spec: str) -> str:
    """A judge spec as written to results: a key inside an http judge's URL is masked."""
    if not spec:
        return spec
    kind, arg = split_spec(spec)
    return f"{kind}:{mask_url(arg)}" if kind == "http" else spec


def _proxy_spec(algorithm) -> str | None:
    """The reward source a policy was trained against, if it is a proxy (anything but a gold rule)."""
    reward_source = getattr(algorithm, "reward_source", None)  # declared by online algorithms
    spec = reward_source() if reward_source is not None else None
    if not spec or str(spec).startswith("gold"):
        return None
    return str(spec)


def _budget(algo_cls, algo_config, summary: dict) -> dict:
    """What a cell's training consumed, comparable across algorithms: for an offline objective the labelled
    comparisons it saw (optimizer steps x global batch, halved for an unpaired objective, whose batch holds the two
    halves of a pair as two examples); for an online one the reward queries, one per sampled completion: steps x
    prompts per step x the algorithm's completions_per_prompt(). A group
    method's refills (DAPO's dynamic sampling) are not counted."""
    steps, batch = summary.get("steps", math.nan), summary.get("global_batch", math.nan)
    if algo_cls.online:
        return {"reward_queries": steps * batch * algo_cls(algo_config).completions_per_prompt()}
    per_comparison = 2 if getattr(algo_cls, "inputs", "pairs") == "unpaired" else 1
    return {"comparisons_seen": steps * batch / per_comparison}


def _tokens(run_dir: Path) -> float:
    """Tokens the training run processed, from its metrics log (nan when it logged none)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return math.nan
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counted = [r["tokens"] for r in rows if "tokens" in r]
    return float(sum(counted)) if counted else math.nan


def _provenance_columns(summary: dict) -> dict:
    """The row's provenance columns (and the CPU count), from the training run's summary."""
    prov = summary.get("provenance", {})
    versions = prov.get("versions", {})
    return {
        "git": prov.get("git"),
        "python": prov.get("python"),
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "peft": versions.get("peft"),
        "device": summary.get("device"),
        "cpu_count": prov.get("cpu_count"),
        "precision": summary.get("precision"),
    }


def run_suite(suite_path: str, results_dir: str | None = None, work_dir: str | None = None,
              only: list[str] | None = None, restart: bool = False, progress: bool = True) -> dict:
    """`prefopt bench`: run a suite, then render its report. Returns a small summary."""
    suite = load_suite(suite_path)  # names checked before any folder is made or removed
    results = Path(results_dir or Path("results") / suite.name)
    work = Path(work_dir or Path("runs") / "bench" / suite.name)
    results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with results_lock(results / RESULTS):  # one bench per results folder, for the whole run
        if restart:  # this suite's rows and its own task folders in its work folder, nothing else
            remove_inside(results, results / RESULTS)
            for task in suite.task_names:
                remove_inside(work, work / task)
        bench = Bench(suite, results, work, progress=progress)
        ran, failures = bench.run(only)
        report = {}
        if (results / RESULTS).exists():
            from prefopt.bench.report import render

            try:
                report = {k: str(v) for k, v in render(results).items()}
            except PrefoptError as e:
                failures.append((Cell("-", "report", 0), str(e)))
    return {"ran": ran, "failures": failures, "seconds": time.perf_counter() - started, "results": str(results),
            "report": report}
