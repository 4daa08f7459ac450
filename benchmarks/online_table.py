"""A markdown table of online runs written by benchmarks/online_curves.py, read from their json files.

For each run: the held-out evaluation before and after (gold reward of one sample per prompt, KL k3 to the
reference, response tokens), the mean training reward of the first and last quarter of the steps, and the
median seconds per step (generation, update).

    python benchmarks/online_table.py results/online/grpo.json results/online/rloo.json > table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def quarter_means(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows if key in r]
    q = max(1, len(values) // 4)
    return statistics.mean(values[:q]), statistics.mean(values[-q:])


def row(path: Path) -> str:
    d = json.loads(path.read_text())
    algo = d["run_command"].split("--algo ")[1].split()[0]
    before, after = d["eval_before"], d["eval_after"]
    first, last = quarter_means(d["per_step"], "reward")
    kl = after.get("eval_kl_k3")
    cells = [
        f"[`{algo}`]({path.name})",
        str(len(d["per_step"])),
        f"{before['eval_reward']:.3f} -> {after['eval_reward']:.3f}",
        "-" if kl is None else f"{kl:.2f}",
        f"{before['eval_response_length']:.1f} -> {after['eval_response_length']:.1f}",
        f"{first:.3f} -> {last:.3f}",
        f"{d['seconds_per_step_median']:.1f} ({d['generation_seconds_median']:.1f} + {d['update_seconds_median']:.1f})",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| algorithm | steps | held-out gold, before -> after | KL k3 after | length before -> after "
          "| training reward, first -> last quarter | s/step (generation + update) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in args.runs:
        print(row(path))


if __name__ == "__main__":
    main()
