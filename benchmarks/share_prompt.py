"""prefopt's DPO step with each pair's prompt run once (`share_prompt`) against the padded rows, same batches.

The two layouts alternate pass by pass over the same batches in one process (`alternating.py`), fp32 by
default. Also printed: the cells each layout computes per batch (rows x columns of the forward).

    python benchmarks/share_prompt.py --batch-size 4 --max-length 128 --batches 4
    python benchmarks/share_prompt.py --batch-size 8 --max-length 256 --batches 3 --out results/speed/cpu_share_prompt
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

from alternating import add_step_arguments, step_setup, time_settings
from report import finish
from speed_vs_trl import build_prefopt

from prefopt.core.logprobs import host_layout
from prefopt.core.shared_prompt import shared_prompt_layout
from prefopt.io import provenance


def cells(trainer, ids: list[int]) -> tuple[int, int]:
    """(padded cells, shared cells) of one batch's forward."""
    batch = trainer.collate([trainer.examples[i] for i in ids])
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response)
    return batch["input_ids"].numel(), shared.input_ids.numel()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--out", default=None, help="folder for share_prompt.{json,md} (default: print only)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    setup, tokenizer, pairs, batches = step_setup(args, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
        if not trainer.share_prompt:
            raise SystemExit(f"{args.model} cannot share prompts here (see prefopt.core.logprobs.share_prompt_support)")
        sizes = [cells(trainer, ids) for ids in batches]
        layouts = {name: partial(setattr, trainer, "share_prompt", name == "shared") for name in ("padded", "shared")}
        seconds = time_settings(trainer, batches, layouts, args.passes)

    totals = {k: [sum(t) for t in v] for k, v in seconds.items()}
    result = {"setup": vars(setup), "passes": args.passes, "seconds": seconds, "totals": totals,
              "cells_padded_shared": sizes,
              "command": shlex.join(["python", "benchmarks/share_prompt.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# DPO step, prompts run once vs padded rows ({args.model}, batch {args.batch_size}, max length "
             f"{args.max_length}, spread lengths, {args.precision})"), "",
             "| pass | padded s (sum over the batches) | shared s | padded / shared |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {p} | {a:.2f} | {b:.2f} | {a / b:.2f}x |" for p, (a, b) in
              enumerate(zip(totals["padded"], totals["shared"]))]  # fmt: skip
    lines += ["", "Cells per forward (padded rows x columns, shared rows x columns): "
              + ", ".join(f"{a} -> {b}" for a, b in sizes)
              + f"; {sum(b for _, b in sizes) / sum(a for a, _ in sizes):.2f}x in all."]
    finish(result, lines, args.out, "share_prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
