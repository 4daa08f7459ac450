"""prefopt's DPO step with transformers' per-layer element-wise code compiled (`torch.compile`) against eager.

Outside its matrix products a prefopt step on a CPU spends most of its time in attention and in transformers'
element-wise layer code (RMSNorm, the SiLU-gated MLP, RoPE; `benchmarks/step_flops.py`, docs/speed.md), which
eager PyTorch runs one operation at a time. This compiles each decoder layer's two RMSNorms and its MLP
(`module.compile(dynamic=True)`, so that the batches' varying lengths share one graph) and times the same
batches eager and compiled in turn (`alternating.py`), after one compiled pass that pays the compilation:

    python benchmarks/compile_layers.py --model smollm2-135m-instruct --precision fp32 --batch-size 8 \\
        --max-length 128 --batches 4 --passes 3 --out results/speed/cpu_compile_layers_fp32
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
from alternating import add_step_arguments, step_setup, time_settings
from report import finish
from speed_vs_trl import build_prefopt

from prefopt.io import provenance


def _compiled_modules(model) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [m for layer in base.model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm,
                                                       layer.mlp)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    setup, tokenizer, pairs, batches = step_setup(args, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        modules = _compiled_modules(trainer.model)

        def eager() -> None:
            for m in modules:
                m._compiled_call_impl = None  # back to the module's eager forward

        def compiled() -> None:
            for m in modules:
                m.compile(dynamic=True)

        compiled()
        start = time.perf_counter()
        for ids in batches:  # compilation, and the optimizer's state
            trainer.train_step(ids)
        compile_seconds = time.perf_counter() - start
        seconds = time_settings(trainer, batches, {"eager": eager, "compiled": compiled}, args.passes)
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
