"""One run's lifecycle, the same for every algorithm, offline or online.

A run folder goes through: checks (nothing written) -> created -> config.yaml
-> metrics.jsonl rows and checkpoints while training -> outputs -> summary.json,
written last and atomically: a folder is a finished run exactly when that file
exists. :class:`RunFolder` owns every file of the folder; :func:`train_loop` is
the one loop (evaluate, train step by step with periodic evaluation and
checkpoints, evaluate again) that both the offline and the online trainer drive
through a :class:`Stepper`; :func:`make_summary` is the one summary schema.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch
import yaml
from tqdm.auto import tqdm

from prefopt.core.models import save_trained
from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_json, atomic_write_text, finite_json, json_line, provenance
from prefopt.training.checkpoint import (
    CHECKPOINTS,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from prefopt.training.config import RunConfig, as_flat_dict

SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOCK = ".lock"

# Every summary.json has exactly these keys, offline or online.
SUMMARY_KEYS = (
    "algo",
    "output_dir",
    "steps",
    "train_examples",  # pairs, labelled completions, demonstrations or prompts the algorithm trains on
    "eval_examples",  # the held-out ones of the same kind
    "eval_pairs",  # held-out preference pairs scored for the preference accuracy (0 for prompt-only data)
    "global_batch",
    "num_processes",
    "truncation",
    "eval_before",
    "eval_after",
    "train_last10",  # mean of each training metric over the last 10 steps
    "seconds_total",
    "seconds_per_step_median",
    "peak_rss_mb",
    "peak_rss_mb_training",  # before the final evaluation and export
    "device",
    "precision",
    "reference",
    "outputs",
    "provenance",
)


def default_output_dir(algo_name: str) -> Path:
    """runs/<algo>-<date>-<time>-<pid>: unique even for runs started in the same second."""
    return Path("runs") / f"{algo_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM where Linux has it (reset_peak_rss() resets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- optimizer


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr for update `step` (0-based): linear warm-up, then decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 1.0


def make_optimizer(params: list, run: RunConfig):
    """AdamW at the peak lr and its warm-up + decay schedule, as every algorithm trains."""
    optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=run.weight_decay)
    warmup = round(run.warmup_ratio * run.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, run.steps, warmup, run.schedule))
    return optimizer, scheduler


# ---------------------------------------------------------------- the folder


class RunFolder:
    """Every file of one run folder. `writer` is False on every process but the first of a launch:
    those check and read, never write.

    A folder is claimed by one process at a time: the writer holds an exclusive lock on
    ``.lock`` (which names its pid) from create() until the process ends, so two runs
    given the same folder cannot both write it.
    """

    def __init__(self, path: Path, resume: bool, writer: bool = True):
        self.path, self.resume, self.writer = Path(path), resume, writer
        self.created = False
        self.metrics = self.path / METRICS
        self.fingerprint: dict | None = None  # what must not change on --resume (set by the trainer)
        self.trackers = None  # report_to's trackers (prefopt.training.tracking), on the writer only
        self._lock = None

    def check(self) -> None:
        """Refuse to overwrite a run, or to resume one that is not there. Writes nothing."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise PrefoptError(f"output folder '{out}' is a file; choose another output_dir")
        if self.resume:
            if not (out / CONFIG).is_file():
                raise PrefoptError(f"cannot resume: '{out}' holds no run (no {CONFIG})")
            if (out / SUMMARY).exists():
                raise PrefoptError(f"cannot resume: '{out}' is already a finished run")
            return
        if (out / SUMMARY).exists():
            raise PrefoptError(f"output folder '{out}' already holds a finished run; choose another output_dir")
        if out.exists() and any(p.name != LOCK for p in out.iterdir()):
            raise PrefoptError(f"output folder '{out}' is not empty; resume it with --resume {out} or choose another")
        parent = out
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise PrefoptError(f"output folder '{out}' cannot be created: '{parent}' is a file")

    def create(self) -> None:
        """Create (or, resuming, open) the folder, claim it with the lock and prove it is writable."""
        existed = self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._claim()
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise PrefoptError(f"output folder '{self.path}' is not writable ({exc.strerror or exc})") from None
        self.created = not existed
        self.check()  # again, now that no other run can change the folder
        self._remove_leftovers()

    def _claim(self) -> None:
        handle = open(self.path / LOCK, "a+")  # noqa: SIM115 - held open for the whole run: the lock lives with it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise PrefoptError(f"output folder '{self.path}' is in use by another prefopt run (pid {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle  # held until this process ends (or the run finishes)

    def _remove_leftovers(self) -> None:
        """Temp files and folders of writes a killed run never finished (names start with a dot)."""
        for folder in (self.path, self.path / CHECKPOINTS):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.name.startswith(".") and p.name != LOCK:
                        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    def discard_if_empty(self) -> None:
        """After a failure: remove a folder this run created when it holds nothing worth resuming (no checkpoint)
        and no finished run (a push to the Hub fails after the run is complete)."""
        if self.writer and self.created and latest_checkpoint(self.path) is None and not (self.path / SUMMARY).exists():
            shutil.rmtree(self.path, ignore_errors=True)
            self.created = False

    def write_config(self, algo_name: str, run: RunConfig, algo_config) -> None:
        """The resolved config (loadable with --config), written once, when the run starts."""
        if self.writer and not self.resume:
            text = yaml.safe_dump(as_flat_dict(algo_name, run, algo_config), sort_keys=False)
            atomic_write_text(self.path / CONFIG, text)

    def start_tracking(self, algo_name: str, run: RunConfig, algo_config) -> None:
        """report_to's trackers, given the run's options; every row logged from here on goes to them too."""
        from prefopt.training.tracking import Trackers, parse_report_to

        names = parse_report_to(run.report_to)
        if names and self.writer:
            self.trackers = Trackers(names, self.path, as_flat_dict(algo_name, run, algo_config))

    def restore(self, model, optimizer, scheduler) -> dict:
        """State of the latest readable checkpoint of a resumed run ({"step": 0} for a fresh start).

        The checkpoint's fingerprint must match this run's (algorithm, options, model,
        data and tokenisation), else the resume is refused naming what changed. Rows
        logged after that checkpoint are dropped from metrics.jsonl (they will be redone);
        a run stopped before its first checkpoint starts over.
        """
        found = checkpoints(self.path) if self.resume else []
        if not found:
            if self.resume and self.writer:
                self.metrics.unlink(missing_ok=True)
            return {"step": 0}
        saved, path, unreadable = None, None, []
        for candidate in reversed(found):  # the newest first; an unreadable one falls back to the one before
            try:
                saved, path = read_checkpoint(candidate), candidate
                break
            except PrefoptError as exc:
                unreadable.append(str(exc))
        if saved is None:
            raise PrefoptError(f"cannot resume '{self.path}': no checkpoint can be read ({unreadable[0]})")
        if unreadable:
            print(f"prefopt: {unreadable[0]}; resuming from {path.name} instead", file=sys.stderr)
        self._check_fingerprint(saved["state"].get("fingerprint"), path)
        state = load_checkpoint(path, model, optimizer, scheduler, saved)
        if self.writer:
            kept = [line for line, row in _metric_rows(self.metrics) if row["step"] <= state["step"]]
            atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))
        return state

    def _check_fingerprint(self, saved: dict | None, path: Path) -> None:
        if self.fingerprint is None or saved is None:
            return
        for field_name in self.fingerprint:
            if field_name == "options":
                before, now = saved.get("options", {}), self.fingerprint["options"]
                defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
                for key in sorted(set(before) | set(now)):
                    if key not in before and key in defaults and now.get(key) == defaults[key]:
                        continue  # an option added since the checkpoint, at its default: nothing changed
                    if before.get(key) != now.get(key):
                        raise PrefoptError(
                            f"cannot resume '{self.path}': option '{key}' was {before.get(key)!r} at {path.name} "
                            f"and is {now.get(key)!r} now; a resumed run must continue the same run")
            elif saved.get(field_name) != self.fingerprint[field_name]:
                raise PrefoptError(f"cannot resume '{self.path}': the {FINGERPRINT_FIELDS[field_name]} changed since "
                                   f"{path.name}; a resumed run must continue the same run")

    def log(self, row: dict) -> None:
        if self.writer:
            with self.metrics.open("a") as f:
                f.write(json_line(row) + "\n")
            if self.trackers is not None:
                self.trackers.log(row)

    def checkpoint(self, step: int, model, optimizer, scheduler, state: dict, gathered: bool = False) -> None:
        """Save a checkpoint. `gathered`: the weights are sharded, so every process takes part (process 0 writes)."""
        if self.writer or gathered:
            state = {**state, "fingerprint": self.fingerprint}
            save_checkpoint(self.path, step, model, optimizer, scheduler, state, write=self.writer)

    def save_outputs(self, model, tokenizer, merge: bool, merged_dtype: torch.dtype | None = None) -> dict[str, str]:
        """The trained adapter/model (+ a scalar head beside it); checkpoints are no longer needed."""
        head = hasattr(model, "head")
        try:
            saved = save_trained(model.lm if head else model, tokenizer, self.path, merge=merge,
                                 merged_dtype=merged_dtype)  # fmt: skip
            if head:
                for folder in saved.values():
                    model.save_head(Path(folder))
        except OSError as exc:
            raise PrefoptError(f"cannot write the trained model in '{self.path}' ({exc.strerror or exc}); "
                               f"last checkpoint: {latest_checkpoint(self.path) or 'none'}") from None
        remove_checkpoints(self.path)
        return saved

    def finish(self, summary: dict) -> None:
        """Write summary.json, the mark of a finished run, and release the folder."""
        missing, extra = set(SUMMARY_KEYS) - set(summary), set(summary) - set(SUMMARY_KEYS)
        if missing or extra:
            raise ValueError(f"summary keys differ from the schema: missing {sorted(missing)}, extra {sorted(extra)}")
        atomic_write_json(self.path / SUMMARY, summary)
        if self.trackers is not None:
            self.trackers.finish()
            self.trackers = None
        self._remove_leftovers()
        if self._lock is not None:
            (self.path / LOCK).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


FINGERPRINT_FIELDS = {"algo": "algorithm", "options": "options", "model": "model", "data": "data (or its tokenisation)"}


def run_fingerprint(algo_name: str, run: RunConfig, algo_config, model: str, examples: list) -> dict:
    """What must be the same for a checkpoint to be resumed: the algorithm, every option that changes
    the result, the model's weights and the token ids of every example."""
    options = as_flat_dict(algo_name, run, algo_config)
    for display_only in ("algo", "output_dir", "progress"):
        options.pop(display_only, None)
    digest = hashlib.sha256(repr(examples).encode()).hexdigest()[:16]
    return {"algo": algo_name, "options": finite_json(options), "model": model, "data": digest}


def _metric_rows(path: Path) -> list[tuple[str, dict]]:
    """(line, parsed row) of each row of metrics.jsonl; a torn last line (a write cut short by a crash) is
    dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append((line, json.loads(line)))
        except ValueError:
            continue
    return rows


# ---------------------------------------------------------------- the loop


class Stepper(Protocol):
    """What the loop drives: the offline trainer or the online one."""

    def update(self, step: int) -> dict[str, float]:
        """The `step`-th optimizer update (0-based); its metrics, including lr and tokens."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics, keys prefixed eval_ (dropout off; leaves the policy unchanged)."""

    def checkpoint_state(self) -> dict:
        """JSON-able state beyond weights, optimizer and RNG that a resumed run needs."""


@dataclass
class LoopResult:
    steps: int
    eval_before: dict
    eval_after: dict
    recent: list[dict] = field(default_factory=list)  # the last 10 rows of training metrics
    step_seconds: list[float] = field(default_factory=list)
    peak_rss_mb_training: float = 0.0


def _progress_postfix(row: dict) -> dict[str, str]:
    shown = {"loss": "loss", "margin": "margin", "accuracy": "acc", "reward": "reward", "kl": "kl"}
    return {label: f"{row[key]:.3f}" for key, label in shown.items() if key in row}


def train_loop(folder: RunFolder, name: str, run: RunConfig, stepper: Stepper, state: dict, model, optimizer,
               scheduler, show_progress: bool, gathered_checkpoints: bool = False) -> LoopResult:
    """Evaluate, train from the restored step to run.steps, evaluate again.

    Every run.eval_every steps the held-out metrics join that step's row (not after
    the last step: the final evaluation follows); every run.save_every steps a
    checkpoint is saved with the evaluation before training, so a resumed run
    logs exactly the rows an uninterrupted one would.
    """
    step = state["step"]
    eval_before = state.get("eval_before") or stepper.evaluate()
    if step == 0 and eval_before:
        folder.log({"step": 0, **eval_before})
    result = LoopResult(step, eval_before, {})
    first_grad_norm = state.get("first_grad_norm")
    bar = tqdm(total=run.steps, initial=step, desc=name, disable=not show_progress, file=sys.stderr)
    while step < run.steps:
        t0 = time.perf_counter()
        row = stepper.update(step)
        step += 1
        _check_finite(row, step, folder)
        if run.divergence_factor:
            first_grad_norm = _check_divergence(row, step, folder, run.divergence_factor, first_grad_norm)
        result.step_seconds.append(time.perf_counter() - t0)
        row = {"step": step, **row, "seconds": result.step_seconds[-1]}
        result.recent = (result.recent + [dict(row)])[-10:]  # a copy, taken before eval_* join the row
        if run.eval_every and step % run.eval_every == 0 and step < run.steps:
            row.update(stepper.evaluate())
        folder.log(row)
        bar.set_postfix(_progress_postfix(row))
        bar.update(1)
        if run.save_every and step % run.save_every == 0 and step < run.steps:
            folder.checkpoint(step, model, optimizer, scheduler,
                              {"eval_before": eval_before, "first_grad_norm": first_grad_norm,
                               **stepper.checkpoint_state()}, gathered_checkpoints)
    bar.close()
    result.steps = step
    result.peak_rss_mb_training = peak_rss_mb()  # before the final evaluation and the export
    result.eval_after = stepper.evaluate()
    return result


def _check_finite(row: dict, step: int, folder: RunFolder) -> None:
    """Stop a run whose loss or gradient went NaN or infinite: every later step would train on garbage."""
    for key in ("loss", "grad_norm"):
        value = row.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            last = latest_checkpoint(folder.path)
            raise PrefoptError(f"step {step}: the {key.replace('_', ' ')} is {value} (training diverged; lower lr or "
                               f"check the data); last good checkpoint: {last or 'none, nothing was saved'}")


def _check_divergence(row: dict, step: int, folder: RunFolder, factor: float, first: float | None) -> float | None:
    """The optional divergence check (run.divergence_factor): a gradient norm that explodes past `factor` times
    the first step's, or that vanishes while the loss does not (a saturated, dead policy), stops the run.
    Returns the first step's gradient norm (kept in checkpoints, so a resumed run checks the same way)."""
    norm, loss = row.get("grad_norm"), row.get("loss")
    if not isinstance(norm, float):
        return first
    if first is None:
        return norm
    if norm > factor * first or (norm == 0.0 and isinstance(loss, float) and loss > 0):
        last = latest_checkpoint(folder.path)
        raise PrefoptError(f"step {step}: the gradient norm is {norm:.3g} (first step: {first:.3g}); the run diverged "
                           f"(divergence_factor={factor:g}; lower lr); last good checkpoint: {last or 'none'}")
    return first


def merged_dtype(run: RunConfig, precision: str) -> torch.dtype:
    """save_dtype as a torch dtype; auto: the training precision (bf16 when it trained in bf16, else float32)."""
    name = run.save_dtype if run.save_dtype != "auto" else ("bf16" if precision == "bf16" else "fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def make_summary(algo_name: str, folder: RunFolder, loop: LoopResult, started: float, **fields) -> dict:
    """The summary.json of a finished run (the fields of SUMMARY_KEYS the loop does not know come in `fields`)."""
    recent = loop.recent
    numeric = [k for k in recent[0] if k != "step" and isinstance(recent[0][k], (int, float))] if recent else []
    return {
        "algo": algo_name,
        "output_dir": str(folder.path),
        "steps": loop.steps,
        "eval_before": loop.eval_before,
        "eval_after": loop.eval_after,
        "train_last10": {k: statistics.fmean(r[k] for r in recent) for k in numeric},
        "seconds_total": time.perf_counter() - started,
        "seconds_per_step_median": statistics.median(loop.step_seconds) if loop.step_seconds else None,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_training": loop.peak_rss_mb_training,
        "provenance": provenance(),
        **fields,
    }
