"""prefopt DPO vs trl DPOTrainer over a grid of batch sizes and lengths: one `speed_vs_trl.py` process per point.

Each point is its own process (peak RSS is that point's own) with `--lengths spread` (per-pair lengths drawn like
chat preference data, so batches carry the padding real data does). Resumable: a point whose
`<out>/b<B>_len<L>/dpo_vs_trl.json` exists is not run again; the summary table is rewritten from every point's
file after each point. Points run smallest first, so a stopped grid still has its cheap end.

    python benchmarks/speed_grid.py                                   # batch 4/8/16 x max length 128/256/512
    python benchmarks/speed_grid.py --batch-sizes 4 --lengths 128 --out /tmp/grid_smoke --steps 1 --warmup 1
    python benchmarks/speed_grid.py --max-cells 2048 --steps 3 --check-steps 1   # the points a 24 GiB machine holds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def point_dir(out: Path, batch: int, length: int) -> Path:
    return out / f"b{batch}_len{length}"


def run_point(out: Path, batch: int, length: int, args) -> None:
    cmd = [
        sys.executable, str(HERE / "speed_vs_trl.py"), "--lengths", "spread", "--batch-size", str(batch),
        "--max-length", str(length), "--reps", str(args.reps), "--warmup", str(args.warmup), "--steps",
        str(args.steps), "--check-steps", str(args.check_steps), "--precision", args.precision,
        "--model", args.model, "--out", str(point_dir(out, batch, length)),
    ]  # fmt: skip
    print(f"== batch {batch}, max length {length}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def same_steps_ratio(record: dict) -> tuple[float, list[float]]:
    """trl's total time over prefopt's on the same timed steps (same batches, in order), and step by step.

    With lengths spread, the timed steps differ in size: the two trainers' medians may fall on different
    batches, so the ratio of their medians mixes batch sizes; the ratio of totals does not."""
    ours = [s for rep in record["results"]["prefopt"]["seconds_per_step"] for s in rep]
    theirs = [s for rep in record["results"]["trl"]["seconds_per_step"] for s in rep]
    return sum(theirs) / sum(ours), [t / o for o, t in zip(ours, theirs)]


def summary(out: Path, points: list[tuple[int, int]], goal_speed: float, goal_memory: float) -> str:
    lines = [
        "# prefopt DPO vs trl DPOTrainer: the grid", "",
        (f"Each row: `python benchmarks/speed_vs_trl.py --lengths spread --batch-size B --max-length L ...` (the "
        f"command in each point's `dpo_vs_trl.md`). Goal: >= {goal_speed}x trl's steps/s at <= {goal_memory}x its "
        "memory. Speed: trl's total time over prefopt's on the same timed steps (same batches), then each step's "
        "ratio (the steps differ in length, so the ratio of medians, in each point's own file, mixes batches). "
        "Peak RSS is of one process holding both models (both resident throughout), so its ratio is "
        "pulled towards 1 by the shared weights; 'added' is the peak over the memory at the start of the timed "
        "steps, what the training steps themselves need."), "",
        ("| batch | max length | tokens/step | prefopt s/step (mean) | trl s/step (mean) | steps/s ratio | per step "
         "| peak RSS ratio | added ratio | loss check | goal met | git |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | --- | --- |",
    ]  # fmt: skip
    for batch, length in points:
        path = point_dir(out, batch, length) / "dpo_vs_trl.json"
        if not path.exists():
            lines.append(f"| {batch} | {length} | | not run | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        q, ours, theirs, check = r["ratios"], r["results"]["prefopt"], r["results"]["trl"], r["loss_check"]
        speed, per_step = same_steps_ratio(r)
        mean = lambda x: sum(s for rep in x["seconds_per_step"] for s in rep) / x["timed_steps"]
        added = q["peak_memory_added_prefopt_over_trl"]
        met = speed >= goal_speed and added is not None and added <= goal_memory
        lines.append(
            f"| {batch} | {length} | {ours['tokens_per_step_mean']:.0f} | {mean(ours):.2f} | {mean(theirs):.2f} | "
            f"{speed:.2f}x | {', '.join(f'{x:.2f}' for x in per_step)} | {q['peak_memory_prefopt_over_trl']:.2f}x | "
            + (f"{added:.2f}x" if added is not None else "-") + " | "
            + (f"{check['max_abs_diff']:.1e}" if check else "skipped")
            + f" | {'yes' if met else 'no'} | {r['provenance'].get('git', '')} |"
        )
    first = next((point_dir(out, b, n) / "dpo_vs_trl.json" for b, n in points
                  if (point_dir(out, b, n) / "dpo_vs_trl.json").exists()), None)
    if first is not None:
        r = json.loads(first.read_text())
        m = r["machine"]
        lines += ["", (f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {r['setup']['precision']}; "
                  f"versions {m['versions']}.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--check-steps", type=int, default=2)
    parser.add_argument("--max-cells", type=int, default=0,
                        help="leave out points whose batch x max length exceeds this (0: none): they stay 'not run' "
                        "rows, e.g. 2048 on a 24 GiB machine, where trl's steps at 8 x 512 need about 29 GB")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "cpu_grid"))
    args = parser.parse_args(argv)

    from prefopt.io import atomic_write_text

    out = Path(args.out)
    points = sorted(((b, n) for b in args.batch_sizes for n in args.lengths), key=lambda bn: (bn[0] * bn[1], bn))
    for batch, length in points:
        if args.max_cells and batch * length > args.max_cells:
            continue
        if not (point_dir(out, batch, length) / "dpo_vs_trl.json").exists():
            run_point(out, batch, length, args)
        atomic_write_text(out / "grid.md", summary(out, points, 2.0, 0.8))
    print((out / "grid.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
