"""The fused vocabulary projection's forward + backward with the softmax kept against made again.

`linear_log_softmax` (prefopt.core.logprobs) keeps the forward's float32 softmax for the backward when it fits
`_KEEP_SOFTMAX_BYTES`, else makes each chunk's logits again. This times both on the same (rows x hidden) states
and a (vocabulary x hidden) weight of the default model's shape, alternating, `--reps` times each.

    python benchmarks/fused_head_backward.py --rows 400 1300 --out results/speed/cpu_fused_head_backward
    python benchmarks/fused_head_backward.py --rows 320 1300 --precision bf16   # as in a bf16 LoRA run
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch
from report import finish

from prefopt.core import logprobs
from prefopt.io import provenance


def seconds(hidden, weight, labels, n: int, precision: str = "fp32", fresh: bool = False) -> float:
    """Mean seconds of one forward + backward over n calls (under CPU bf16 autocast for "bf16"); with fresh, the
    kept softmax gets a new buffer each call instead of the one the previous call handed back."""
    started = time.perf_counter()
    for _ in range(n):
        if fresh:
            logprobs._SPARE_SOFTMAX[0] = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = logprobs.linear_log_softmax(hidden, weight, labels)
        out.sum().backward()
    return (time.perf_counter() - started) / n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[400, 1300])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5, help="calls per timing")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: the projection under CPU bf16 autocast, as in a bf16 run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden) * 0.02  # (V, H), frozen as in LoRA
    budget = logprobs._KEEP_SOFTMAX_BYTES
    rows = []
    for n in args.rows:
        hidden = torch.randn(n, args.hidden, requires_grad=True)  # (R, H)
        labels = torch.randint(0, args.vocab, (n,))  # (R,)
        times = {"recomputed": [], "kept": [], "kept, fresh buffer": []}
        kept = max(budget, n * args.vocab * 4)
        for _ in range(args.reps):
            for name, keep, fresh in (("recomputed", 0, False), ("kept", kept, False),
                                      ("kept, fresh buffer", kept, True)):
                logprobs._KEEP_SOFTMAX_BYTES = keep
                seconds(hidden, weight, labels, 1, args.precision, fresh)  # untimed
                times[name].append(seconds(hidden, weight, labels, args.calls, args.precision, fresh))
        logprobs._KEEP_SOFTMAX_BYTES = budget
        size = n * args.vocab * 4  # bytes of the (R, V) float32 softmax
        rows.append({"rows": n, "softmax_mb": size / 2**20, "kept_by_default": size <= budget, **times})
        print(rows[-1], flush=True)

    result = {"rows": rows, "hidden": args.hidden, "vocab": args.vocab, "budget_bytes": budget,
              "precision": args.precision,
              "command": shlex.join(["python", "benchmarks/fused_head_backward.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# Fused projection forward + backward: softmax kept vs made again (H {args.hidden}, V {args.vocab}, "
             f"{args.precision}); 'kept' reuses the buffer the previous call's softmax handed back, 'fresh' makes a new one "
             "each call (as before the reuse)"), "",
             "| rows | softmax MB | kept by default | recomputed ms | kept ms | kept, fresh buffer ms |",
             "| ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        fmt = lambda xs: ", ".join(f"{1000 * x:.0f}" for x in xs)
        lines.append(f"| {r['rows']} | {r['softmax_mb']:.0f} | {'yes' if r['kept_by_default'] else 'no'} | "
                     f"{fmt(r['recomputed'])} | {fmt(r['kept'])} | {fmt(r['kept, fresh buffer'])} |")
    finish(result, lines, args.out, "fused_head_backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
