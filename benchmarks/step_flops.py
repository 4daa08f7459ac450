"""Matrix-product work per DPO step, prefopt vs trl's DPOTrainer, and how much of each step it takes.

For each trainer, on the setup of `benchmarks/speed_vs_trl.py` (same model, LoRA, batches, precision): the FLOPs
of its matrix products per step (mm, addmm, addmm_, bmm, baddbmm; attention on a CPU and element-wise work are not
counted), the seconds spent inside those products (each timed around its kernel), in all and by kind (layer
projections, low-rank LoRA products, the output projection), and the whole step's seconds; and this machine's
rate for a product alone at the model's layer shapes. Then:

- trl's FLOPs / prefopt's is what prefopt's speed-up would be if both ran their products at one rate and spent
  nothing else;
- FLOPs / the machine's rate is the floor under each trainer's step time;
- seconds in products / the whole step is their share of it. The whole step is timed with the counting
  on, which adds Python overhead to every operation of both trainers: the steps are slower than uninstrumented
  ones, and the products' share of them is an underestimate.

    python benchmarks/step_flops.py --model smollm2-135m-instruct --precision fp32 --batch-size 8 \\
        --max-length 128 --lengths spread --steps 2 --out results/speed/cpu_step_flops_fp32
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections import defaultdict

import torch
from dispatch_counts import measure_both
from report import finish
from speed_vs_trl import Setup, batch_order, load_pairs
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig

from prefopt.core.models import resolve_model
from prefopt.io import provenance

# Every overload (the default and out= ones) of the matrix-product operations; the first three add to an input.
ADD_PRODUCTS = {torch.ops.aten.addmm, torch.ops.aten.addmm_, torch.ops.aten.baddbmm}
PRODUCTS = ADD_PRODUCTS | {torch.ops.aten.mm, torch.ops.aten.bmm}


def product_kind(func, args, vocab_size: int) -> tuple[str, int]:
    """What a matrix product is for, and its FLOPs (2mkn, times the batch for bmm / baddbmm): "output projection"
    when one of its dimensions is the vocabulary or its inner or output dimension is a quarter of it or more (a
    chunk of the vocabulary: layer widths are far below that), "low rank (LoRA)" when one is 64 or less (an
    adapter's A or B, either direction), else "layer"."""
    first, second = (args[1], args[2]) if func.overloadpacket in ADD_PRODUCTS else (args[0], args[1])
    batch = first.shape[0] if first.dim() == 3 else 1  # (M, K) @ (K, N) or (B, M, K) @ (B, K, N)
    m, k, n = first.shape[-2], first.shape[-1], second.shape[-1]
    if vocab_size in (m, k, n) or max(k, n) >= vocab_size // 4:
        kind = "output projection"
    else:
        kind = "low rank (LoRA)" if min(m, k, n) <= 64 else "layer"
    return kind, 2 * batch * m * k * n


class _ProductCounter(TorchDispatchMode):
    """FLOPs and wall seconds of every matrix-product kernel, in all, by operation and by `product_kind`.
    (torch's FlopCounterMode is not used: it does not count the in-place `addmm_` prefopt's LoRA layers use.)"""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.flops_by_op: dict[str, int] = defaultdict(int)
        self.by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # kind -> [seconds, FLOPs]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket not in PRODUCTS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        kind, flops = product_kind(func, args, self.vocab_size)
        self.flops_by_op[func.overloadpacket.__name__] += flops  # aten.mm.default -> mm
        self.by_kind[kind][0] += elapsed
        self.by_kind[kind][1] += flops
        return out

    def snapshot(self) -> tuple[dict[str, int], dict[str, tuple[float, int]]]:
        return dict(self.flops_by_op), {kind: tuple(part) for kind, part in self.by_kind.items()}


def step_flops(run, steps: int, vocab_size: int) -> dict:
    """FLOPs and seconds in matrix products (in all, by operation and by `product_kind`) and wall seconds per
    step of `run(step_done)`, which runs `steps + 1` steps and calls `step_done()` after each; all counted
    between the first step's end and the last's (setup and the first step, a warm-up, are left out). The wall
    time includes the counting's own Python overhead."""
    marks = []  # per step end: (FLOPs by op, {kind: (seconds, FLOPs)}, wall clock)
    with _ProductCounter(vocab_size) as counter:
        run(lambda: marks.append((*counter.snapshot(), time.perf_counter())))
    if len(marks) != steps + 1:
        raise RuntimeError(f"expected {steps + 1} step ends, saw {len(marks)}")
    (first, first_kinds, first_t), (last, last_kinds, last_t) = marks[0], marks[-1]
    per_op = {op: (last.get(op, 0) - first.get(op, 0)) / steps for op in set(first) | set(last)}
    per_op = {op: f for op, f in sorted(per_op.items(), key=lambda kv: -kv[1]) if f > 0}
    by_kind = {}
    for kind, (seconds, kind_flops) in last_kinds.items():
        before_s, before_f = first_kinds.get(kind, (0.0, 0))
        by_kind[kind] = {"seconds_per_step": (seconds - before_s) / steps,
                         "flops_per_step": (kind_flops - before_f) / steps}
    flops, product_seconds = sum(per_op.values()), sum(part["seconds_per_step"] for part in by_kind.values())
    return {"flops_per_step": flops, "flops_per_step_by_op": per_op, "product_seconds_per_step": product_seconds,
            "instrumented_seconds_per_step": (last_t - first_t) / steps, "product_flop_per_s": flops / product_seconds,
            "products_by_kind": by_kind}


def matmul_rate(config, rows: int, dtype: torch.dtype, reps: int = 5) -> dict:
    """This machine's matrix-product rate (FLOP/s, median of `reps`) at the model's layer shapes, `rows` rows:
    the attention and MLP projections and the output projection, forward."""
    hidden = config.hidden_size
    heads_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * heads_dim
    shapes = {"q/o": (hidden, hidden), "k/v": (hidden, kv), "mlp up": (hidden, config.intermediate_size),
              "mlp down": (config.intermediate_size, hidden), "output projection": (hidden, config.vocab_size)}
    rates = {}
    for name, (k, n) in shapes.items():
        # as nn.Linear stores and applies its weight: (out, in), x @ weight.T
        a, weight = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        torch.nn.functional.linear(a, weight)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.nn.functional.linear(a, weight)
            times.append(time.perf_counter() - start)
        rates[name] = 2 * rows * k * n / statistics.median(times)
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="bundled name, local HF folder or hub id")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--steps", type=int, default=2, help="counted steps of each (after one uncounted)")
    parser.add_argument("--lengths", choices=("data", "spread"), default="spread", help="as speed_vs_trl.py")
    parser.add_argument("--rows", type=int, default=1024, help="rows of the timed matrix products")
    parser.add_argument("--out", default=None, help="folder for step_flops.{json,md} (default: print only)")
    args = parser.parse_args(argv)

    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=args.precision, device="cpu",
                  lengths=args.lengths)
    tokenizer, pairs, _ = load_pairs(setup)
    batches = batch_order(pairs, setup, args.steps + 1)
    vocab_size = AutoConfig.from_pretrained(resolve_model(args.model)).vocab_size
    ours, theirs, trainer = measure_both(setup, tokenizer, pairs, batches,
                                         lambda run: step_flops(run, args.steps, vocab_size))
    config = trainer.model.config
    dtype = next(p.dtype for p in trainer.model.parameters() if not p.requires_grad)
    rates = matmul_rate(config, args.rows, dtype)
    best = max(rates.values())
    result = {"setup": vars(setup), "prefopt": ours, "trl": theirs, "matmul_flop_per_s": rates,
              "matmul_dtype": str(dtype).removeprefix("torch."), "flops_ratio_trl_over_prefopt":
              theirs["flops_per_step"] / ours["flops_per_step"],
              "command": shlex.join(["python", "benchmarks/step_flops.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# FLOPs per DPO step ({args.model}, batch {args.batch_size}, max length {args.max_length}, "
             f"{args.precision}, lengths {args.lengths}, {args.steps} steps after 1)"), "",
             "| per step | prefopt | trl |", "| --- | ---: | ---: |",
             (f"| GFLOP in matrix products | {ours['flops_per_step'] / 1e9:.1f} | "
             f"{theirs['flops_per_step'] / 1e9:.1f} |")]
    ops = list(dict.fromkeys([*ours["flops_per_step_by_op"], *theirs["flops_per_step_by_op"]]))
    lines += [f"| {op} GFLOP | {ours['flops_per_step_by_op'].get(op, 0) / 1e9:.1f} | "
              f"{theirs['flops_per_step_by_op'].get(op, 0) / 1e9:.1f} |" for op in ops]
    lines += [(f"| s/step in matrix products | {ours['product_seconds_per_step']:.2f} | "
              f"{theirs['product_seconds_per_step']:.2f} |"),
              (f"| GFLOP/s in matrix products | {ours['product_flop_per_s'] / 1e9:.0f} | "
              f"{theirs['product_flop_per_s'] / 1e9:.0f} |"),
              (f"| s/step, whole step (instrumented) | {ours['instrumented_seconds_per_step']:.2f} | "
              f"{theirs['instrumented_seconds_per_step']:.2f} |")]
    lines += [(f"| s/step at the fastest measured rate ({best / 1e9:.0f} GFLOP/s) | "
              f"{ours['flops_per_step'] / best:.2f} | {theirs['flops_per_step'] / best:.2f} |"), "",
              (f"trl's FLOPs / prefopt's: **{result['flops_ratio_trl_over_prefopt']:.2f}** (the most prefopt's "
              "steps/s can exceed trl's when both spend all their time in matrix products at one rate)"), "",
              ("| products by kind, per step | prefopt s | prefopt GFLOP | prefopt GFLOP/s | trl s | trl GFLOP "
               "| trl GFLOP/s |"),
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in dict.fromkeys([*ours["products_by_kind"], *theirs["products_by_kind"]]):
        cells = []
        for side in (ours, theirs):
            part = side["products_by_kind"].get(kind, {"seconds_per_step": 0.0, "flops_per_step": 0.0})
            rate = part["flops_per_step"] / part["seconds_per_step"] / 1e9 if part["seconds_per_step"] else 0.0
            cells += [f"{part['seconds_per_step']:.2f}", f"{part['flops_per_step'] / 1e9:.1f}", f"{rate:.0f}"]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", f"| matrix product ({args.rows} rows, {result['matmul_dtype']}) | GFLOP/s |", "| --- | ---: |"]
    lines += [f"| {name} | {rate / 1e9:.0f} |" for name, rate in rates.items()]
    finish(result, lines, args.out, "step_flops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
