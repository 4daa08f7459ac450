"""Split a speed_vs_trl run's step times by whether the process had met the batch's padded length before.

On a GPU, attention through cuDNN (PyTorch's SDPA on Hopper) builds an execution plan for each new shape
and caches it for the process; a step whose (2B, T) batch has a length T no earlier step had pays that
build on the host. speed_vs_trl runs both trainers in one process on the same batches, prefopt's phase
first in each repetition, so trl meets every length after prefopt has. This script replays a run's batch
order (the same pairs, lengths and seed, re-derived from the result's setup), marks each timed step new or
seen, and gives each trainer's median step time on each kind:

    python benchmarks/shape_split.py results/speed/h200_grid/1b_b4/dpo_vs_trl.json --tokenizer smollm2-135m-instruct

`--tokenizer` names a model with the run's tokenizer when the run's model folder is not here (the random-init
models of benchmarks/gpu_speed.sh carry SmolLM2's tokenizer). The loss check's fp32 steps run before the timed
ones and are counted as meeting their lengths too (an approximation: fp32 attention may not use cuDNN).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from dataclasses import fields, replace
from pathlib import Path

from report import finish
from speed_vs_trl import Setup, batch_order, load_pairs

from prefopt.io import provenance
from prefopt.training.inputs import PairInputs


def padded_lengths(setup: Setup, n_batches: int) -> list[int]:
    """T of each of the run's first n_batches (2B, T) batches: the longest prompt + reply in the batch."""
    _, pairs, _ = load_pairs(setup)
    batches = batch_order(pairs, setup, n_batches)
    m = setup.pad_to_multiple_of
    longest = [max(PairInputs().length(pairs[i]) for i in b) for b in batches]
    return [-(-t // m) * m for t in longest]  # rounded up as --pad-to-multiple-of widens them


def split(record: dict, lengths: list[int]) -> dict:
    """Each trainer's timed steps split into new-length and seen-length ones, replaying the run's order; and
    the other trainer's times on the same steps (the same batches), for a like-for-like comparison."""
    protocol = record["protocol"]
    warmup, steps, reps = protocol["warmup_steps"], protocol["timed_steps"], protocol["reps"]
    phase = warmup + steps
    check_steps = (record.get("loss_check") or {}).get("steps", 0)
    seen = set(lengths[:check_steps])
    order = record.get("phase_order") or [["prefopt", "trl"]] * reps
    kind: dict = {"prefopt": [], "trl": []}  # per timed step: "new" or "seen", in the results' order
    for rep in range(reps):
        for name in order[rep]:
            for k in range(phase):
                t = lengths[rep * phase + k]
                if k >= warmup:
                    kind[name].append("seen" if t in seen else "new")
                seen.add(t)
    times = {name: [x for rep in record["results"][name]["seconds_per_step"] for x in rep] for name in kind}
    other = {"prefopt": "trl", "trl": "prefopt"}

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    result: dict = {}
    for name, kinds in kind.items():
        for part in ("new", "seen"):
            steps_of = [i for i, k in enumerate(kinds) if k == part]
            result.setdefault(name, {})[part] = {
                "steps": len(steps_of),
                "median_s": median([times[name][i] for i in steps_of]),
                f"{other[name]}_same_steps_median_s": median([times[other[name]][i] for i in steps_of]),
            }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="speed_vs_trl.py result files (dpo_vs_trl.json)")
    parser.add_argument("--tokenizer", default=None, help="model whose tokenizer the run used, if its model is gone")
    parser.add_argument("--out", default=None, help="folder for shape_split.{json,md} (default: print only)")
    args = parser.parse_args(argv)
    splits = {}
    lines = [("| run | prefopt s/step on lengths new to the process (steps) | trl on those steps | prefopt on lengths "
             "met before (steps) | trl on those steps | steps/s prefopt / trl on them |"),
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for path in args.results:
        record = json.loads(Path(path).read_text())
        known = {f.name for f in fields(Setup)}
        setup = Setup(**{k: v for k, v in record["setup"].items() if k in known})
        if args.tokenizer:
            setup = replace(setup, model=args.tokenizer)
        protocol = record["protocol"]
        lengths = padded_lengths(setup, protocol["reps"] * (protocol["warmup_steps"] + protocol["timed_steps"]))
        result = split(record, lengths)
        splits[path] = result

        new, seen = result["prefopt"]["new"], result["prefopt"]["seen"]

        def cell(part: dict, key: str) -> str:
            return f"{part[key]:.3f}" + (f" ({part['steps']})" if key == "median_s" else "") if part["steps"] else "-"

        ratio = (f"{seen['trl_same_steps_median_s'] / seen['median_s']:.2f}x" if seen["steps"] else "-")
        lines.append(f"| {Path(path).parent.name} | {cell(new, 'median_s')} | {cell(new, 'trl_same_steps_median_s')} | "
                     f"{cell(seen, 'median_s')} | {cell(seen, 'trl_same_steps_median_s')} | {ratio} |")
    command = shlex.join(["python", "benchmarks/shape_split.py", *(sys.argv[1:] if argv is None else argv)])
    finish({"splits": splits, "command": command, "provenance": provenance()}, lines, args.out, "shape_split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
