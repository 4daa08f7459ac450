"""The offline training loop. It reads an algorithm's capabilities
(``inputs``, ``head``, ``needs_reference``, ``online``) and never its name.

Order of work in :func:`train`: every cheap check first (algorithm, output
folder, data, tokenisation), so bad input fails before anything is written;
then the model, the reference, the loop. A run folder is finished when its
``summary.json`` exists; that file is written last, atomically.

Launched in several processes (``prefopt.distributed``), each optimizer step's
global batch is split across them and their gradients summed, so the run
matches a one-process run; only process 0 writes.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from prefopt.algorithm import Algorithm, PairLogps, PairRewards, preference_accuracy
from prefopt.checkpoint import latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from prefopt.config import RunConfig, as_flat_dict
from prefopt.data import PreferenceRecord, as_kind, bucketed_batches, collate_pairs, load_records, tokenize_pairs
from prefopt.distributed import Context, context
from prefopt.errors import PrefoptError
from prefopt.heads import attach_scalar_head
from prefopt.inputs import PairInputs, RewardPairInputs, inputs_for
from prefopt.io import atomic_write_json, atomic_write_text, provenance
from prefopt.models import (
    LoraSettings,
    autocast,
    load_model,
    load_tokenizer,
    model_fingerprint,
    pick_device,
    resolve_precision,
    save_trained,
)
from prefopt.reference import build_reference, resolve_reference_mode, starting_model

SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVAL_SPLIT_SEED = 12345  # fixed, so every seed of a sweep is judged on the same held-out pairs


# ---------------------------------------------------------------- output folder


def default_output_dir(algo_name: str) -> Path:
    return Path("runs") / f"{algo_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_output_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one that is not there. Writes nothing."""
    if resume:
        if not (out / CONFIG).is_file():
            raise PrefoptError(f"cannot resume: '{out}' holds no run (no {CONFIG})")
        if (out / SUMMARY).exists():
            raise PrefoptError(f"cannot resume: '{out}' is already a finished run")
        return
    if (out / SUMMARY).exists():
        raise PrefoptError(f"output folder '{out}' already holds a finished run; choose another output_dir")
    if out.exists() and any(out.iterdir()):
        raise PrefoptError(f"output folder '{out}' is not empty; resume it with --resume {out} or choose another")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PrefoptError(f"output folder '{out}' cannot be created: '{parent}' is a file")


def create_output_dir(out: Path) -> bool:
    """Create the folder and prove it is writable. Returns True if it is new."""
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PrefoptError(f"output folder '{out}' is not writable ({exc.strerror or exc})") from None
    return not existed


# ---------------------------------------------------------------- data order


def split_records(records: list, eval_size: int, source: str) -> tuple[list, list]:
    """A fixed random held-out split of the source rows (independent of the run's seed).

    The split is made on the rows as the file holds them, before pairs are
    turned into unpaired examples or demonstrations, so every algorithm is
    judged on the same held-out rows.
    """
    n = len(records)
    if n - eval_size < 1:
        raise PrefoptError(f"{source}: only {n} rows, not enough for eval_size={eval_size} held-out rows plus training")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SPLIT_SEED)).tolist()
    held = set(perm[:eval_size])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


@dataclass
class Prepared:
    """Tokenised data for one run: the algorithm's examples and the held-out pairs."""

    examples: list  # the algorithm's kind; train first, then held-out
    train_ids: list[int]
    eval_ids: list[int]
    eval_pairs: list  # TokenizedPair of the held-out rows when the data is paired (else empty)
    truncation: object


def prepare_data(run: RunConfig, inputs, tokenizer) -> Prepared:
    """Load, split, convert to the algorithm's input kind and tokenise; all checks, no writes."""
    records = load_records(run.data, "native")
    train_records, eval_records = split_records(records, run.eval_size, run.data)
    train_items = as_kind(train_records, inputs.data_kind, run.data)
    eval_items = as_kind(eval_records, inputs.data_kind, run.data)
    if not train_items:
        raise PrefoptError(f"{run.data}: no training examples of the kind this algorithm needs ({inputs.data_kind})")
    examples, truncation = inputs.tokenize(
        train_items + eval_items, tokenizer, run.max_length, run.max_prompt_length, run.data
    )
    eval_pairs = []
    if eval_records and isinstance(eval_records[0], PreferenceRecord):
        eval_pairs, _ = tokenize_pairs(eval_records, tokenizer, run.max_length, run.max_prompt_length, run.data)
    n_train = len(train_items)
    return Prepared(examples, list(range(n_train)), list(range(n_train, len(examples))), eval_pairs, truncation)


def batch_stream(train_ids: list[int], lengths: list[int], global_batch: int, seed: int) -> Iterator[list[int]]:
    """Endless global batches of example ids, epoch after epoch.

    Each epoch's order is a pure function of (seed, epoch): length-bucketed,
    then shuffled. Incomplete batches are dropped (unless there is no complete
    one) so every optimizer step sees the same number of pairs.
    """
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        batches = bucketed_batches([lengths[i] for i in train_ids], global_batch, gen)
        full = [b for b in batches if len(b) == global_batch] or batches
        for batch in full:
            yield [train_ids[i] for i in batch]
        epoch += 1


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


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Holds what one run needs: model, data, reference, optimizer; one step or one evaluation at a time."""

    def __init__(self, algorithm: Algorithm, run: RunConfig, out: Path, model, tokenizer, data: Prepared,
                 reference, device, precision, dist: Context | None = None):
        self.algorithm, self.run, self.out = algorithm, run, out
        self.dist = dist or Context()
        self.model, self.tokenizer, self.examples = model, tokenizer, data.examples
        self.reference, self.device, self.precision = reference, device, precision
        self.inputs = inputs_for(algorithm)
        self.collate = partial(self.inputs.collate, pad_id=tokenizer.pad_token_id)
        # Held-out preference accuracy, the same measure for every algorithm:
        # scalar heads compare rewards; LM heads compare the log-ratio to the
        # starting model (scored now, before any update).
        # Taken before any forward: FSDP leaves the root unit's parameters swapped for gathered copies after a
        # no-grad forward, and the optimizer must hold the sharded ones.
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.eval_pairs = data.eval_pairs
        self.pair_scorer = RewardPairInputs() if algorithm.head == "scalar" else PairInputs()
        self.start_scores = None
        if self.eval_pairs and algorithm.head == "lm":
            with starting_model(model) as start:
                self.start_scores = self._score_pairs(start)
        self.optimizer = torch.optim.AdamW(self.params, lr=run.lr, weight_decay=run.weight_decay)
        warmup = round(run.warmup_ratio * run.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, run.steps, warmup, run.schedule)
        )

    def _batch(self, ids: list[int]) -> dict:
        batch = self.collate([self.examples[i] for i in ids])
        return {k: v.to(self.device) for k, v in batch.items()}

    def compute_loss(self, batch: dict):
        with autocast(self.precision, self.device):
            policy = self.inputs.policy(self.model, batch)
        reference = self.inputs.reference(self.reference, batch) if self.reference is not None else None
        return self.algorithm.loss(policy, reference, batch)

    @torch.no_grad()
    def _score_pairs(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) scores of the held-out pairs, each (P,): log-prob sums or rewards.

        With several processes each scores every W-th batch; all get every score, in order.
        """
        scores = {}
        was_training = model.training
        model.eval()
        for number, start in enumerate(range(0, len(self.eval_pairs), self.run.batch_size)):
            if not self.dist.mine(number):
                continue
            batch = collate_pairs(self.eval_pairs[start : start + self.run.batch_size], self.tokenizer.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with autocast(self.precision, self.device):
                scored = self.pair_scorer.policy(model, batch)
            if isinstance(scored, PairLogps):
                scored = PairRewards(scored.chosen.sum, scored.rejected.sum)
            scores[number] = (scored.chosen.float().cpu(), scored.rejected.float().cpu())
        model.train(was_training)
        chosen, rejected = zip(*self.dist.collect(scores))
        return torch.cat(chosen), torch.cat(rejected)

    def preference(self) -> dict[str, float]:
        """Held-out preference accuracy and mean margin (ties count half)."""
        if not self.eval_pairs:
            return {}
        chosen, rejected = self._score_pairs(self.model)  # (P,), (P,)
        if self.start_scores is not None:  # log-ratio to the starting model
            chosen, rejected = chosen - self.start_scores[0], rejected - self.start_scores[1]
        margin = chosen - rejected  # (P,)
        return {"eval_pref_accuracy": float(preference_accuracy(margin).mean()), "eval_pref_margin": float(margin.mean())}

    def train_step(self, ids: list[int]) -> dict[str, float]:
        """One optimizer update over a global batch, split into micro-batches.

        Each micro-batch's summed loss is divided by the global batch size, so
        accumulation gives the same gradient as one big batch. With several
        processes each runs its contiguous share of `ids` and the gradients and
        metric sums are added across processes before the update.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        tokens = 0
        share = self.dist.shard(ids)
        for start in range(0, len(share), self.run.batch_size):
            batch = self._batch(share[start : start + self.run.batch_size])
            out = self.compute_loss(batch)
            (out.losses.sum() * self.dist.loss_scale / len(ids)).backward()
            sums["loss"] += float(out.losses.detach().sum())
            for key, value in out.metrics.items():
                sums[key] += float(value.detach().float().sum())
            tokens += int(batch["attention_mask"].sum())
        if self.dist.distributed:
            if not self.dist.sharded:  # FSDP has summed (reduce-scattered) them in the backward
                self.dist.sum_gradients(self.params)
            sums, tokens = self.dist.sum_metrics(sums, tokens)
        max_norm = self.run.max_grad_norm if self.run.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))  # sharded too (DTensor norms)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {**{k: v / len(ids) for k, v in sums.items()}, "grad_norm": grad_norm, "lr": lr, "tokens": tokens}

    @torch.no_grad()
    def evaluate(self, ids: list[int]) -> dict[str, float]:
        """Mean loss and metrics on held-out examples, and held-out preference accuracy (dropout off)."""
        if not ids:
            return self.preference()
        self.model.eval()
        parts = {}  # batch number -> its sums (each process does every W-th batch)
        for number, start in enumerate(range(0, len(ids), self.run.batch_size)):
            if self.dist.mine(number):
                out = self.compute_loss(self._batch(ids[start : start + self.run.batch_size]))
                part = {"loss": float(out.losses.sum())}
                for key, value in out.metrics.items():
                    part[key] = float(value.float().sum())
                parts[number] = part
        sums: dict[str, float] = defaultdict(float)
        for part in self.dist.collect(parts):  # added in batch order, as one process would
            for key, value in part.items():
                sums[key] += value
        self.model.train()
        return {**{f"eval_{k}": v / len(ids) for k, v in sums.items()}, **self.preference()}


def _append_metrics(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget rows logged after the checkpoint (they will be redone)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(r + "\n" for r in rows))


def _peak_rss_mb() -> float:
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


def load_policy(run: RunConfig, algorithm: Algorithm, device, precision):
    """The model to train: LoRA/QLoRA/full as configured, with a scalar head if the algorithm declares one.

    With ``run.gradient_checkpointing`` every decoder layer of the HF model
    (under the peft wrapper, and under the scalar head, which runs the same
    layers) keeps only its input in the forward and recomputes the rest in the
    backward: non-reentrant ``torch.utils.checkpoint``, so the gradients are the
    ones without it (dropout masks are replayed from the saved RNG state). It
    acts in train mode only; evaluation and reference forwards run as before.
    """
    lora = LoraSettings(run.lora_r, run.lora_alpha, run.lora_dropout, run.lora_target_modules)
    torch.manual_seed(run.seed)  # LoRA and head initialisation
    model = load_model(run.model, adapter=run.adapter, lora=lora, device=device, precision=precision)
    if run.gradient_checkpointing:
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        kwargs = {"use_reentrant": False}
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name; the old one warns
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # A frozen base gives the first checkpointed layer an input that needs no grad; the reentrant variant
        # would then drop the LoRA gradients of that segment. Non-reentrant does not, but an input that requires
        # grad is what every variant expects (transformers 5 already adds this hook; older versions do not).
        hooked = getattr(hf, "_require_grads_hooks", None) or getattr(hf, "_require_grads_hook", None)
        if hf is not model and not hooked:
            hf.enable_input_require_grads()
        hf.config.use_cache = False  # no KV cache in training forwards (they also pass use_cache=False)
    return attach_scalar_head(model) if algorithm.head == "scalar" else model


def restore(out: Path, resume: bool, model, optimizer, scheduler, write: bool = True) -> dict:
    """State of the latest checkpoint of a resumed run ({"step": 0} for a fresh start).

    Rows logged after that checkpoint are dropped from metrics.jsonl (they will
    be redone; only when `write`, i.e. on process 0); a run stopped before its
    first checkpoint starts over.
    """
    metrics_path = out / METRICS
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is None:
        if resume and write:
            metrics_path.unlink(missing_ok=True)
        return {"step": 0}
    state = load_checkpoint(checkpoint, model, optimizer, scheduler)
    if write:
        _truncate_metrics(metrics_path, state["step"])
    return state


def save_outputs(out: Path, model, tokenizer, merge: bool) -> dict[str, str]:
    """The trained adapter/model (+ a scalar head beside it); checkpoints are no longer needed."""
    head = hasattr(model, "head")
    saved = save_trained(model.lm if head else model, tokenizer, out, merge=merge)
    if head:
        for folder in saved.values():
            model.save_head(Path(folder))
    remove_checkpoints(out)
    return saved


def _progress_postfix(row: dict) -> dict[str, str]:
    shown = {"loss": "loss", "margin": "margin", "accuracy": "acc"}
    return {label: f"{row[key]:.3f}" for key, label in shown.items() if key in row}


def train(algo_name: str, algorithm: Algorithm, run: RunConfig, resume_dir: Path | None = None) -> dict:
    """Train `algorithm` as configured by `run`; returns the run summary (process 0's, on every process)."""
    dist = context()
    if algorithm.online:
        with dist.agree():
            if dist.distributed:
                raise PrefoptError(f"{algo_name} is an online method and runs in one process; "
                                   f"launch it without accelerate/--num-processes (got {dist.world} processes)")
        from prefopt.online import train_online

        return train_online(algo_name, algorithm, run, resume_dir)
    # process 0's folder name: the default one holds the time, which may differ by a second between processes
    out = dist.broadcast(Path(resume_dir) if resume_dir else Path(run.output_dir or default_output_dir(algo_name)))

    # --- everything that can reject the input, before anything is written (every process checks)
    tokenizer = None
    with dist.agree():
        inputs = inputs_for(algorithm, algo_name)
        check_output_dir(out, resume=resume_dir is not None)
        random.seed(run.seed)
        torch.manual_seed(run.seed)
        if dist.is_main:  # first alone: a .gguf model is converted once, by process 0
            tokenizer = load_tokenizer(run.model)
    with dist.agree():
        if tokenizer is None:
            tokenizer = load_tokenizer(run.model)
        data = prepare_data(run, inputs, tokenizer)
        global_batch = run.batch_size * run.grad_accum
        if dist.sharded:
            _check_sharded(global_batch, dist.world)
        device = dist.device if dist.distributed else pick_device()
        precision = resolve_precision(run.precision, device)

    created = False
    with dist.agree():  # only process 0 creates the folder; the others wait here until it exists
        if dist.is_main:
            created = create_output_dir(out)
    try:
        return _train_in(out, algo_name, algorithm, run, tokenizer, data, global_batch, device, precision,
                         resume=resume_dir is not None, dist=dist)
    except PrefoptError:
        if dist.is_main and created and latest_checkpoint(out) is None:
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping
        raise


def _check_sharded(global_batch: int, world: int) -> None:
    """What FSDP needs: the same number of forwards on every process (each one is a collective)."""
    if global_batch % world:
        raise PrefoptError(f"FSDP: batch_size x grad_accum = {global_batch} must be divisible by the {world} "
                           "processes (every process runs the same number of forwards)")


def _build_reference(run, algorithm, model, tokenizer, data: Prepared, device, precision, dist: Context):
    """The reference for the run. A precomputed one is computed and cached by process 0 while the
    others wait, then loaded from that cache by them (never two writers of one cache file)."""
    mode = resolve_reference_mode(run.reference, run.adapter)
    build = partial(
        build_reference, mode, model, run.adapter,
        examples=data.examples,
        collate=partial(inputs_for(algorithm).collate, pad_id=tokenizer.pad_token_id),
        batch_size=run.batch_size,
        fingerprint=f"{model_fingerprint(run.model)}|{run.max_length}|{run.max_prompt_length}",
        autocast=partial(autocast, precision, device),
        progress=run.progress and dist.is_main,
    )
    if mode != "precomputed" or not dist.distributed:
        return build()
    reference = None
    with dist.agree():
        if dist.is_main:
            reference = build()
    with dist.agree():
        if not dist.is_main:
            reference = build()
    return reference


def _train_in(out, algo_name, algorithm, run, tokenizer, data: Prepared, global_batch, device, precision, resume,
              dist: Context | None = None) -> dict:
    dist = dist or Context()
    started = time.perf_counter()
    reference = None
    with dist.agree():
        if not resume and dist.is_main:
            atomic_write_text(out / CONFIG,
                              yaml.safe_dump(as_flat_dict(algo_name, run, algorithm.config), sort_keys=False))
        model = load_policy(run, algorithm, device, precision)
        if algorithm.needs_reference and (run.reference != "precomputed" or not dist.distributed):
            reference = _build_reference(run, algorithm, model, tokenizer, data, device, precision, dist)
    if algorithm.needs_reference and reference is None:  # precomputed, several processes: agrees by itself
        reference = _build_reference(run, algorithm, model, tokenizer, data, device, precision, dist)
    # every process starts from process 0's weights (they are equal already: same seed, same files)
    dist.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    dist.shard_model(model)  # FSDP only; after the reference, before the optimizer sees the parameters
    if getattr(reference, "mode", None) == "copy":
        dist.shard_model(reference.model)  # the frozen copy too: each process holds a shard of it

    trainer = Trainer(algorithm, run, out, model, tokenizer, data, reference, device, precision, dist=dist)
    metrics_path = out / METRICS
    state = restore(out, resume, model, trainer.optimizer, trainer.scheduler, write=dist.is_main)
    step = state["step"]

    eval_before = state.get("eval_before") or trainer.evaluate(data.eval_ids)
    if step == 0 and eval_before and dist.is_main:
        _append_metrics(metrics_path, {"step": 0, **eval_before})
    lengths = [trainer.inputs.length(e) for e in data.examples]
    stream = batch_stream(data.train_ids, lengths, global_batch, run.seed)
    for _ in range(step):  # skip the batches a checkpoint already trained on
        next(stream)

    step_seconds: list[float] = []
    recent: list[dict] = []
    bar = tqdm(total=run.steps, initial=step, desc=algo_name, disable=not (run.progress and dist.is_main),
               file=sys.stderr)
    while step < run.steps:
        t0 = time.perf_counter()
        row = trainer.train_step(next(stream))
        step += 1
        step_seconds.append(time.perf_counter() - t0)
        row = {"step": step, **row, "seconds": step_seconds[-1]}
        recent = (recent + [dict(row)])[-10:]  # training metrics only: a copy, taken before eval_* join the row
        if run.eval_every and step % run.eval_every == 0 and step < run.steps:
            row.update(trainer.evaluate(data.eval_ids))
        if dist.is_main:
            _append_metrics(metrics_path, row)
        bar.set_postfix(_progress_postfix(row))
        bar.update(1)
        if run.save_every and step % run.save_every == 0 and step < run.steps and (dist.is_main or dist.sharded):
            save_checkpoint(out, step, model, trainer.optimizer, trainer.scheduler, {"eval_before": eval_before},
                            write=dist.is_main)  # sharded: every process gathers, process 0 writes
    bar.close()
    training_peak_mb = _peak_rss_mb()  # before the final evaluation and the export (which may gather weights)

    eval_after = trainer.evaluate(data.eval_ids)
    if dist.sharded:  # process 0 saves an unsharded copy holding the gathered weights
        state = dist.full_state_dict(model)
        if dist.is_main:
            model = load_policy(run, algorithm, "cpu", precision)
            model.load_state_dict(state)
    if not dist.is_main:
        return dist.broadcast(None)  # process 0's summary, once it has written everything
    if eval_after:
        _append_metrics(metrics_path, {"step": step, **eval_after})
    saved = save_outputs(out, model, tokenizer, run.merge)
    final_train = {k: statistics.fmean(r[k] for r in recent) for k in recent[0] if k != "step"} if recent else {}
    summary = {
        "algo": algo_name,
        "output_dir": str(out),
        "steps": step,
        "train_examples": len(data.train_ids),
        "eval_examples": len(data.eval_ids),
        "eval_pairs": len(data.eval_pairs),
        "global_batch": global_batch,
        "num_processes": dist.world,
        "truncation": asdict(data.truncation),
        "eval_before": eval_before,
        "eval_after": eval_after,
        "train_last10": final_train,
        "seconds_total": time.perf_counter() - started,
        "seconds_per_step_median": statistics.median(step_seconds) if step_seconds else None,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_mb_training": training_peak_mb,
        "device": str(device),
        "precision": precision,
        "reference": reference.mode if reference is not None else None,
        "outputs": saved,
        "provenance": provenance(),
    }
    atomic_write_json(out / SUMMARY, summary)
    return dist.broadcast(summary)
