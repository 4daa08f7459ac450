"""prefopt's DPO step with its LoRA Linears fused (`prefopt.core.lora_linear`) against peft's own LoRA forward.

The settings alternate pass by pass over the same batches in one process (`alternating.py`): the same trainer,
its LoRA layers switched between peft's `lora.Linear` and `FusedLoraLinear` (with the q and k projections
returning float32 for RoPE, prefopt's default on a CPU, and without) before each pass.

    python benchmarks/fused_lora.py --batch-size 8 --max-length 256 --batches 4 --passes 2
    python benchmarks/fused_lora.py --model /tmp/llama-1b --batch-size 2 --max-length 256 --batches 3
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

from alternating import add_step_arguments, time_settings
from report import finish
from speed_vs_trl import Setup, batch_order, build_prefopt, load_pairs

from prefopt.core.models import pick_device, resolve_precision
from prefopt.io import provenance


def switch_to(model, fused: bool, float32_qk: bool = True) -> None:
    """Every LoRA Linear of the model (fused or peft's) made peft's, then with fused prefopt's fused one, its q and
    k projections returning the compute dtype when float32_qk is False."""
    from peft.tuners.lora import Linear as PeftLoraLinear

    from prefopt.core.lora_linear import FusedLoraLinear, use_fused_lora_linears

    for module in model.modules():
        if type(module) in (PeftLoraLinear, FusedLoraLinear):
            module.__class__ = PeftLoraLinear
    if fused:
        use_fused_lora_linears(model)
        if not float32_qk:
            for module in model.modules():
                if type(module) is FusedLoraLinear:
                    module.float32_output = False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--out", default=None, help="folder for fused_lora.{json,md} (default: print only)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    device = str(pick_device())
    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=resolve_precision(args.precision, device),
                  device=device, lengths="spread")
    tokenizer, pairs, _ = load_pairs(setup)
    batches = batch_order(pairs, setup, args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        # switch_to imports peft after the model's loading has (quietly)
        settings = {"peft": lambda: switch_to(trainer.model, fused=False),
                    "fused, q/k in the compute dtype": lambda: switch_to(trainer.model, fused=True, float32_qk=False),
                    "fused": lambda: switch_to(trainer.model, fused=True)}
        seconds = time_settings(trainer, batches, settings, args.passes)

    totals = {k: [sum(t) for t in v] for k, v in seconds.items()}
    result = {"setup": vars(setup), "passes": args.passes, "seconds": seconds, "totals": totals,
              "command": shlex.join(["python", "benchmarks/fused_lora.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# DPO step, fused LoRA Linears vs peft's forward ({args.model}, batch {args.batch_size}, max "
              f"length {args.max_length}, spread lengths, {setup.precision}, {device})"), "",
             ("The same batches in each pass (seconds, their sum); 'fused' returns q and k in float32 on a CPU for "
              "models whose RoPE follows them (prefopt's default), the middle column in the compute dtype."), "",
             "| pass | peft | fused, q/k in the compute dtype | fused | peft / fused |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {p} | {a:.2f} | {b:.2f} | {c:.2f} | {a / c:.2f}x |" for p, (a, b, c) in
              enumerate(zip(totals["peft"], totals["fused, q/k in the compute dtype"], totals["fused"]))]  # fmt: skip
    finish(result, lines, args.out, "fused_lora")
    return 0


if __name__ == "__main__":
    sys.exit(main())
