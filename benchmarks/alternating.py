"""Two settings of prefopt's own DPO step timed against each other over the same batches, pass by pass.

One process, one trainer (`speed_vs_trl.py`'s setup: the bundled model, LoRA r=16, `--lengths spread` pairs), the
same batches in the same order for every setting; the settings alternate pass by pass (`--passes` of each, after
one untimed step), so drift on the machine falls on all of them. The trainer keeps training across passes (the
step's cost does not depend on the weights). Used by share_prompt.py and cpu_attention.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from speed_vs_trl import Setup, batch_order, load_pairs


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every alternating benchmark takes."""
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="batches per pass")
    parser.add_argument("--passes", type=int, default=2, help="timed passes of each setting, alternating")


def step_setup(args: argparse.Namespace, precision: str) -> tuple[Setup, object, list, list[list[int]]]:
    """(setup, tokenizer, pairs, the first `args.batches` batches) for add_step_arguments' options: spread
    lengths, max prompt length half the max length, on the CPU."""
    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=precision, device="cpu", lengths="spread")
    tokenizer, pairs, _ = load_pairs(setup)
    return setup, tokenizer, pairs, batch_order(pairs, setup, args.batches)


def time_settings(trainer, batches: list[list[int]], settings: dict[str, Callable[[], None]], passes: int
                  ) -> dict[str, list[list[float]]]:  # fmt: skip
    """{setting: per pass, per batch seconds}: one untimed step, then `passes` rounds in which each setting is
    applied (its callable) and the batches are trained in order."""
    trainer.train_step(batches[0])  # untimed: optimizer state, first allocations
    seconds: dict[str, list[list[float]]] = {name: [] for name in settings}
    for p in range(passes):
        for name, apply in settings.items():
            apply()
            times = []
            for ids in batches:
                started = time.perf_counter()
                trainer.train_step(ids)
                times.append(time.perf_counter() - started)
            seconds[name].append(times)
            print(f"pass {p} {name}: {' '.join(f'{t:.2f}' for t in times)} s, total {sum(times):.2f}", flush=True)
    return seconds
