"""Suite files and their cells: what a benchmark runs, read and checked before anything trains.

A suite is a versioned YAML file (see ``benchmarks/quick.yaml``)::

    name: quick            # results go to results/<name>/ (a plain name, as are task and algorithm names)
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

A cell is one (task, algorithm, seed): one training run into ``<work>/<task>/<algo>/seed<seed>``.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prefopt.bench.paths import check_name
from prefopt.errors import PrefoptError
from prefopt.training.config import coerce

TOP_LEVEL_KEYS = {"name", "version", "description", "model", "seeds", "tasks", "algorithms", "train", "pairs", "eval"}


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
    algorithms = {str(k): dict(v or {}) for k, v in algorithms.items()}
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
        path=str(path),
    )
    _check_references(suite)
    return suite


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


def cell_options(suite: Suite, cell: Cell, work: Path, data: str) -> dict:
    """The `prefopt run` options of one cell: suite train options < algorithm options < cell identity."""
    values = {**suite.train, **suite.algorithms[cell.algo]}
    values = {k: _substitute(v, cell, work) for k, v in values.items()}
    values.update(model=suite.model, data=data, seed=cell.seed, output_dir=str(cell.folder(work)), progress=False)
    return values


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
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def command_line(options: dict, algo: str) -> str:
    """The equivalent `prefopt run` command of a cell."""
    parts = ["prefopt", "run", "--algo", algo]
    parts += [f"{k}={v}" for k, v in options.items() if k not in ("progress",)]
    return " ".join(parts)
