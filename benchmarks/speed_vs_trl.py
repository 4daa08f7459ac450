"""prefopt's DPO vs trl's DPOTrainer: seconds per step, tokens/s and peak memory, in one process.

Both train the same model (default: the bundled SmolLM2-135M-Instruct) with the
same LoRA (r=16, alpha=32, dropout 0, every linear layer but the output layer;
trl gets a copy of prefopt's peft config and prefopt's initial LoRA weights),
on the same token ids (prefopt tokenises `builtin:qa` once; trl is fed those ids,
not text), the same batches in the same order (prefopt's length-bucketed order,
`--batch-size` pairs, no accumulation), the same precision (bf16 autocast where
supported, else fp32), AdamW with the same constant lr, clipping at 1.0, beta
0.1, sigmoid loss. The reference: prefopt's default (LoRA disabled, or
`--reference precomputed`); trl's default for a peft model (adapter disabled).

How trl is driven: by its own `Trainer.train()` loop, so accelerate prepares
the model (autocast, device), and clipping, optimizer and scheduler steps are
trl's. Its dataset is the batches laid out in order with
`train_sampling_strategy="sequential"`, and `_prepare_dataset` is the identity
(the ids are already tokenised). A `TrainerCallback` marks step ends: a trl
step is timed from the end of the previous step's callback to `on_step_end`, so
it includes fetching and collating the batch, as prefopt's `train_step` does.
The same callback runs prefopt's phases between trl's phases, inside one
`train()` call: for each of `--reps` repetitions, one trainer does `--warmup`
untimed then `--steps` timed steps, then the other does the same on the same
batches; prefopt goes first in even repetitions, trl in odd ones. (The second
meets shapes the process has met: on a GPU cheaper, as cuDNN attention builds
a plan per new shape; `benchmarks/shape_split.py`. Use an even `--reps` there.)

Memory: the peak over each phase's timed steps (reset after its warm-up, so
the weights have been paged in and the optimizer state exists). On CPU the RSS
high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs after
`malloc_trim`, so memory the allocator kept from the other phase is not
counted); both models are resident throughout, so `peak - start` is what the
steps themselves added. On CUDA `torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`.

Before timing, a loss check in fp32: fresh trainers, prefopt's LoRA B matrices
given small random values (B = 0 makes both losses exactly ln 2) and copied to
trl, then `--check-steps` training steps of each on the same batches: the
per-step losses must agree to 1e-4.

    python benchmarks/speed_vs_trl.py                          # batch 4, max length 256, 3 x (2 + 8) steps each
    python benchmarks/speed_vs_trl.py --pad-to 256             # every sequence exactly 256 tokens
    python benchmarks/speed_vs_trl.py --gradient-checkpointing # memory vs time, both trainers
    python benchmarks/speed_vs_trl.py --lengths spread --batch-size 16 --max-length 512  # one point of speed_grid.py
    python benchmarks/speed_vs_trl.py --steps 2 --warmup 1 --reps 1 --pad-to 64 --out /tmp/speed_smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from prefopt.core.models import autocast, load_tokenizer, model_fingerprint, resolve_model
from prefopt.core.reference import build_reference, resolve_reference_mode
from prefopt.data import TokenizedPair, tokenize_pairs
from prefopt.io import atomic_write_json, atomic_write_text, cpu_model, provenance
from prefopt.training.config import RunConfig
from prefopt.training.inputs import inputs_for
from prefopt.training.offline import Prepared, Trainer, batch_stream
from prefopt.training.policy import load_policy

CHECK_TOL = 1e-4
H100_BF16_PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
TRL_DRIVER = (
    "trl's own Trainer.train() loop (accelerate-prepared model, trl's clipping/optimizer/scheduler); dataset = "
    "prefopt's token ids laid out in batch order, train_sampling_strategy='sequential', _prepare_dataset = identity; "
    "a TrainerCallback times each step from the end of the previous step's callback to on_step_end (batch fetch + "
    "collate included, as in prefopt's train_step) and runs prefopt's phases between trl's phases"
)


@dataclass
class Setup:
    """Everything both trainers share."""

    model: str = "smollm2-135m-instruct"
    rows: int = 256  # builtin:qa pairs
    batch_size: int = 4  # pairs per step, no accumulation
    max_length: int = 256
    max_prompt_length: int = 128
    pad_to: int = 0  # >0: every sequence exactly this many tokens
    lengths: str = "data"  # data: builtin:qa's own lengths | spread: drawn per pair (see spread_pair)
    precision: str = "fp32"  # resolved: bf16 | fp32
    reference: str = "auto"  # prefopt's reference mode
    lr: float = 2e-4
    beta: float = 0.1
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = False
    trl_liger: bool = False  # trl with use_liger_kernel=True (Liger's fused kernels; needs liger-kernel and a GPU)
    share_prompt: bool | str = "auto"  # prefopt's run option: each pair's prompt once (auto: on a CPU)
    pad_to_multiple_of: int = 1  # both trainers' option of that name: batch widths rounded up to a multiple
    device: str = "cpu"


# ---------------------------------------------------------------- data


def pad_pair(pair: TokenizedPair, n: int) -> TokenizedPair:
    """Prompt extended on the left to n//2 tokens, each response on the right to n - n//2, by cycling its own
    tokens: every sequence is exactly n tokens (the worst case for that length, as benchmarks/step_time.py)."""
    def cycle(ids: list[int], k: int, left: bool) -> list[int]:
        reps = (ids * (k // len(ids) + 1)) if ids else [0] * k
        return reps[-k:] if left else reps[:k]

    half = n // 2
    return TokenizedPair(pair.index, cycle(pair.prompt_ids, half, True),
                         cycle(pair.chosen_ids, n - half, False), cycle(pair.rejected_ids, n - half, False))


def spread_pair(pair: TokenizedPair, max_length: int, max_prompt_length: int, rng) -> TokenizedPair:
    """The pair's own tokens, cycled to lengths drawn like those of chat preference data.

    Prompt and each reply lengths are log-normal (medians 15% and 30% of max_length, sigma 0.7 and 0.6: a few
    replies many times longer than the typical one, as in UltraFeedback-style data), at least 4 tokens, and
    capped so that prompt + reply fits max_length: no truncation, so both trainers see exactly these tokens.
    """
    def draw(median: float, sigma: float, high: int) -> int:
        return max(4, min(high, round(rng.lognormvariate(0.0, sigma) * median)))

    def cycle(ids: list[int], k: int, left: bool) -> list[int]:
        reps = (ids * (k // len(ids) + 1)) if ids else [0] * k
        return reps[-k:] if left else reps[:k]

    p = draw(0.15 * max_length, 0.7, max_prompt_length)
    c, r = draw(0.3 * max_length, 0.6, max_length - p), draw(0.3 * max_length, 0.6, max_length - p)
    return TokenizedPair(pair.index, cycle(pair.prompt_ids, p, True), cycle(pair.chosen_ids, c, False),
                         cycle(pair.rejected_ids, r, False))


def load_pairs(setup: Setup):
    """(tokenizer, token-id pairs, truncation stats) of `setup.rows` builtin:qa pairs, as prefopt tokenises them."""
    from prefopt.tasks import load_builtin

    tokenizer = load_tokenizer(setup.model)
    records = load_builtin("qa", n=setup.rows, seed=setup.seed)
    pairs, stats = tokenize_pairs(records, tokenizer, setup.max_length, setup.max_prompt_length, "builtin:qa")
    if setup.pad_to:
        pairs = [pad_pair(p, setup.pad_to) for p in pairs]
    elif setup.lengths == "spread":
        rng = random.Random(setup.seed)
        pairs = [spread_pair(p, setup.max_length, setup.max_prompt_length, rng) for p in pairs]
    return tokenizer, pairs, stats


def batch_order(pairs: list[TokenizedPair], setup: Setup, n_batches: int) -> list[list[int]]:
    """The first n_batches batches of prefopt's data order (length-bucketed, shuffled by seed)."""
    length = inputs_for(_dpo(setup)).length
    stream = batch_stream(list(range(len(pairs))), [length(p) for p in pairs], setup.batch_size, setup.seed)
    return [next(stream) for _ in range(n_batches)]


def batch_tokens(pairs: list[TokenizedPair], ids: list[int]) -> int:
    """Non-pad tokens of the chosen and rejected rows of one batch."""
    return sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in ids)


# ---------------------------------------------------------------- the two trainers


def _dpo(setup: Setup):
    from prefopt.core import registry

    cls = registry.get("dpo")
    return cls(cls.Config(beta=setup.beta))


def build_prefopt(setup: Setup, tokenizer, pairs: list[TokenizedPair], used: list[int], workdir: Path) -> Trainer:
    """prefopt's Trainer, as `prefopt run --algo dpo` builds it (no held-out evaluation)."""
    run = RunConfig(
        model=setup.model, adapter="lora", lora_r=setup.lora_r, lora_alpha=setup.lora_alpha, lora_dropout=0.0,
        reference=setup.reference, precision=setup.precision, batch_size=setup.batch_size, grad_accum=1,
        lr=setup.lr, weight_decay=0.0, warmup_ratio=0.0, schedule="constant", max_grad_norm=1.0,
        max_length=setup.pad_to or setup.max_length, max_prompt_length=setup.max_prompt_length, seed=setup.seed,
        gradient_checkpointing=setup.gradient_checkpointing, eval_size=0, progress=False,
        share_prompt=setup.share_prompt, pad_to_multiple_of=setup.pad_to_multiple_of,
    )
    algorithm = _dpo(setup)
    inputs = inputs_for(algorithm)
    model = load_policy(run, algorithm, setup.device, setup.precision)
    mode = resolve_reference_mode(run.reference, run.adapter)
    reference = build_reference(
        mode, model, run.adapter,
        examples=[pairs[i] for i in sorted(set(used))],
        collate=partial(inputs.collate, pad_id=tokenizer.pad_token_id),
        batch_size=run.batch_size,
        fingerprint=f"{model_fingerprint(run.model)}|{run.max_length}|{run.max_prompt_length}|pad{setup.pad_to}",
        autocast=partial(autocast, setup.precision, setup.device),
        progress=False,
    )
    data = Prepared(examples=pairs, train_ids=list(range(len(pairs))), eval_ids=[], eval_pairs=[], truncation=None)
    return Trainer(algorithm=algorithm, run=run, model=model, tokenizer=tokenizer, data=data,
                   reference=reference, device=torch.device(setup.device), precision=setup.precision)


def _trl_trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer fed prefopt's token ids (prompt_ids/chosen_ids/rejected_ids); records each step's loss."""

        step_losses: list[float]

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.step_losses.append(float((loss[0] if return_outputs else loss).detach()))
            return loss

    return PretokenizedDPOTrainer


def build_trl(setup: Setup, tokenizer, pairs: list[TokenizedPair], batches: list[list[int]], prefopt_model,
              workdir: Path, callbacks=()):
    """trl's DPOTrainer on the same base model, with prefopt's LoRA config and initial LoRA weights."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, ProgressCallback
    from trl import DPOConfig

    rows = [{"prompt_ids": pairs[i].prompt_ids, "chosen_ids": pairs[i].chosen_ids,
             "rejected_ids": pairs[i].rejected_ids} for ids in batches for i in ids]
    checkpointing = {"use_reentrant": False}
    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=setup.batch_size,
        gradient_accumulation_steps=1,
        max_steps=len(batches),
        max_length=setup.pad_to or setup.max_length,
        pad_to_multiple_of=setup.pad_to_multiple_of if setup.pad_to_multiple_of > 1 else None,
        learning_rate=setup.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",  # torch.optim.AdamW, as prefopt
        beta=setup.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        bf16=setup.precision == "bf16",
        fp16=False,
        activation_checkpointing=setup.gradient_checkpointing,
        activation_checkpointing_kwargs=checkpointing if setup.gradient_checkpointing else None,
        gradient_checkpointing=setup.gradient_checkpointing,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=setup.seed,
        use_cpu=setup.device == "cpu",
        **({"use_liger_kernel": True} if setup.trl_liger else {}),
    )
    base = AutoModelForCausalLM.from_pretrained(resolve_model(setup.model), dtype=torch.float32)
    peft_config = copy.deepcopy(prefopt_model.peft_config["default"])
    rebinds = ModuleRebinds(sys.modules[type(base).__module__])
    trainer = _trl_trainer_class()(
        model=base, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=peft_config, callbacks=list(callbacks),
    )
    trainer.modeling_rebinds = rebinds  # Liger's module-wide kernels: for trl's phases only
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.step_losses = []
    copy_lora(prefopt_model, trainer.model)
    return trainer


class ModuleRebinds:
    """Names of a module rebound since this object was made: taken out for a while (``undone``) or for good.

    trl's ``use_liger_kernel`` applies Liger's kernels when its ``train()`` starts, to its model instance, but
    Liger also rebinds names in transformers' modeling module for everyone in the process: the rotary embedding
    function every attention layer calls, and the norm and MLP classes every model built later gets. prefopt's
    trainer lives in the same process and runs its phases inside trl's ``train()``, so without this its steps
    would run Liger's kernels too.
    """

    def __init__(self, module):
        self.module = module
        self.before = dict(vars(module))

    def changed(self) -> dict:
        return {k: v for k, v in vars(self.module).items() if k in self.before and self.before[k] is not v}

    def _set(self, values: dict) -> None:
        for k, v in values.items():
            setattr(self.module, k, v)

    @contextlib.contextmanager
    def undone(self):
        """The module's own names inside; the rebinds back on the way out."""
        changed = self.changed()
        self._set({k: self.before[k] for k in changed})
        try:
            yield
        finally:
            self._set(changed)

    def undo(self) -> None:
        self._set({k: self.before[k] for k in self.changed()})


def train_trl(trainer) -> None:
    """trl's train(); afterwards the modeling module's names are its own again (models built later get them)."""
    try:
        trainer.train()
    finally:
        trainer.modeling_rebinds.undo()


def copy_lora(src, dst) -> int:
    """Copy every LoRA parameter of peft model `src` into `dst` (same names); returns how many."""
    theirs = dict(dst.named_parameters())
    n = 0
    with torch.no_grad():
        for name, p in src.named_parameters():
            if ".lora_" in name:
                theirs[name].copy_(p)
                n += 1
    if n == 0 or n != sum(".lora_" in name for name in theirs):
        raise RuntimeError(f"LoRA layouts differ: copied {n} of {sum('.lora_' in k for k in theirs)} parameters")
    return n


def perturb_lora_b(model, seed: int = 1, scale: float = 0.02) -> None:
    """Small random LoRA B (it starts at 0, where the policy equals the reference and every loss is ln 2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------- measurement


def page_in(model) -> None:
    """Read every weight once. from_pretrained may leave them memory-mapped from the file, resident only once
    touched; without this, whichever phase first touches a model's weights would count them as its own memory."""
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
        for b in model.buffers():
            b.sum()


def checkpointed_layers(model) -> int:
    """How many modules run under activation checkpointing (transformers' per-layer flag)."""
    return sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Memory:
    """Peak memory of one phase: CUDA allocated bytes, or the process's RSS high-water mark on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.startswith("cuda") else "rss_vmhwm"

    def start(self) -> float:
        gc.collect()
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        _malloc_trim()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        return (_rss_kb("VmRSS") or 0) / 1024

    def peak(self) -> float:
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return (_rss_kb("VmHWM") or 0) / 1024


def run_prefopt_phase(trainer: Trainer, batches: list[list[int]], warmup: int, device: str, memory: Memory) -> dict:
    seconds, losses, start = [], [], 0.0
    for i, ids in enumerate(batches):
        if i == warmup:
            start = memory.start()  # peak over the timed steps only
        _sync(device)
        t0 = time.perf_counter()
        row = trainer.train_step(ids)
        _sync(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
        losses.append(row["loss"])
    return {"seconds": seconds, "losses": losses, "start_mb": start, "peak_mb": memory.peak()}


def _alternating_callback(phase_len: int, reps: int, warmup: int, prefopt_phase, device: str, memory: Memory):
    """A TrainerCallback that times trl's steps and runs prefopt's phase of each repetition next to trl's: before
    it in even repetitions, after it in odd ones. Whichever trainer goes second meets batch shapes the process
    has already met, and on a GPU that is cheaper (cuDNN attention plans are built once per shape and cached:
    benchmarks/shape_split.py), so neither trainer always goes first."""
    from transformers import TrainerCallback

    class Alternate(TrainerCallback):
        def __init__(self):
            self.trl: list[dict] = []
            self.prefopt: list[dict] = []
            self.order: list[list[str]] = []
            self.t0 = 0.0

        def _begin_rep(self, rep: int) -> None:
            self.order.append(["prefopt", "trl"] if rep % 2 == 0 else ["trl", "prefopt"])
            if self.order[rep][0] == "prefopt":
                self.prefopt.append(prefopt_phase(rep))
            self.trl.append({"seconds": [], "start_mb": memory.start() if warmup == 0 else 0.0})
            _sync(device)
            self.t0 = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self._begin_rep(0)

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            elapsed = time.perf_counter() - self.t0
            phase = self.trl[-1]
            step_in_phase = (state.global_step - 1) % phase_len
            if step_in_phase >= warmup:
                phase["seconds"].append(elapsed)
            if step_in_phase == warmup - 1:
                phase["start_mb"] = memory.start()  # peak over the timed steps only
            if step_in_phase == phase_len - 1:
                phase["peak_mb"] = memory.peak()
                rep = len(self.trl) - 1
                if self.order[rep][0] == "trl":
                    self.prefopt.append(prefopt_phase(rep))
                if len(self.trl) < reps:
                    self._begin_rep(len(self.trl))
            self.t0 = time.perf_counter()

    return Alternate()


def summarize(phases: list[dict], tokens: list[int]) -> dict:
    """Per-step times of all timed steps, their median/min/max, tokens/s and peak memory."""
    seconds = [s for ph in phases for s in ph["seconds"]]
    median = statistics.median(seconds)
    peak = max(ph["peak_mb"] for ph in phases)
    added = max(ph["peak_mb"] - ph["start_mb"] for ph in phases)
    return {
        "seconds_per_step": [ph["seconds"] for ph in phases],
        "seconds_per_step_median": median,
        "seconds_per_step_min": min(seconds),
        "seconds_per_step_max": max(seconds),
        "steps_per_second": 1.0 / median,
        "timed_steps": len(seconds),
        "tokens_per_step_mean": statistics.fmean(tokens),
        "tokens_per_second": statistics.fmean(tokens) / median,
        "peak_memory_mb": peak,
        "peak_memory_added_mb": added,
        "peak_memory_per_rep_mb": [ph["peak_mb"] for ph in phases],
        "start_memory_per_rep_mb": [ph["start_mb"] for ph in phases],
    }


# ---------------------------------------------------------------- the loss check


def loss_check(setup: Setup, tokenizer, pairs: list[TokenizedPair], batches: list[list[int]]) -> dict:
    """Train both from identical weights on the same batches in fp32; compare their per-step losses.

    LoRA B gets small random values first (identical in both), so policy and
    reference differ and the losses are not trivially ln 2.
    """
    setup = replace(setup, precision="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        perturb_lora_b(ours.model, seed=setup.seed + 1)
        theirs = build_trl(setup, tokenizer, pairs, batches, ours.model, Path(tmp))
        prefopt_losses = [ours.train_step(ids)["loss"] for ids in batches]
        train_trl(theirs)
        trl_losses = list(theirs.step_losses)
    del ours, theirs
    gc.collect()
    diffs = [abs(a - b) for a, b in zip(prefopt_losses, trl_losses)]
    return {
        "precision": "fp32",
        "steps": len(batches),
        "prefopt_losses": prefopt_losses,
        "trl_losses": trl_losses,
        "abs_diff": diffs,
        "max_abs_diff": max(diffs),
        "tolerance": CHECK_TOL,
        "passed": len(trl_losses) == len(batches) and max(diffs) < CHECK_TOL,
        "lora_b_init": "N(0, 0.02^2), identical in both (B = 0 would make every loss ln 2)",
    }


# ---------------------------------------------------------------- provenance


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def machine(device: str) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "versions": {p: _version(p) for p in ("torch", "transformers", "peft", "trl", "accelerate", "datasets",
                                             "liger-kernel", "triton")},
    }


def mfu(tokens_per_second: float, params: int, peak_flops: float) -> float:
    return 6.0 * params * tokens_per_second / peak_flops


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name, local HF folder or hub id")
    parser.add_argument("--rows", type=int, default=256, help="builtin:qa preference pairs")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-prompt-length", type=int, default=None, help="default: max length / 2")
    parser.add_argument("--pad-to", type=int, default=0, help="make every sequence exactly N tokens (0: off)")
    parser.add_argument("--lengths", choices=("data", "spread"), default="data",
                        help="data: builtin:qa's own lengths; spread: per-pair lengths drawn like chat preference "
                        "data (log-normal, up to max length), from the pair's own tokens")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--reference", choices=("auto", "adapter", "precomputed"), default="auto",
                        help="prefopt's reference (auto = adapter disabled); trl always disables the adapter")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per phase")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per phase")
    parser.add_argument("--check-steps", type=int, default=2, help="fp32 loss-agreement steps (0: skip)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both trainers")
    parser.add_argument("--trl-liger", action="store_true", help="trl with use_liger_kernel=True (needs liger-kernel)")
    parser.add_argument("--share-prompt", choices=("auto", "true", "false"), default="auto",
                        help="prefopt's share_prompt option: each pair's prompt run once (auto: on a CPU)")
    parser.add_argument("--pad-to-multiple-of", type=int, default=1,
                        help="both trainers' option of that name (batch widths rounded up; 1: off)")
    parser.add_argument("--peak-flops", type=float, default=H100_BF16_PEAK_FLOPS, help="for the MFU estimate (CUDA)")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from prefopt.core.models import pick_device, resolve_precision

    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    # peft reads transformers' deprecated `is_gradient_checkpointing`: noise, not the user's problem
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    device = str(pick_device())
    setup = Setup(
        model=args.model, rows=args.rows, batch_size=args.batch_size, max_length=args.pad_to or args.max_length,
        max_prompt_length=args.max_prompt_length or (args.pad_to or args.max_length) // 2, pad_to=args.pad_to,
        lengths=args.lengths,
        precision=resolve_precision(args.precision, device), reference=args.reference, lr=args.lr, beta=args.beta,
        seed=args.seed, gradient_checkpointing=args.gradient_checkpointing, trl_liger=args.trl_liger, device=device,
        share_prompt={"true": True, "false": False}.get(args.share_prompt, "auto"),
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    phase_len = args.warmup + args.steps
    tokenizer, pairs, truncation = load_pairs(setup)
    batches = batch_order(pairs, setup, args.reps * phase_len)
    print(f"{len(pairs)} pairs, {len(batches)} batches of {setup.batch_size}; device {device}, {setup.precision}",
          flush=True)

    check = None
    if args.check_steps:
        check = loss_check(setup, tokenizer, pairs, batches[: args.check_steps])
        print(f"loss check (fp32, {check['steps']} steps): prefopt {check['prefopt_losses']} trl {check['trl_losses']} "
              f"max |diff| {check['max_abs_diff']:.2e} -> {'ok' if check['passed'] else 'FAILED'}", flush=True)

    torch.manual_seed(setup.seed)
    memory = Memory(device)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()  # includes the one reference pass of precomputed mode
        ours = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        setup_seconds = time.perf_counter() - started
        reference_mode = ours.reference.mode
        shared_prompts = ours.share_prompt

        theirs = None

        def prefopt_phase(rep: int) -> dict:
            # runs inside trl's train(), so with trl's module-wide rebinds (Liger's) taken out for its duration
            with theirs.modeling_rebinds.undone():
                return run_prefopt_phase(ours, batches[rep * phase_len : (rep + 1) * phase_len], args.warmup,
                                         device, memory)

        alternate = _alternating_callback(phase_len, args.reps, args.warmup, prefopt_phase, device, memory)
        theirs = build_trl(setup, tokenizer, pairs, batches, ours.model, Path(tmp), callbacks=[alternate])
        for model in (ours.model, theirs.model):
            page_in(model)
        params = sum(p.numel() for p in ours.model.parameters())
        trainable = sum(p.numel() for p in ours.model.parameters() if p.requires_grad)
        train_trl(theirs)
        trl_losses = list(theirs.step_losses)
        prefopt_losses = [x for ph in alternate.prefopt for x in ph["losses"]]
        checkpointed = {"prefopt": checkpointed_layers(ours.model), "trl": checkpointed_layers(theirs.model)}

    timed = [b for r in range(args.reps) for b in batches[r * phase_len + args.warmup : (r + 1) * phase_len]]
    tokens = [batch_tokens(pairs, b) for b in timed]
    results = {"prefopt": summarize(alternate.prefopt, tokens), "trl": summarize(alternate.trl, tokens)}
    ratios = {
        "steps_per_second_prefopt_over_trl": results["prefopt"]["steps_per_second"] / results["trl"]["steps_per_second"],
        "peak_memory_prefopt_over_trl": results["prefopt"]["peak_memory_mb"] / results["trl"]["peak_memory_mb"],
        "peak_memory_added_prefopt_over_trl": (
            results["prefopt"]["peak_memory_added_mb"] / results["trl"]["peak_memory_added_mb"]
            if results["trl"]["peak_memory_added_mb"] > 0 else None
        ),
    }
    if device.startswith("cuda"):
        for impl in results.values():
            impl["mfu"] = mfu(impl["tokens_per_second"], params, args.peak_flops)
    record = {
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/speed_vs_trl.py", *argv]),
        "setup": asdict(setup),
        "precision_requested": args.precision,
        "model_resolved": resolve_model(setup.model),
        "data": f"builtin:qa, {setup.rows} pairs (seed {setup.seed}), tokenised by prefopt"
        + (f", padded to exactly {setup.pad_to} tokens per sequence" if setup.pad_to else "")
        + (", lengths re-drawn per pair (spread_pair: log-normal, no truncation)" if setup.lengths == "spread" else ""),
        "truncation": asdict(truncation),
        "algo": "dpo (sigmoid loss)",
        "lora": {"r": setup.lora_r, "alpha": setup.lora_alpha, "dropout": 0.0, "targets": "all-linear"},
        "params": {"total": params, "trainable": trainable},
        "reference": {"prefopt": reference_mode, "trl": "adapter disabled (trl default for a peft model)"},
        "trl_liger_kernel": setup.trl_liger,
        "prefopt_share_prompt": shared_prompts,  # each pair's prompt run once by prefopt (trl runs it twice)
        "prefopt_setup_seconds": setup_seconds,  # model load + LoRA + (precomputed mode) the reference pass, untimed
        "optimizer": f"AdamW lr={setup.lr} constant, no weight decay, clip 1.0",
        "protocol": {"reps": args.reps, "warmup_steps": args.warmup, "timed_steps": args.steps,
                     "order": ("per rep: one trainer's warm-up + timed steps, then the other's on the same batches; "
                               "prefopt first in even reps, trl first in odd ones")},
        "phase_order": alternate.order,
        "trl_driver": TRL_DRIVER,
        "checkpointed_layers": checkpointed,
        "memory": {"kind": memory.kind, "note": "peak over each phase's timed steps (reset after warm-up); *_added = peak - memory at that reset"},
        "mfu": (f"6 * total params * tokens/s / {args.peak_flops:.3g}; an approximation with LoRA "
                "(frozen weights get no weight gradients, but the reference forward is extra)")
        if device.startswith("cuda") else None,
        "results": results,
        "ratios": ratios,
        "loss_check": check,
        "train_losses": {"prefopt": prefopt_losses, "trl": trl_losses},
        "machine": machine(device),
        "provenance": provenance(),
    }
    out = Path(args.out)
    atomic_write_json(out / "dpo_vs_trl.json", record)
    table = markdown(record)
    atomic_write_text(out / "dpo_vs_trl.md", table)
    print(table)
    print(f"wrote {out / 'dpo_vs_trl.json'} and {out / 'dpo_vs_trl.md'}")
    return 0 if check is None or check["passed"] else 1


def markdown(record: dict) -> str:
    s, r = record["setup"], record["results"]
    mem = "peak RSS" if record["memory"]["kind"] == "rss_vmhwm" else "peak CUDA allocated"
    lines = [
        (f"# prefopt DPO vs trl DPOTrainer{' (use_liger_kernel)' if s.get('trl_liger') else ''} ({s['device']}, "
        f"{s['precision']})"),
        "",
        f"Model `{s['model']}`, LoRA r={s['lora_r']}, batch {s['batch_size']} pairs, "
        + (f"every sequence {s['pad_to']} tokens" if s["pad_to"] else f"max length {s['max_length']}")
        + (" (lengths spread like chat data)" if s.get("lengths") == "spread" else "")
        + (f", widths padded to a multiple of {s['pad_to_multiple_of']} by both"
           if s.get("pad_to_multiple_of", 1) > 1 else "")
        + f", gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}; reference: prefopt "
        f"{record['reference']['prefopt']}, trl adapter disabled; prefopt runs each pair's prompt "
        f"{'once (share_prompt)' if record.get('prefopt_share_prompt') else 'twice, as trl'}. "
        f"{record['protocol']['reps']} reps x "
        f"{record['protocol']['timed_steps']} timed steps each (after {record['protocol']['warmup_steps']} warm-up)"
        + ("; the trainers take turns to go first." if record.get("phase_order") else ".")
        + (f" prefopt's setup (load, LoRA, the one reference pass over the pairs the batches use) took "
           f"{record['prefopt_setup_seconds']:.1f} s, not timed." if record["reference"]["prefopt"] == "precomputed" else ""),
        "",
        f"| | s/step median (min-max) | steps/s | tokens/s | {mem} MB | added MB |"
        + (" MFU |" if "mfu" in r["prefopt"] else ""),
        "|---|---|---|---|---|---|" + ("---|" if "mfu" in r["prefopt"] else ""),
    ]
    for name in ("prefopt", "trl"):
        x = r[name]
        lines.append(
            f"| {name} | {x['seconds_per_step_median']:.3f} ({x['seconds_per_step_min']:.3f}-"
            f"{x['seconds_per_step_max']:.3f}) | {x['steps_per_second']:.3f} | {x['tokens_per_second']:.0f} | "
            f"{x['peak_memory_mb']:.0f} | {x['peak_memory_added_mb']:.0f} |"
            + (f" {x['mfu']:.1%} |" if "mfu" in x else "")
        )
    q = record["ratios"]
    added = q["peak_memory_added_prefopt_over_trl"]
    lines += [
        "",
        f"prefopt / trl: steps/s x{q['steps_per_second_prefopt_over_trl']:.2f}, peak memory "
        f"x{q['peak_memory_prefopt_over_trl']:.2f}" + (f" (added x{added:.2f})" if added is not None else "") + ".",
    ]
    c = record["loss_check"]
    if c:
        lines.append(f"Loss check (fp32, {c['steps']} steps, same weights and batches): max |prefopt - trl| = "
                     f"{c['max_abs_diff']:.1e} ({'pass' if c['passed'] else 'FAIL'}, tolerance {c['tolerance']:.0e}).")
    lines += ["", f"`{record['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
