"""prefopt's DPO step with transformers' per-layer element-wise code compiled (`torch.compile`) against eager.

Outside its matrix products a prefopt step on a CPU spends most of its time in attention and in transformers'
element-wise layer code (RMSNorm, the SiLU-gated MLP, RoPE; `benchmarks/step_flops.py`, docs/speed.md), which
eager PyTorch runs one operation at a time. This compiles each decoder layer's two RMSNorms and its MLP
(`module.compile(dynamic=True)`, so that the batches' varying lengths share one graph) and times the same
batches eager, compiled, and eager again, after one warm-up pass that pays the compilation:

    python benchmarks/compile_layers.py --model smollm2-135m-instruct --precision fp32 --batch-size 8 \\
        --max-length 128 --batches 4 --passes 2 --out results/speed/cpu_compile_layers
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
from speed_vs_trl import Setup, batch_order, build_prefopt, load_pairs

from prefopt.io import provenance


def _compiled_modules(model) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [m for layer in base.model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm,
                                                       layer.mlp)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--batches", type=int, default=4, help="batches per pass")
    parser.add_argument("--passes", type=int, default=2, help="timed passes of each mode, alternating")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=args.precision, device="cpu", lengths="spread")
    tokenizer, pairs, _ = load_pairs(setup)
    batches = batch_order(pairs, setup, args.batches)
    seconds: dict[str, list[list[float]]] = {"eager": [], "compiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        modules = _compiled_modules(trainer.model)

        def one_pass() -> list[float]:
            times = []
            for ids in batches:
                start = time.perf_counter()
                trainer.train_step(ids)
                times.append(time.perf_counter() - start)
            return times

        def set_mode(mode: str) -> None:
            for m in modules:
                if mode == "compiled":
                    m.compile(dynamic=True)
                else:
                    m._compiled_call_impl = None  # back to the module's eager forward

        one_pass()  # eager warm-up (optimizer state, first-touch memory)
        set_mode("compiled")
        start = time.perf_counter()
        one_pass()  # compilation
        compile_seconds = time.perf_counter() - start
        for _ in range(args.passes):
            for mode in ("eager", "compiled"):
                set_mode(mode)
                seconds[mode].append(one_pass())
    totals = {mode: [sum(p) for p in passes] for mode, passes in seconds.items()}
    ratio = statistics.median(totals["eager"]) / statistics.median(totals["compiled"])
    result = {"setup": vars(setup), "seconds": seconds, "pass_totals": totals,
              "first_compiled_pass_seconds": compile_seconds, "eager_over_compiled": ratio,
              "command": shlex.join(["python", "benchmarks/compile_layers.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# Compiled norms and MLPs vs eager ({args.model}, batch {args.batch_size}, max length "
             f"{args.max_length}, {args.precision}, {args.batches} batches per pass)"), "",
             "| mode | pass totals s | per batch s (each pass) |", "| --- | --- | --- |"]
    lines += [f"| {mode} | {', '.join(f'{t:.1f}' for t in totals[mode])} | "
              f"{'; '.join(', '.join(f'{s:.2f}' for s in p) for p in seconds[mode])} |" for mode in seconds]
    lines += ["", (f"First compiled pass (compilation included): {compile_seconds:.1f} s. Eager / compiled, median "
              f"pass: **{ratio:.2f}x**.")]
    finish(result, lines, args.out, "compile_layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
