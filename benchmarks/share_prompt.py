"""prefopt's DPO step with each pair's prompt run once (`share_prompt`) against the padded rows, same batches.

Four layouts alternate pass by pass over the same batches in one process (`alternating.py`), fp32 by
default: `padded` (2B rows of prompt + reply), `padding_free` (those rows' real tokens as one sequence, attended row by
row: a CPU run's `padding_free`), `shared` (one [prompt, chosen, rejected] row per pair) and `packed` (the
shared rows' real tokens as one sequence, attended span by span: what a CPU run does).
Also printed: the cells each layout computes per batch (rows x columns of the forward; packed: real tokens).

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

from prefopt.core.logprobs import attends_spans, host_layout
from prefopt.core.shared_prompt import shared_prompt_layout
from prefopt.io import provenance

LAYOUTS = ("padded", "padding_free", "shared", "packed")


def cells(trainer, ids: list[int]) -> tuple[int, int, int, int]:
    """The cells each of LAYOUTS computes in one batch's forward: padded rows x columns, their real tokens,
    shared rows x columns, their real tokens."""
    batch = trainer.collate([trainer.examples[i] for i in ids])
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response, packed=True)
    return (batch["input_ids"].numel(), int(batch["attention_mask"].sum()), shared.input_ids.numel(),
            shared.real.numel())


def use_layout(trainer, name: str) -> None:
    trainer.share_prompt = name in ("shared", "packed")
    trainer.pack_shared_prompts = name == "packed"
    trainer.padding_free = name == "padding_free"


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
        if not (trainer.share_prompt and attends_spans(trainer.model)):
            raise SystemExit(f"{args.model} cannot share prompts and pack them here (see prefopt.core.logprobs."
                             "share_prompt_support and attends_spans)")
        sizes = [cells(trainer, ids) for ids in batches]
        layouts = {name: partial(use_layout, trainer, name) for name in LAYOUTS}
        seconds = time_settings(trainer, batches, layouts, args.passes)

    totals = {k: [sum(t) for t in v] for k, v in seconds.items()}
    result = {"setup": vars(setup), "passes": args.passes, "seconds": seconds, "totals": totals,
              "cells": {name: [s[i] for s in sizes] for i, name in enumerate(LAYOUTS)},
              "command": shlex.join(["python", "benchmarks/share_prompt.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# DPO step, prompts run once vs padded rows ({args.model}, batch {args.batch_size}, max length "
              f"{args.max_length}, spread lengths, {args.precision})"), "",
             "Seconds per pass (the sum over the batches), and each layout's speed over the padded rows':", "",
             "| pass | " + " | ".join(f"{name} s" for name in LAYOUTS) + " | "
             + " | ".join(f"{name} / padded" for name in LAYOUTS[1:]) + " |",
             "| ---: |" + " ---: |" * (2 * len(LAYOUTS) - 1)]
    for p in range(args.passes):
        row = [totals[name][p] for name in LAYOUTS]
        lines.append(f"| {p} | " + " | ".join(f"{t:.2f}" for t in row) + " | "
                     + " | ".join(f"{row[0] / t:.2f}x" for t in row[1:]) + " |")
    lines += ["", "Cells per forward (" + " -> ".join(LAYOUTS) + "): "
              + ", ".join(" -> ".join(str(c) for c in s) for s in sizes) + "; over the padded rows' cells: "
              + ", ".join(f"{name} {sum(s[i] for s in sizes) / sum(s[0] for s in sizes):.2f}x"
                          for i, name in enumerate(LAYOUTS) if i) + "."]
    finish(result, lines, args.out, "share_prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
