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
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from report import finish
from speed_vs_trl import Setup, batch_order, build_prefopt, build_trl, load_pairs
from torch.profiler import ProfilerActivity, profile

from prefopt.io import provenance

ROOT = Path(__file__).resolve().parents[1]
HOST_WAITS = ("aten::_local_scalar_dense", "aten::nonzero")
SHOWN = ("aten::to", "aten::copy_", "aten::mm", "aten::mul", "aten::add_", *HOST_WAITS)


def counts(run_steps, steps: int) -> dict:
    """Per-step aten operation counts of `run_steps()` (which runs `steps` steps), and its seconds per step."""
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_steps()
    seconds = (time.perf_counter() - started) / steps
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    by_name = {e.key: e.count for e in events}
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in events}
    return {
        "self_ms_per_step": dict(sorted(self_ms.items(), key=lambda kv: -kv[1])),
        "aten_per_step": sum(by_name.values()) / steps,
        "host_waits_per_step": sum(by_name.get(k, 0) for k in HOST_WAITS) / steps,
        "by_name_per_step": {k: by_name.get(k, 0) / steps for k in SHOWN},
        "profiled_seconds_per_step": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="bundled name, local HF folder or hub id")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=6, help="profiled steps of each")
    parser.add_argument("--lengths", choices=("data", "spread"), default="data", help="as speed_vs_trl.py")
    parser.add_argument("--top", type=int, default=0, help="also list the N operations with most self CPU time")
    parser.add_argument("--out", default=None, help="folder for dispatch_counts.{json,md} (default: print only)")
    args = parser.parse_args(argv)

    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=args.precision, device="cpu", lengths=args.lengths)
    tokenizer, pairs, _ = load_pairs(setup)
    batches = batch_order(pairs, setup, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        # Both from a fresh trainer, first step included (each creates its optimizer state then).
        trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        ours = counts(lambda: [trainer.train_step(ids) for ids in batches], args.steps)
        trl = build_trl(setup, tokenizer, pairs, batches, trainer.model, Path(tmp))
        theirs = counts(trl.train, args.steps)  # its whole train(), setup included: a slight overcount

    result = {"setup": vars(setup), "prefopt": ours, "trl": theirs,
              "command": shlex.join(["python", "benchmarks/dispatch_counts.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    rows = [("aten operations", "aten_per_step"), ("host waits (.item, nonzero)", "host_waits_per_step"),
            ("profiled s/step (this CPU)", "profiled_seconds_per_step")]
    lines = [(f"# Operations dispatched per DPO step ({args.model}, batch {args.batch_size}, max length "
             f"{args.max_length}, {args.precision}, {args.steps} steps)"), "",
             "| per step | prefopt | trl |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {ours[key]:.1f} | {theirs[key]:.1f} |" for label, key in rows]
    lines += [f"| {name} | {ours['by_name_per_step'][name]:.1f} | {theirs['by_name_per_step'][name]:.1f} |"
              for name in SHOWN]
    if args.top:
        names = list(dict.fromkeys([*list(ours["self_ms_per_step"])[: args.top],
                                    *list(theirs["self_ms_per_step"])[: args.top]]))  # fmt: skip
        lines += ["", "| self CPU ms per step | prefopt | trl |", "| --- | ---: | ---: |"]
        lines += [f"| {n} | {ours['self_ms_per_step'].get(n, 0.0):.0f} | {theirs['self_ms_per_step'].get(n, 0.0):.0f} |"
                  for n in names]  # fmt: skip
    finish(result, lines, args.out, "dispatch_counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
