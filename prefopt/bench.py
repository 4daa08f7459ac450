"""Benchmark suites: algorithms x seeds x tasks, same policy, data and budget.

A suite is a versioned YAML file (see ``benchmarks/quick.yaml``)::

    name: quick            # results go to results/<name>/
    version: 1
    model: smollm2-135m-instruct
    seeds: [0, 1, 2]
    tasks: [qa]            # built-in task names, or {name, prompts, gold} for your own
    train: {steps: 16}     # run options shared by every cell (as `prefopt run key=value`)
    algorithms:            # name -> its own options (run options too); placeholders:
      dpo: {}              #   {task}: the cell's task; {cell:ALGO}: that algorithm's run folder
      ppo: {judge: "reward:{cell:reward}"}   # for the same task and seed (run before it)
    pairs: {...}           # how preference data is sampled (PairSettings)
    eval: {...}            # how policies are evaluated (EvalSettings)

Per task, once: the starting model samples ``pairs.samples`` responses to each
train prompt; the gold rule scores them; best vs worst (ties dropped, a
``label_noise`` fraction swapped) become the preference data every offline
algorithm trains on, and the train prompts feed the online ones. The
reference's held-out samples, sycophancy and capability are measured once.

Per cell: a normal training run (the same ``train()`` that ``prefopt run``
calls) into ``<work>/<task>/<algo>/seed<seed>``, then the metrics of
:mod:`prefopt.evaluate`. Each finished cell adds one row to
``results/<name>/results.csv`` (rewritten atomically); cells already in the
CSV are skipped, so a killed benchmark resumes where it stopped. A cell whose
config changed since its row was written is an error, not a silent mix.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import random
import re
import shutil
import sys
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prefopt.config import coerce
from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_json, atomic_write_text, provenance

RESULTS = "results.csv"
KEY = ("task", "algo", "seed")


# ---------------------------------------------------------------- suite files


@dataclass
class PairSettings:
    """Preference pairs sampled from the starting model and labelled by the gold rule."""

    prompts: int = 160  # train prompts per task
    samples: int = 4  # responses sampled per prompt; best vs worst by gold becomes a pair
    max_new_tokens: int = 40  # longest sampled response
    temperature: float = 1.0  # sampling temperature
    label_noise: float = 0.0  # fraction of pairs whose labels are swapped (annotator disagreement)
    seed: int = 1234  # sampling and noise seed (one data set for every cell)


@dataclass
class EvalSettings:
    """How every trained policy is compared with the reference."""

    prompts: int = 32  # held-out prompts (one policy and one reference sample each)
    max_new_tokens: int = 40  # longest sampled response
    temperature: float = 1.0  # sampling temperature of the compared samples
    reference_seed: int = 4321  # the reference's samples (the policy samples with the cell's seed)
    judge: str = "lm"  # AI judge for the second win rate ("" to skip): lm[:MODEL] | http:URL | reward:DIR
    probes: int = 24  # sycophancy probes (0 to skip)
    probe_max_new_tokens: int = 32  # longest greedy reply in the sycophancy conversations
    behaviour_probes: str = ""  # optional jsonl in Anthropic's model-written-evals format
    capability: list = field(default_factory=lambda: ["prefopt_arith", "prefopt_world"])  # lm-eval tasks ([] to skip)
    capability_limit: int = 0  # items per lm-eval task (0: all)
    batch_size: int = 16  # generation / forward batch


@dataclass
class Suite:
    name: str
    version: int
    model: str
    seeds: list
    tasks: list
    algorithms: dict
    train: dict
    pairs: PairSettings
    eval: EvalSettings
    path: str = ""

    @property
    def task_names(self) -> list[str]:
        return [t if isinstance(t, str) else str(t.get("name", "")) for t in self.tasks]


def _typed(cls, values: Any, path: Path, section: str):
    where = f"{path}: {section}"
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise PrefoptError(f"{where}: expected a mapping of option: value")
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            raise PrefoptError(f"{where}: unknown option '{key}' (options: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})
    except PrefoptError as e:
        raise PrefoptError(f"{path}: {e}") from None


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every problem is one line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(f"suite file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PrefoptError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PrefoptError(f"{path}: expected a mapping at the top level")
    allowed = {"name", "version", "description", "model", "seeds", "tasks", "algorithms", "train", "pairs", "eval"}
    for key in raw:
        if key not in allowed:
            raise PrefoptError(f"{path}: unknown key '{key}' (keys: {', '.join(sorted(allowed))})")
    for key in ("name", "algorithms"):
        if key not in raw:
            raise PrefoptError(f"{path}: missing key '{key}'")
    algorithms = raw["algorithms"]
    if isinstance(algorithms, list):
        algorithms = {a: {} for a in algorithms}
    if not isinstance(algorithms, dict) or not algorithms:
        raise PrefoptError(f"{path}: 'algorithms' must be a non-empty mapping of name: options")
    algorithms = {str(k): dict(v or {}) for k, v in algorithms.items()}
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise PrefoptError(f"{path}: 'seeds' must be a non-empty list of integers")
    tasks = raw.get("tasks", ["qa"])
    if not isinstance(tasks, list) or not tasks:
        raise PrefoptError(f"{path}: 'tasks' must be a non-empty list")
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise PrefoptError(f"{path}: 'train' must be a mapping of run option: value")
    suite = Suite(
        name=str(raw["name"]),
        version=int(raw.get("version", 1)),
        model=str(raw.get("model", "smollm2-135m-instruct")),
        seeds=seeds,
        tasks=tasks,
        algorithms=algorithms,
        train=train,
        pairs=_typed(PairSettings, raw.get("pairs"), path, "pairs"),
        eval=_typed(EvalSettings, raw.get("eval"), path, "eval"),
        path=str(path),
    )
    _check_references(suite)
    return suite


def _refs_in(text: str) -> list[str]:
    """Algorithm names of the {cell:ALGO} placeholders in text."""
    return re.findall(r"\{cell:([^}]*)\}", text)


def _cell_refs(options: dict) -> list[str]:
    return [ref for value in options.values() for ref in _refs_in(str(value))]


def _check_references(suite: Suite) -> None:
    for algo, options in suite.algorithms.items():
        for ref in _cell_refs(options):
            if ref not in suite.algorithms:
                raise PrefoptError(f"{suite.path}: algorithms.{algo} refers to '{{cell:{ref}}}', which is not in the suite")


def algorithm_order(suite: Suite) -> list[str]:
    """Suite order, except that an algorithm comes after the cells it refers to."""
    order: list[str] = []

    def visit(algo: str, trail: tuple) -> None:
        if algo in order:
            return
        if algo in trail:
            raise PrefoptError(f"{suite.path}: algorithms refer to each other in a cycle: {' -> '.join(trail + (algo,))}")
        for ref in _cell_refs(suite.algorithms[algo]):
            visit(ref, trail + (algo,))
        order.append(algo)

    for algo in suite.algorithms:
        visit(algo, ())
    return order


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    task: str
    algo: str
    seed: int

    def folder(self, work: Path) -> Path:
        return work / self.task / self.algo / f"seed{self.seed}"


def cells(suite: Suite, only: list[str] | None = None) -> list[Cell]:
    """Seeds outermost (a partial benchmark already has every algorithm), then tasks, then algorithms."""
    order = algorithm_order(suite)
    if only:
        unknown = [a for a in only if a not in suite.algorithms]
        if unknown:
            raise PrefoptError(f"--algos: {', '.join(unknown)} not in the suite ({', '.join(suite.algorithms)})")
        needed = set(only)
        for algo in only:  # keep what the chosen ones refer to
            needed.update(_cell_refs(suite.algorithms[algo]))
        order = [a for a in order if a in needed]
    return [Cell(t, a, s) for s in suite.seeds for t in suite.task_names for a in order]


def _substitute(value: Any, cell: Cell, work: Path) -> Any:
    if not isinstance(value, str):
        return value
    text = value.replace("{task}", cell.task)
    for ref in _refs_in(text):
        text = text.replace(f"{{cell:{ref}}}", str(Cell(cell.task, ref, cell.seed).folder(work)))
    return text


def cell_options(suite: Suite, cell: Cell, work: Path, data: str) -> dict:
    """The `prefopt run` options of one cell: suite train options < algorithm options < cell identity."""
    values = {**suite.train, **suite.algorithms[cell.algo]}
    values = {k: _substitute(v, cell, work) for k, v in values.items()}
    values.update(model=suite.model, data=data, seed=cell.seed, output_dir=str(cell.folder(work)), progress=False)
    return values


def config_hash(suite: Suite, cell: Cell) -> str:
    """What a cell's numbers depend on, except its seed (paths excluded: results move)."""
    task = next(t for t in suite.tasks if (t if isinstance(t, str) else t.get("name")) == cell.task)
    payload = {
        "model": suite.model,
        "task": task,
        "train": suite.train,
        "algo": cell.algo,
        "options": suite.algorithms[cell.algo],
        "pairs": asdict(suite.pairs),
        "eval": asdict(suite.eval),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def command_line(options: dict, algo: str) -> str:
    """The equivalent `prefopt run` command of a cell."""
    parts = ["prefopt", "run", "--algo", algo]
    parts += [f"{k}={v}" for k, v in options.items() if k not in ("progress",)]
    return " ".join(parts)


# ---------------------------------------------------------------- results table


# Identity columns stay text: a hash such as "040305344283" must not be read back as a number.
TEXT_COLUMNS = ("suite", "suite_version", "task", "algo", "config_hash", "output_kind", "judge", "proxy", "git",
                "python", "torch", "transformers", "peft", "device", "precision", "command", "finished_at")  # fmt: skip


def read_results(path: Path):
    import pandas as pd

    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path, keep_default_na=True, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise PrefoptError(f"{path}: cannot read the results table ({str(e).splitlines()[0]})") from None


def append_row(path: Path, row: dict) -> None:
    """Add one cell's row; the whole CSV is rewritten atomically, so a kill never leaves half a row."""
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


# ---------------------------------------------------------------- per-task preparation


def _chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def make_pairs(prompts: list[str], samples: list[list[str]], scores: list[list[float]], noise: float, seed: int) -> list[dict]:
    """Best vs worst sample of each prompt by gold score; ties dropped; a `noise` fraction swapped.

    Returns rows in the standard pair format plus their gold scores and whether the label was swapped.
    """
    rng = random.Random(seed)
    rows = []
    for prompt, texts, values in zip(prompts, samples, scores):
        best = max(range(len(texts)), key=lambda i: values[i])
        worst = min(range(len(texts)), key=lambda i: values[i])
        if values[best] == values[worst]:
            continue
        flipped = rng.random() < noise
        chosen, rejected = (worst, best) if flipped else (best, worst)
        rows.append({
            "prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected],
            "gold_chosen": values[chosen], "gold_rejected": values[rejected], "label_swapped": flipped,
        })  # fmt: skip
    return rows


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
            from prefopt.models import load_model, load_tokenizer

            tokenizer = load_tokenizer(self.suite.model)
            model = load_model(self.suite.model, adapter="full", device=self.device).eval().requires_grad_(False)
            self._reference = (model, tokenizer)
        return self._reference

    @property
    def device(self):
        from prefopt.models import pick_device

        return pick_device()

    @property
    def precision(self) -> str:
        from prefopt.models import resolve_precision

        return resolve_precision(str(self.suite.train.get("precision", "auto")), self.device)

    def sampler(self, model):
        from prefopt.evaluate import Sampler

        return Sampler(model, self.reference()[1], self.precision, self.suite.eval.batch_size)

    def judge(self):
        if self.suite.eval.judge and self._judge is None:
            self._judge = self.make_judge(self.suite.eval.judge)
        return self._judge

    def make_judge(self, spec: str):
        """A judge from its spec; model-based judges run on the bench's device and precision."""
        from prefopt.judges import make_judge

        kind = spec.split(":", 1)[0]
        options = {"precision": self.precision, "device": str(self.device)} if kind in ("lm", "reward") else {}
        return make_judge(spec, **options)

    # ---- per task

    def prepare(self, task_spec) -> dict:
        """Pairs, prompt files and the reference's measurements of one task (cached on disk)."""
        from prefopt.tasks import get_task

        task = get_task(task_spec)
        if task.name in self._prepared:
            return self._prepared[task.name]
        folder = self.work / task.name / "prep"
        key = hashlib.sha256(json.dumps(
            {"model": self.suite.model, "task": task_spec, "pairs": asdict(self.suite.pairs),
             "eval": asdict(self.suite.eval)}, sort_keys=True, default=str).encode()).hexdigest()[:12]  # fmt: skip
        marker = folder / "prepared.json"
        prep = json.loads(marker.read_text()) if marker.exists() else {}
        if prep.get("key") != key:
            prep = self._prepare(task, folder, key)
        prep["task"] = task
        self._prepared[task.name] = prep
        return prep

    def _prepare(self, task, folder: Path, key: str) -> dict:
        from prefopt.generate import SamplingConfig

        started = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model, tokenizer = self.reference()
        ref = self.sampler(model)
        p = self.suite.pairs
        self._say(f"{task.name}: sampling {p.samples} responses to {p.prompts} train prompts from the starting model")
        train_prompts = task.prompts("train", p.prompts)
        repeated = [q for q in train_prompts for _ in range(p.samples)]
        _, texts, _ = ref.sample([_chat(q) for q in repeated],
                                 SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature, seed=p.seed),
                                 progress=self.progress)
        scores = task.gold_scores(repeated, texts)
        grouped = [texts[i : i + p.samples] for i in range(0, len(texts), p.samples)]
        grouped_scores = [scores[i : i + p.samples] for i in range(0, len(scores), p.samples)]
        pairs = make_pairs(train_prompts, grouped, grouped_scores, p.label_noise, p.seed)
        if len(pairs) < 2:
            raise PrefoptError(f"task {task.name}: only {len(pairs)} of {len(train_prompts)} prompts gave two samples "
                               "with different gold scores; raise pairs.samples or pairs.prompts")
        atomic_write_text(folder / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in pairs))
        atomic_write_text(folder / "prompts.jsonl", "".join(json.dumps({"prompt": q}) + "\n" for q in train_prompts))

        self._say(f"{task.name}: measuring the reference on {self.suite.eval.prompts} held-out prompts")
        heldout = task.prompts("heldout", self.suite.eval.prompts)
        e = self.suite.eval
        _, ref_texts, ref_lengths = ref.sample(
            [_chat(q) for q in heldout], SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                                                        seed=e.reference_seed))  # fmt: skip
        measured = self._side_metrics(ref, task, model, tokenizer)
        prep = {
            "key": key,
            "pairs_file": str(folder / "pairs.jsonl"),
            "prompts_file": str(folder / "prompts.jsonl"),
            "pairs": len(pairs),
            "train_prompts": len(train_prompts),
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
        from prefopt.evaluate import behaviour_matching_rate, load_behaviour_probes, sycophancy
        from prefopt.tasks import probe_is_correct

        e = self.suite.eval
        out: dict[str, float] = {}
        if e.probes:
            result = sycophancy(lambda convs: sampler.respond(convs, e.probe_max_new_tokens), task.probes(e.probes),
                                probe_is_correct)
            out.update(syc_acc_neutral=result.acc_neutral, syc_acc_suggested=result.acc_suggested,
                       syc_answer_drop=result.answer_drop, syc_flip_rate=result.flip_rate)
        if e.behaviour_probes:
            out["mwe_matching_rate"] = behaviour_matching_rate(sampler.loglik, load_behaviour_probes(e.behaviour_probes))
        if e.capability:
            from prefopt.capability import capability

            scores = capability(model, tokenizer, list(e.capability), limit=e.capability_limit or None,
                                batch_size=e.batch_size, device=str(self.device))
            out.update({f"cap_{name}": value for name, value in scores.items()})
        return out

    # ---- per cell

    def run_cell(self, cell: Cell) -> dict:
        """Train one cell (a normal training run) and evaluate it; returns its results row."""
        from prefopt import registry
        from prefopt.config import split_options
        from prefopt.train import reset_peak_rss, train

        prep = self.prepare(self._task_spec(cell.task))
        algo_cls = registry.get(cell.algo)
        data = prep["prompts_file"] if algo_cls.online else prep["pairs_file"]
        options = cell_options(self.suite, cell, self.work, data)
        run, algo_config = split_options(dict(options), algo_cls.Config, f"{self.suite.path}: algorithms.{cell.algo}")
        out = cell.folder(self.work)
        if out.exists():
            shutil.rmtree(out)  # an interrupted cell starts over
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

    def _task_spec(self, name: str):
        return next(t for t in self.suite.tasks if (t if isinstance(t, str) else t.get("name")) == name)

    def evaluate_cell(self, cell: Cell, prep: dict, algo_cls, algo_config, summary: dict) -> dict:
        from prefopt.evaluate import batched_kl, length_controlled_win_rate, score_decisions, win_rate
        from prefopt.generate import SamplingConfig
        from prefopt.judges import agreement, tie_rate
        from prefopt.models import load_trained

        if algo_cls.produces != "policy":  # a reward model has no samples to compare
            return {}
        task, e = prep["task"], self.suite.eval
        ref_model, tokenizer = self.reference()
        policy = load_trained(summary["outputs"], self.suite.model, self.device)
        pol = self.sampler(policy)
        heldout, ref_texts = prep["heldout"], prep["ref_texts"]
        rollout, texts, lengths = pol.sample(
            [_chat(q) for q in heldout],
            SamplingConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature, seed=cell.seed))
        gold = task.gold_scores(heldout, texts)
        gold_decisions = score_decisions(gold, prep["ref_gold"])
        out: dict[str, Any] = {}
        out["gold_reward"], out["gold_reward_ref"] = _mean(gold), _mean(prep["ref_gold"])
        out["win_rate_gold"], out["win_rate_gold_se"] = win_rate(gold_decisions)
        out["lc_win_rate_gold"] = length_controlled_win_rate(gold_decisions, lengths, prep["ref_lengths"])
        judge = self.judge()
        out["judge"] = e.judge
        if judge is not None:
            decisions = judge.compare([_chat(q) for q in heldout], texts, ref_texts)
            out["win_rate_judge"], out["win_rate_judge_se"] = win_rate(decisions)
            out["judge_agreement"] = agreement(decisions, gold_decisions)
            out["judge_tie_rate"] = tie_rate(decisions)
        out.update(batched_kl(pol, self.sampler(ref_model), rollout))
        out["length"], out["length_ref"] = _mean(lengths), _mean(prep["ref_lengths"])
        proxy = _proxy_spec(algo_config)
        out["proxy"] = proxy or ""
        if proxy:
            out.update(self._proxy_metrics(proxy, heldout, texts, ref_texts, gold, prep["ref_gold"], gold_decisions))
        side = self._side_metrics(pol, task, policy, tokenizer)
        out.update(side)
        ref_side = prep["ref"]
        for k, v in ref_side.items():
            name = k.replace("cap_", "cap_ref_", 1) if k.startswith("cap_") else f"{k}_ref"
            out[name] = v
        del policy, pol
        gc.collect()
        return out

    def _proxy_metrics(self, spec, heldout, texts, ref_texts, gold, ref_gold, gold_decisions) -> dict:
        """How far the proxy a policy was trained on over-rates it, compared with gold."""
        from prefopt.evaluate import hacking_gap, score_decisions, standardised_gain

        judge = self.make_judge(spec)
        convs = [_chat(q) for q in heldout]
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
        """Run every missing cell; returns (cells run now, failures)."""
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
                           and f.algo in _cell_refs(self.suite.algorithms[cell.algo])]  # fmt: skip
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
            "prepared": {name: {k: v for k, v in prep.items() if k in ("pairs", "train_prompts", "train_sample_gold_mean",
                                                                      "seconds", "ref")}
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


def _proxy_spec(algo_config) -> str | None:
    """The judge a policy was trained against, if it is a proxy (anything but a gold rule)."""
    spec = getattr(algo_config, "judge", None)
    if not spec or str(spec).startswith("gold"):
        return None
    return str(spec)


def _tokens(run_dir: Path) -> float:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return math.nan
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counted = [r["tokens"] for r in rows if "tokens" in r]
    return float(sum(counted)) if counted else math.nan


def _provenance_columns(summary: dict) -> dict:
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


def run_suite(suite_path: str, results_dir: str | None = None, work_dir: str | None = None, only: list[str] | None = None,
              restart: bool = False, progress: bool = True) -> dict:
    """`prefopt bench`: run a suite, then render its report. Returns a small summary."""
    suite = load_suite(suite_path)
    results = Path(results_dir or Path("results") / suite.name)
    work = Path(work_dir or Path("runs") / "bench" / suite.name)
    if restart:
        (results / RESULTS).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench = Bench(suite, results, work, progress=progress)
    ran, failures = bench.run(only)
    report = {}
    if (results / RESULTS).exists():
        from prefopt.report import render

        try:
            report = {k: str(v) for k, v in render(results).items()}
        except PrefoptError as e:
            failures.append((Cell("-", "report", 0), str(e)))
    return {"ran": ran, "failures": failures, "seconds": time.perf_counter() - started, "results": str(results),
            "report": report}
