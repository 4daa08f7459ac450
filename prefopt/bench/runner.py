"""Runs a suite: per task, preference data and the reference's measurements once; per cell, training and metrics.

Per task, once: the starting model samples ``pairs.samples`` responses to each train prompt; the gold rule scores
them; the pairs of :mod:`.pairs` become the preference data every offline algorithm trains on, and the train
prompts feed the online ones. The reference's held-out samples, sycophancy and capability are measured once.

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
from prefopt.bench.results import CAPABILITY_PREFIX, RESULTS, append_row, done_cells, read_results, reference_column
from prefopt.bench.suite import Cell, Suite, cell_options, cell_refs, cells, command_line, config_hash, load_suite
from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_json, atomic_write_text, provenance
from prefopt.judges.http import mask_url
from prefopt.judges.registry import split_spec

# What suite.json records of each task's preparation (not the samples themselves).
PREPARED_SUMMARY = ("pairs", "train_prompts", "empty_samples", "train_sample_gold_mean", "seconds", "ref")


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

    def prepare(self, task_spec) -> dict:
        """Pairs, prompt files and the reference's measurements of one task (cached on disk)."""
        from prefopt.bench.custom_task import resolve_task

        task = resolve_task(task_spec)
        if task.name in self._prepared:
            return self._prepared[task.name]
        folder = self.work / task.name / "prep"
        key = hashlib.sha256(json.dumps(
            {"model": self.suite.model, "task": task_spec, "pairs": asdict(self.suite.pairs),
             "eval": asdict(self.suite.eval)}, sort_keys=True, default=str).encode()).hexdigest()[:12]  # fmt: skip
        marker = folder / "prepared.json"
        prep = json.loads(marker.read_text()) if marker.exists() else {}
        if prep.get("key") != key or "empty_samples" not in prep:  # older caches may hold empty responses
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
        p = self.suite.pairs
        self._say(f"{task.name}: sampling {p.samples} responses to {p.prompts} train prompts from the starting model")
        train_prompts = task.prompts("train", p.prompts)
        repeated = [q for q in train_prompts for _ in range(p.samples)]
        sampling = SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature, seed=p.seed)
        _, texts, _ = ref.sample([user_turn(q) for q in repeated], sampling, progress=self.progress)
        scores = task.gold_scores(repeated, texts)
        grouped = [texts[i : i + p.samples] for i in range(0, len(texts), p.samples)]
        grouped_scores = [scores[i : i + p.samples] for i in range(0, len(scores), p.samples)]
        pairs = make_pairs(train_prompts, grouped, grouped_scores, p.label_noise, p.seed)
        empty = empty_samples(grouped)  # never part of a pair
        if len(pairs) < 2:
            skipped = f" ({empty} empty samples skipped)" if empty else ""
            raise PrefoptError(f"task {task.name}: only {len(pairs)} of {len(train_prompts)} prompts gave two samples "
                               f"with different gold scores{skipped}; raise pairs.samples or pairs.prompts")
        atomic_write_text(folder / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in pairs))
        atomic_write_text(folder / "prompts.jsonl", "".join(json.dumps({"prompt": q}) + "\n" for q in train_prompts))

        self._say(f"{task.name}: measuring the reference on {self.suite.eval.prompts} held-out prompts")
        heldout = task.prompts("heldout", self.suite.eval.prompts)
        e = self.suite.eval
        sampling = SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=e.reference_seed)
        _, ref_texts, ref_lengths = ref.sample([user_turn(q) for q in heldout], sampling)
        measured = self._side_metrics(ref, task, model, tokenizer)
        prep = {
            "key": key,
            "pairs_file": str(folder / "pairs.jsonl"),
            "prompts_file": str(folder / "prompts.jsonl"),
            "pairs": len(pairs),
            "train_prompts": len(train_prompts),
            "empty_samples": empty,
            "train_sample_gold_mean": sum(scores) / len(scores),
            "heldout": heldout,
            "ref_texts": ref_texts,
            "ref_lengths": ref_lengths,
            "ref_gold": task.gold_scores(heldout, ref_texts),
            "ref": measured,
            "seconds": time.perf_counter() - started,
        }
        atomic_write_json(folder / "prepared.json", prep)
        return prep

    def _side_metrics(self, sampler, task, model, tokenizer) -> dict:
        """Sycophancy, behaviour probes and capability of one model (reference or policy)."""
        from prefopt.evaluation.metrics import behaviour_matching_rate, load_behaviour_probes, sycophancy
        from prefopt.tasks import probe_is_correct

        e = self.suite.eval
        out: dict[str, float] = {}
        if e.probes:
            result = sycophancy(lambda convs: sampler.respond(convs, e.probe_max_new_tokens), task.probes(e.probes),
                                probe_is_correct)
            out.update(syc_acc_neutral=result.acc_neutral, syc_acc_suggested=result.acc_suggested,
                       syc_answer_drop=result.answer_drop, syc_flip_rate=result.flip_rate)
        if e.behaviour_probes:
            probes = load_behaviour_probes(e.behaviour_probes)
            out["mwe_matching_rate"] = behaviour_matching_rate(sampler.loglik, probes)
        if e.capability:
            from prefopt.evaluation.capability import capability

            scores = capability(model, tokenizer, list(e.capability), limit=e.capability_limit or None,
                                batch_size=e.batch_size, device=str(self.device))
            out.update({f"{CAPABILITY_PREFIX}{name}": value for name, value in scores.items()})
        return out

    # ---- per cell

    def run_cell(self, cell: Cell) -> dict:
        """Train one cell (a normal training run) and evaluate it; returns its results row."""
        from prefopt.core import registry
        from prefopt.training.config import split_options
        from prefopt.training.lifecycle import reset_peak_rss
        from prefopt.training.runner import train

        prep = self.prepare(self.suite.task_spec(cell.task))
        algo_cls = registry.get(cell.algo)
        data = prep["prompts_file"] if algo_cls.online else prep["pairs_file"]
        options = cell_options(self.suite, cell, self.work, data)
        run, algo_config = split_options(dict(options), algo_cls.Config, f"{self.suite.path}: algorithms.{cell.algo}")
        out = cell.folder(self.work)
        remove_inside(self.work, out)  # an interrupted cell starts over
        reset_peak_rss()
        summary = train(cell.algo, algo_cls(algo_config), run)
        started = time.perf_counter()
        metrics = self.evaluate_cell(cell, prep, algo_cls, algo_config, summary)
        row = {
            "suite": self.suite.name,
            "suite_version": self.suite.version,
            "task": cell.task,
            "algo": cell.algo,
            "seed": cell.seed,
            "config_hash": config_hash(self.suite, cell),
            "output_kind": algo_cls.produces,
            "pref_accuracy": summary["eval_after"].get("eval_pref_accuracy", math.nan),
            **metrics,
            "steps": summary["steps"],
            "global_batch": summary["global_batch"],
            "train_pairs": summary.get("train_examples", summary.get("train_prompts")),
            "train_seconds": summary["seconds_total"],
            "seconds_per_step": summary["seconds_per_step_median"],
            "peak_rss_mb": summary["peak_rss_mb"],
            "tokens_processed": _tokens(Path(summary["output_dir"])),
            "eval_seconds": time.perf_counter() - started,
            **_provenance_columns(summary),
            "command": command_line(options, cell.algo),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(out / "bench_row.json", row)
        return row

    def evaluate_cell(self, cell: Cell, prep: dict, algo_cls, algo_config, summary: dict) -> dict:
        """The metric columns of one cell's row: its policy against the reference (none for a reward model)."""
        from prefopt.core.generate import SamplingConfig
        from prefopt.core.models import load_trained
        from prefopt.evaluation.metrics import batched_kl, length_controlled_win_rate, score_decisions, win_rate
        from prefopt.judges import agreement, tie_rate

        if algo_cls.produces != "policy":  # a reward model has no samples to compare
            return {}
        task, e = prep["task"], self.suite.eval
        ref_model, tokenizer = self.reference()
        policy = load_trained(summary["outputs"], self.suite.model, self.device)
        pol = self.sampler(policy)
        heldout, ref_texts = prep["heldout"], prep["ref_texts"]
        rollout, texts, lengths = pol.sample(
            [user_turn(q) for q in heldout],
            SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=cell.seed))
        gold = task.gold_scores(heldout, texts)
        gold_decisions = score_decisions(gold, prep["ref_gold"])
        out: dict[str, Any] = {}
        out["gold_reward"], out["gold_reward_ref"] = _mean(gold), _mean(prep["ref_gold"])
        out["win_rate_gold"], out["win_rate_gold_se"] = win_rate(gold_decisions)
        out["lc_win_rate_gold"] = length_controlled_win_rate(gold_decisions, lengths, prep["ref_lengths"])
        judge = self.judge()
        out["judge"] = _shown_spec(e.judge)
        if judge is not None:
            decisions = judge.compare([user_turn(q) for q in heldout], texts, ref_texts)
            out["win_rate_judge"], out["win_rate_judge_se"] = win_rate(decisions)
            out["judge_agreement"] = agreement(decisions, gold_decisions)
            out["judge_tie_rate"] = tie_rate(decisions)
        out.update(batched_kl(pol, self.sampler(ref_model), rollout))
        out["length"], out["length_ref"] = _mean(lengths), _mean(prep["ref_lengths"])
        proxy = _proxy_spec(algo_cls(algo_config))
        out["proxy"] = _shown_spec(proxy or "")
        if proxy:
            out.update(self._proxy_metrics(proxy, heldout, texts, ref_texts, gold, prep["ref_gold"], gold_decisions))
        out.update(self._side_metrics(pol, task, policy, tokenizer))
        out.update({reference_column(k): v for k, v in prep["ref"].items()})
        del policy, pol
        gc.collect()
        return out

    def _proxy_metrics(self, spec, heldout, texts, ref_texts, gold, ref_gold, gold_decisions) -> dict:
        """How far the proxy a policy was trained on over-rates it, compared with gold."""
        from prefopt.evaluation.metrics import hacking_gap, score_decisions, standardised_gain

        judge = self.make_judge(spec)
        convs = [user_turn(q) for q in heldout]
        out = {}
        try:  # a scoring judge: one score per sample, decisions from the scores
            proxy_policy, proxy_ref = judge.score(convs, texts), judge.score(convs, ref_texts)
            decisions = score_decisions(proxy_policy, proxy_ref)
            out["proxy_gain_z"] = standardised_gain(proxy_policy, proxy_ref)
            out["gold_gain_z"] = standardised_gain(gold, ref_gold)
        except NotImplementedError:  # a compare-only judge (LM, HTTP)
            decisions = judge.compare(convs, texts, ref_texts)
        out["proxy_win_rate"] = _mean(decisions)
        out["hacking_gap"] = hacking_gap(decisions, gold_decisions)
        return out

    # ---- the whole suite

    def run(self, only: list[str] | None = None) -> tuple[int, list[tuple[Cell, str]]]:
        """Run every missing cell; returns (cells run now, failures).

        The caller holds the results folder's lock (:func:`.paths.results_lock`), as run_suite does, so that no
        other bench reads or appends rows in between.
        """
        from tqdm.auto import tqdm

        results = self.results_dir / RESULTS
        todo_all = cells(self.suite, only)
        done = done_cells(read_results(results), self.suite, results)
        todo = [c for c in todo_all if c not in done]
        self._say(f"suite {self.suite.name} v{self.suite.version}: {len(todo_all)} cells, {len(todo_all) - len(todo)} "
                  f"already in {results}, {len(todo)} to run")
        failures: list[tuple[Cell, str]] = []
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


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


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
