"""Operations dispatched per training step: prefopt's DPO vs trl's DPOTrainer, counted by torch.profiler.

When a step is launch-bound (a small model and batch on a GPU: the GPU waits for
the host to issue kernels), its time is set by how many operations the host
dispatches and how often it waits for the device. This script counts both on the
CPU, where nothing needs a GPU: every `aten::` operation per step, and the ones
that make the host wait for a GPU (`aten::_local_scalar_dense`: `.item()`,
`float(tensor)`; `aten::nonzero`: boolean-mask indexing). The setup is
`benchmarks/speed_vs_trl.py`'s (same model, LoRA, token ids, batches, precision).

Use a model whose layers are so narrow that the step is all dispatch
(`benchmarks/random_init_model.py ... --set hidden_size=64 ...`, see there):

    python benchmarks/dispatch_counts.py --model /tmp/narrow --steps 6

With `--top N` it also lists where the CPU time goes (self time per operation, per step), e.g. on the real model:

    python benchmarks/dispatch_counts.py --model smollm2-135m-instruct --precision fp32 --batch-size 8 \
        --max-length 256 --lengths spread --steps 2 --top 12

The wall time printed is CPU time on this machine; only the counts carry over to a GPU.

On a GPU (`--device cuda`, bf16) the profiler also records the CUDA timeline: per step, the kernels and copies
launched, the time the GPU spent in them (busy) against the step's wall time, and the host's waits for the
device (`cudaStreamSynchronize` and kin). `--warmup N` runs N unprofiled steps first, on the profiled steps'
batches (cycled), so each trainer has built its optimizer state and met every profiled batch shape (on a GPU,
cuDNN attention builds a plan per new shape, a host cost the first trainer to meet a shape would pay alone:
benchmarks/shape_split.py), e.g.

    python benchmarks/dispatch_counts.py --model /tmp/smollm2-random --device cuda --batch-size 4 \
        --max-length 512 --lengths spread --warmup 3 --steps 5 --top 12 --out /tmp/counts
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import finish
from speed_vs_trl import Setup, batch_order, build_prefopt, build_trl, load_pairs
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule
from transformers import TrainerCallback

from prefopt.io import provenance

ROOT = Path(__file__).resolve().parents[1]
HOST_WAITS = ("aten::_local_scalar_dense", "aten::nonzero")
SHOWN = ("aten::to", "aten::copy_", "aten::mm", "aten::mul", "aten::add_", *HOST_WAITS)


HOST_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def counts(run, steps: int, warmup: int = 0, cuda: bool = False) -> dict:
    """Per-step operation counts of `run(step_done)`, which runs `warmup + steps` steps and calls `step_done()`
    after each; the first `warmup` steps are left out (with none, the whole of `run` is counted)."""
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    plan = schedule(skip_first=warmup - 1, wait=0, warmup=1, active=steps, repeat=1) if warmup else None
    wall: list[float] = []
    with profile(activities=activities, schedule=plan) as prof:
        started = [time.perf_counter()]

        def step_done() -> None:
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            wall.append(now - started[0])
            started[0] = now
            if plan is not None:
                prof.step()

        run(step_done)
    seconds = statistics.fmean(wall[warmup:]) if warmup else sum(wall) / steps
    averages = prof.key_averages()
    events = [e for e in averages if e.key.startswith("aten::")]
    by_name = {e.key: e.count for e in events}
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in events}
    result = {
        "self_ms_per_step": dict(sorted(self_ms.items(), key=lambda kv: -kv[1])),
        "aten_per_step": sum(by_name.values()) / steps,
        "host_waits_per_step": sum(by_name.get(k, 0) for k in HOST_WAITS) / steps,
        "by_name_per_step": {k: by_name.get(k, 0) / steps for k in SHOWN},
        "profiled_seconds_per_step": seconds,
    }
    if cuda:
        # kernels and copies only: the profiler also puts its step marks and annotations on the GPU's timeline
        device_events = [e for e in averages if e.device_type == DeviceType.CUDA
                         and not getattr(e, "is_user_annotation", False) and not e.key.startswith("ProfilerStep")]
        busy_ms = sum(e.self_device_time_total for e in device_events) / 1e3 / steps
        result.update({
            "gpu_launches_per_step": sum(e.count for e in device_events) / steps,
            "gpu_busy_ms_per_step": busy_ms,
            "gpu_busy_fraction": busy_ms / 1e3 / seconds,
            "host_syncs_per_step": sum(e.count for e in averages if e.key in HOST_SYNCS) / steps,
            "gpu_ms_per_step": dict(sorted(((e.key, e.self_device_time_total / 1e3 / steps) for e in device_events),
                                           key=lambda kv: -kv[1])[:40]),
        })
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="bundled name, local HF folder or hub id")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the CUDA timeline too")
    parser.add_argument("--warmup", type=int, default=0, help="unprofiled first steps of each, on the profiled "
                        "batches (0: count from the fresh trainer's first step, setup included)")
    parser.add_argument("--steps", type=int, default=6, help="profiled steps of each")
    parser.add_argument("--lengths", choices=("data", "spread"), default="data", help="as speed_vs_trl.py")
    parser.add_argument("--top", type=int, default=0, help="also list the N operations with most self CPU time")
    parser.add_argument("--out", default=None, help="folder for dispatch_counts.{json,md} (default: print only)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=args.precision, device=args.device,
                  lengths=args.lengths)
    cuda = args.device == "cuda"
    tokenizer, pairs, _ = load_pairs(setup)
    profiled = batch_order(pairs, setup, args.steps)
    batches = [profiled[i % len(profiled)] for i in range(args.warmup)] + profiled
    ours, theirs, _ = measure_both(setup, tokenizer, pairs, batches,
                                   lambda run: counts(run, args.steps, args.warmup, cuda))

    result = {"setup": vars(setup), "prefopt": ours, "trl": theirs,
              "command": shlex.join(["python", "benchmarks/dispatch_counts.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    rows = [("aten operations", "aten_per_step"), ("host waits (.item, nonzero)", "host_waits_per_step"),
            ("profiled s/step (this CPU)" if not cuda else "profiled s/step", "profiled_seconds_per_step")]
    if cuda:
        rows += [("GPU kernels and copies", "gpu_launches_per_step"), ("GPU busy ms", "gpu_busy_ms_per_step"),
                 ("GPU busy / wall", "gpu_busy_fraction"), ("host waits for the GPU (cuda*Synchronize)",
                                                             "host_syncs_per_step")]
    lines = [(f"# Operations dispatched per DPO step ({args.model}, batch {args.batch_size}, max length "
             f"{args.max_length}, {args.precision}, {args.device}, {args.steps} steps after {args.warmup})"), "",
             "| per step | prefopt | trl |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {ours[key]:.3g} | {theirs[key]:.3g} |" for label, key in rows]
    lines += [f"| {name} | {ours['by_name_per_step'][name]:.1f} | {theirs['by_name_per_step'][name]:.1f} |"
              for name in SHOWN]
    if args.top:
        names = list(dict.fromkeys([*list(ours["self_ms_per_step"])[: args.top],
                                    *list(theirs["self_ms_per_step"])[: args.top]]))  # fmt: skip
        lines += ["", "| self CPU ms per step | prefopt | trl |", "| --- | ---: | ---: |"]
        lines += [f"| {n} | {ours['self_ms_per_step'].get(n, 0.0):.0f} | {theirs['self_ms_per_step'].get(n, 0.0):.0f} |"
                  for n in names]  # fmt: skip
    if cuda and args.top:
        names = list(dict.fromkeys([*list(ours["gpu_ms_per_step"])[: args.top],
                                    *list(theirs["gpu_ms_per_step"])[: args.top]]))  # fmt: skip
        lines += ["", "| GPU ms per step | prefopt | trl |", "| --- | ---: | ---: |"]
        lines += [f"| {n[:90]} | {ours['gpu_ms_per_step'].get(n, 0.0):.2f} | {theirs['gpu_ms_per_step'].get(n, 0.0):.2f} |"
                  for n in names]  # fmt: skip
    finish(result, lines, args.out, "dispatch_counts")
    return 0


def measure_both(setup: Setup, tokenizer, pairs, batches: list[list[int]], measure):
    """(measure(prefopt's steps), measure(trl's steps), prefopt's Trainer). Each trainer is fresh (it creates its
    optimizer state in its first step); `measure(run)` calls `run(step_done)`, which trains `batches` in order and
    calls `step_done()` after each step. trl's run is its whole `train()`, setup included."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))

        def prefopt_steps(step_done) -> None:
            for ids in batches:
                trainer.train_step(ids)
                step_done()

        ours = measure(prefopt_steps)
        trl_step_end = _StepDone()
        trl = build_trl(setup, tokenizer, pairs, batches, trainer.model, Path(tmp), callbacks=[trl_step_end])

        def trl_steps(step_done) -> None:
            trl_step_end.step_done = step_done
            trl.train()

        theirs = measure(trl_steps)
    return ours, theirs, trainer


class _StepDone(TrainerCallback):
    """Calls `step_done()` at each of trl's step ends (set before train())."""

    step_done = staticmethod(lambda: None)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_done()


if __name__ == "__main__":
    sys.exit(main())
