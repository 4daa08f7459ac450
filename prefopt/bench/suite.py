"""Suite files and their cells: what a benchmark runs, read and checked before anything trains.

A suite is a versioned YAML file (see ``benchmarks/quick.yaml``)::

    name: quick            # results go to results/<name>/ (a plain name, as are task and algorithm names)
    version: 1
    model: smollm2-135m-instruct
    seeds: [0, 1, 2]
    tasks: [qa]            # built-in task names, or {name, prompts, gold} for your own
    train: {steps: 16}     # run options shared by every cell (as `prefopt run key=value`)
    algorithms:            # name -> its own options (run options too); placeholders:
      dpo: {}              #   {task}: the cell's task; {cell:NAME}: that entry's run folder
      ppo: {judge: "reward:{cell:reward}"}   # for the same task and seed (run before it)
      dpo-proxy: {algo: dpo, pairs: proxy, proxy: "reward:{cell:reward-proxy}"}
    pairs: {...}           # how preference data is sampled (PairSettings)
    eval: {...}            # how policies are evaluated (EvalSettings)
    hacking: {...}         # the planted-feature proxy labels (HackingSettings); needed by `pairs: proxy`
    tune: {...}            # a per-arm search of one option (the learning rate, or beta) on dev prompts (TuneSettings)

A cell is one (task, entry, seed): one training run into ``<work>/<task>/<name>/seed<seed>``. An entry's name is
its registered algorithm unless it says ``algo:``; ``pairs: proxy`` trains it on the proxy-labelled pairs (the same
samples labelled with a planted spurious feature, see :mod:`prefopt.evaluation.hacking`) instead of the gold-labelled
ones; ``proxy:`` names the proxy reward a policy is measured against for reward hacking (online algorithms
default to the reward they were trained on). These three keys are the bench's, not run options.

An entry may sweep one option, its strength (``dpo: {sweep: {beta: [0.03, 0.1, 0.3]}}``): it becomes one entry per
value, named ``<name>_<option><value>`` (``dpo_beta0.03`` ...), whose cells form the *arm* ``dpo``; the report
compares arms along their gold-vs-KL frontiers (:mod:`prefopt.evaluation.frontier`). The strength may be any
option that moves the policy away from the reference (beta, or the learning rate: ``benchmarks/standard.yaml`` sweeps
the learning rate, since at 16 Adam steps beta barely changes KL). With a ``tune`` section one other option of each
arm (``tune.option``: the learning rate, or beta) is chosen first, per task, on dev prompts disjoint from the held-out ones
(see :class:`TuneSettings`), and every cell of the arm trains with the chosen value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prefopt.bench.paths import check_name
from prefopt.errors import PrefoptError
from prefopt.training.config import coerce

TOP_LEVEL_KEYS = {"name", "version", "description", "model", "seeds", "tasks", "algorithms", "train", "pairs", "eval",
                  "hacking", "tune"}  # fmt: skip
# An entry's options that the bench reads (not passed to the run); "arm" and "strength" are set by a sweep.
BENCH_KEYS = ("algo", "pairs", "proxy", "sweep", "arm", "strength")
PAIR_KINDS = ("gold", "proxy")
SANITY_PREFIX = "sanity-"  # reserved: the report's sanity rows (sanity-empty, sanity-constant, ...)


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
    calibration_pairs: int = 200  # gold-labelled pairs the judge is calibrated on before the suite (0: none)
    judge_threshold: float = 0.6  # agreement with gold a judge needs to be read (and its interval above 0.5)
    probes: int = 200  # sycophancy probes per behaviour (answer, are-you-sure, feedback, mimicry; 0 to skip)
    probe_max_new_tokens: int = 32  # longest greedy reply in the sycophancy conversations
    behaviour_probes: str = ""  # optional jsonl in Anthropic's model-written-evals format
    capability: list = field(default_factory=lambda: ["prefopt_arith", "prefopt_world"])  # lm-eval tasks ([] to skip)
    capability_limit: int = 0  # items per lm-eval task (0: all)
    side_seeds: list = field(default_factory=list)  # seeds whose cells measure sycophancy and capability ([]: all)
    contamination_ngram: int = 8  # a capability item or probe sharing this many tokens with a prompt stops the suite
    reference_samples: int = 1  # reference replies per held-out prompt; a reply's gold win rate is against all
    sanity: bool = True  # the sanity rows: empty reply, best constant reply, a second reference sample, best-of-n
    best_of: int = 16  # n of the best-of-n row (reference samples per held-out prompt; also the hacking curve's)
    batch_size: int = 16  # generation / forward batch


@dataclass
class HackingSettings:
    """The proxy labels of ``pairs: proxy`` entries: gold plus a planted spurious feature gold does not reward."""

    feature: str = "length"  # the planted feature: "length" (response tokens)
    weight: float = 1.0  # proxy label score = z(gold) + weight * z(feature), over all the task's samples


@dataclass
class TuneSettings:
    """Per task and arm, one option (the learning rate, or beta) chosen on dev prompts before the arm's cells run.

    Each value trains one cell at the arm's middle strength with seed ``seed``; its replies to ``dev_prompts``
    prompts of the task's train split that no pair was sampled from (so disjoint from the held-out prompts) are
    scored by gold against ``eval.reference_samples`` reference replies each, and the value with the highest gold
    win rate (the first of equals) is the arm's.
    """

    option: str = "lr"  # the run option searched
    # its candidate values: one list for every arm, or {arm: list} where the option's scale differs per arm
    # (beta for DPO, tau for IPO)
    values: list | dict = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    dev_prompts: int = 64  # dev prompts per task
    seed: int = 0  # the training seed of the search's cells

    def values_for(self, arm: str) -> list:
        """The candidate values searched for one arm."""
        return list(self.values[arm]) if isinstance(self.values, dict) else list(self.values)


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
    hacking: HackingSettings | None = None
    tune: TuneSettings | None = None
    path: str = ""

    def arm(self, name: str) -> str:
        """The arm an entry belongs to: the swept entry's name, or the entry's own."""
        return str(self.algorithms[name].get("arm", name))

    def strength(self, name: str) -> tuple[str, Any] | None:
        """(option, value) of a swept entry, None for an entry that is not part of a sweep."""
        strength = self.algorithms[name].get("strength")
        return (str(strength[0]), strength[1]) if strength else None

    def arm_entries(self, arm: str) -> list[str]:
        """An arm's entries, in the order of their sweep values."""
        return [n for n in self.algorithms if self.arm(n) == arm]

    def tuning_entry(self, arm: str) -> str:
        """The entry a tuning search trains: the arm's middle strength (the lower middle of an even count)."""
        entries = self.arm_entries(arm)
        return entries[(len(entries) - 1) // 2]

    def tuned(self, arm: str) -> bool:
        """Whether an arm's tune.option is searched (not for online algorithms' proxies, an entry setting it or an
        arm that per-arm tune.values leave out)."""
        if self.tune is None or (isinstance(self.tune.values, dict) and arm not in self.tune.values):
            return False
        return not any(self.tune.option in self.algorithms[n] for n in self.arm_entries(arm))

    def algo(self, name: str) -> str:
        """The registered algorithm of an entry."""
        return str(self.algorithms[name].get("algo", name))

    def pair_kind(self, name: str) -> str:
        """Which pairs an entry trains on: "gold" or "proxy"."""
        return str(self.algorithms[name].get("pairs", "gold"))

    @property
    def task_names(self) -> list[str]:
        return [t if isinstance(t, str) else str(t.get("name", "")) for t in self.tasks]

    def task_spec(self, name: str) -> str | dict:
        """The task as the suite file wrote it: a built-in name or a custom task's mapping."""
        return next(t for t in self.tasks if (t if isinstance(t, str) else t.get("name")) == name)


# ---------------------------------------------------------------- reading a suite file


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
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise PrefoptError(f"{path}: unknown key '{key}' (keys: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    for key in ("name", "algorithms"):
        if key not in raw:
            raise PrefoptError(f"{path}: missing key '{key}'")
    algorithms = raw["algorithms"]
    if isinstance(algorithms, list):
        algorithms = {a: {} for a in algorithms}
    if not isinstance(algorithms, dict) or not algorithms:
        raise PrefoptError(f"{path}: 'algorithms' must be a non-empty mapping of name: options")
    check_name(raw["name"], f"{path}: name")
    for algo in algorithms:
        check_name(algo, f"{path}: algorithms.{algo}")
        if str(algo).startswith(SANITY_PREFIX):
            raise PrefoptError(f"{path}: algorithms.{algo}: names starting with '{SANITY_PREFIX}' are the report's "
                               "sanity rows; choose another name")  # fmt: skip
    for algo, options in algorithms.items():
        if options is not None and not isinstance(options, dict):
            raise PrefoptError(f"{path}: algorithms.{algo}: expected a mapping of option: value")
    algorithms = {str(k): dict(v or {}) for k, v in algorithms.items()}
    for algo, options in algorithms.items():
        _check_bench_keys(path, algo, options)
    algorithms = _expand_sweeps(path, algorithms)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise PrefoptError(f"{path}: 'seeds' must be a non-empty list of integers")
    tasks = raw.get("tasks", ["qa"])
    if not isinstance(tasks, list) or not tasks:
        raise PrefoptError(f"{path}: 'tasks' must be a non-empty list")
    for i, task in enumerate(tasks):
        if isinstance(task, dict):
            check_name(task.get("name"), f"{path}: tasks[{i}].name")
        elif isinstance(task, str):
            check_name(task, f"{path}: tasks[{i}]")
        else:
            raise PrefoptError(f"{path}: tasks[{i}]: expected a task name or a mapping of name, prompts and gold, "
                               f"got {type(task).__name__}")
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
        hacking=_typed(HackingSettings, raw["hacking"], path, "hacking") if "hacking" in raw else None,
        tune=_typed(TuneSettings, raw["tune"], path, "tune") if "tune" in raw else None,
        path=str(path),
    )
    _check_references(suite)
    _check_settings(suite)
    return suite


def _check_bench_keys(path: Path, name: str, options: dict) -> None:
    where = f"{path}: algorithms.{name}"
    for key in ("arm", "strength"):
        if key in options:
            raise PrefoptError(f"{where}.{key}: set by a sweep, not in a suite file (use sweep: {{option: [values]}})")
    if "sweep" in options:
        sweep = options["sweep"]
        if not isinstance(sweep, dict) or len(sweep) != 1:
            raise PrefoptError(f"{where}.sweep: expected one option and its values, such as {{beta: [0.03, 0.1, 0.3]}}")
        (option, values), = sweep.items()
        if option in BENCH_KEYS or option in options:
            raise PrefoptError(f"{where}.sweep: cannot sweep '{option}' (a bench key, or also set in the entry)")
        if not isinstance(values, list) or not values or len(set(map(str, values))) != len(values):
            raise PrefoptError(f"{where}.sweep.{option}: expected a non-empty list of distinct values, got {values!r}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PrefoptError(f"{where}.sweep.{option}: expected numbers, got {value!r}")
    if "algo" in options:
        check_name(options["algo"], f"{where}.algo")
    if options.get("pairs", "gold") not in PAIR_KINDS:
        raise PrefoptError(f"{where}.pairs: expected one of {', '.join(PAIR_KINDS)}, got {options['pairs']!r}")
    if "proxy" in options and (not isinstance(options["proxy"], str) or not options["proxy"].strip()):
        raise PrefoptError(f"{where}.proxy: expected a judge spec such as reward:{{cell:reward-proxy}}")


def _expand_sweeps(path: Path, algorithms: dict) -> dict:
    """Each swept entry becomes one entry per value (<name>_<option><value>), in suite order."""
    out: dict[str, dict] = {}
    for name, options in algorithms.items():
        if "sweep" not in options:
            out[name] = options
            continue
        (option, values), = options["sweep"].items()
        base = {k: v for k, v in options.items() if k != "sweep"}
        for value in sorted(values):
            expanded = check_name(f"{name}_{option}{value:g}", f"{path}: algorithms.{name}.sweep")
            if expanded in algorithms or expanded in out:
                raise PrefoptError(f"{path}: algorithms.{name}.sweep makes the entry '{expanded}', which exists")
            out[expanded] = {"algo": name, **base, option: value, "arm": name, "strength": [option, value]}
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_settings(suite: Suite) -> None:
    e = suite.eval
    if e.reference_samples < 1:
        raise PrefoptError(f"{suite.path}: eval.reference_samples: must be >= 1, got {e.reference_samples}")
    t = suite.tune
    if t is not None:
        lists = t.values if isinstance(t.values, dict) else {"": t.values}
        for arm, values in lists.items():
            where = f"tune.values.{arm}" if arm else "tune.values"
            if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
                raise PrefoptError(f"{suite.path}: {where}: expected a non-empty list of numbers, got {values!r}")
        if isinstance(t.values, dict):
            arms = {suite.arm(n) for n in suite.algorithms}
            unknown = sorted(set(t.values) - arms)
            if unknown:
                raise PrefoptError(f"{suite.path}: tune.values: '{unknown[0]}' is not an arm of this suite "
                                   f"(arms: {', '.join(sorted(arms))})")
        if t.dev_prompts < 1:
            raise PrefoptError(f"{suite.path}: tune.dev_prompts: must be >= 1, got {t.dev_prompts}")
        if t.option in BENCH_KEYS:
            raise PrefoptError(f"{suite.path}: tune.option: '{t.option}' is a bench key, not a run option")
    for name in ("calibration_pairs", "probes", "capability_limit", "best_of", "prompts"):
        if getattr(e, name) < 0:
            raise PrefoptError(f"{suite.path}: eval.{name}: must be >= 0, got {getattr(e, name)}")
    if e.contamination_ngram < 1:
        raise PrefoptError(f"{suite.path}: eval.contamination_ngram: must be >= 1, got {e.contamination_ngram}")
    if not 0.5 <= e.judge_threshold <= 1:
        raise PrefoptError(f"{suite.path}: eval.judge_threshold: must be within 0.5..1, got {e.judge_threshold}")
    proxied = [n for n in suite.algorithms if suite.pair_kind(n) == "proxy"]
    if proxied and suite.hacking is None:
        raise PrefoptError(f"{suite.path}: algorithms.{proxied[0]} trains on proxy pairs; add a 'hacking' section "
                           "(feature, weight)")  # fmt: skip
    if suite.hacking is not None:
        if suite.hacking.feature != "length":
            raise PrefoptError(f"{suite.path}: hacking.feature: expected 'length', got {suite.hacking.feature!r}")
        if not suite.hacking.weight >= 0 or suite.hacking.weight == float("inf"):
            raise PrefoptError(f"{suite.path}: hacking.weight: must be a finite number >= 0, got {suite.hacking.weight}")


def _typed(cls, values: Any, path: Path, section: str):
    """A settings section as its dataclass; unknown options and wrong types are one-line errors."""
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


# ---------------------------------------------------------------- {cell:ALGO} references


def _refs_in(text: str) -> list[str]:
    """Algorithm names of the {cell:ALGO} placeholders in text."""
    return re.findall(r"\{cell:([^}]*)\}", text)


def cell_refs(options: dict) -> list[str]:
    """The algorithms whose run folders these options refer to (they must run first)."""
    return [ref for value in options.values() for ref in _refs_in(str(value))]


def _check_references(suite: Suite) -> None:
    for algo, options in suite.algorithms.items():
        for ref in cell_refs(options):
            if ref not in suite.algorithms:
                raise PrefoptError(f"{suite.path}: algorithms.{algo} refers to '{{cell:{ref}}}', "
                                   "which is not in the suite")


def algorithm_order(suite: Suite) -> list[str]:
    """Suite order, except that an algorithm comes after the cells it refers to."""
    order: list[str] = []

    def visit(algo: str, trail: tuple) -> None:
        if algo in order:
            return
        if algo in trail:
            cycle = " -> ".join(trail + (algo,))
            raise PrefoptError(f"{suite.path}: algorithms refer to each other in a cycle: {cycle}")
        for ref in cell_refs(suite.algorithms[algo]):
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
        only = [e for a in only for e in (suite.arm_entries(a) if a not in suite.algorithms else [a]) or [a]]
        unknown = [a for a in only if a not in suite.algorithms]
        if unknown:
            raise PrefoptError(f"--algos: {', '.join(unknown)} not in the suite ({', '.join(suite.algorithms)})")
        needed = set(only)
        for algo in only:  # keep what the chosen ones refer to
            needed.update(cell_refs(suite.algorithms[algo]))
        order = [a for a in order if a in needed]
    return [Cell(t, a, s) for s in suite.seeds for t in suite.task_names for a in order]


def _substitute(value: Any, cell: Cell, work: Path) -> Any:
    if not isinstance(value, str):
        return value
    text = value.replace("{task}", cell.task)
    for ref in _refs_in(text):
        text = text.replace(f"{{cell:{ref}}}", str(Cell(cell.task, ref, cell.seed).folder(work)))
    return text


def cell_options(suite: Suite, cell: Cell, work: Path, data: str, tuned: dict | None = None) -> dict:
    """The `prefopt run` options of one cell: bench defaults < suite train options < tuned options < algorithm
    options < cell identity. ``tuned``: the options the arm's tuning chose (tune.option: value).

    The bench's pair and prompt files hold plain-string questions, but its policies are sampled and judged in
    conversation, so its cells train with the model's chat template (``chat_template: model``) by default.
    """
    entry = {k: v for k, v in suite.algorithms[cell.algo].items() if k not in BENCH_KEYS}
    values = {"chat_template": "model", **suite.train, **(tuned or {}), **entry}
    values = {k: _substitute(v, cell, work) for k, v in values.items()}
    values.update(model=suite.model, data=data, seed=cell.seed, output_dir=str(cell.folder(work)), progress=False)
    return values


def cell_proxy(suite: Suite, cell: Cell, work: Path) -> str | None:
    """The entry's ``proxy:`` judge spec with its placeholders filled in (None when it names none)."""
    spec = suite.algorithms[cell.algo].get("proxy")
    return _substitute(spec, cell, work) if spec else None


def config_hash(suite: Suite, cell: Cell) -> str:
    """What a cell's numbers depend on, except its seed (paths excluded: results move)."""
    payload = {
        "model": suite.model,
        "task": suite.task_spec(cell.task),
        "train": suite.train,
        "algo": cell.algo,
        "options": suite.algorithms[cell.algo],
        "pairs": asdict(suite.pairs),
        "eval": asdict(suite.eval),
        "hacking": asdict(suite.hacking) if suite.hacking is not None else None,
    }
    if suite.tune is not None:  # only then: the hashes of suites without one stay as they were
        payload["tune"] = asdict(suite.tune)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def command_line(options: dict, algo: str) -> str:
    """The equivalent `prefopt run` command of a cell."""
    parts = ["prefopt", "run", "--algo", algo]
    parts += [f"{k}={v}" for k, v in options.items() if k not in ("progress",)]
    return " ".join(parts)
