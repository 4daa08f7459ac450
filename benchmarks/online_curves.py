"""Real online runs on the default model and a built-in task, with their curves.

Runs `prefopt run --algo <name>` on a built-in task (--data, default builtin:qa) with the bundled model for each name given,
then writes results/online/<name>.json (settings, summary, per-step rows, medians of
generation, judge and update seconds) and results/online/<name>_curves.png (reward, KL
to the reference and response length per step). A name whose json exists is skipped,
so an interrupted list resumes where it stopped.

    python benchmarks/online_curves.py --algo ppo --steps 30
    python benchmarks/online_curves.py --algo grpo dapo rloo --steps 40 \
        --options judge=python:prefopt.tasks.rewards:qa
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r.get("reward") for r in rows], marker=".", label="judge (trained on)")
    if any("gold" in r for r in rows):
        axes[0].plot(steps, [r.get("gold") for r in rows], marker="x", linestyle="--", label="gold (logged)")
    axes[0].set(xlabel="step", ylabel="mean reward of the step's samples", title="reward")
    axes[0].legend(fontsize=8)
    if any("kl" in r for r in rows):
        axes[1].plot(steps, [r.get("kl") for r in rows], marker=".", color="tab:red")
    axes[1].set(xlabel="step", ylabel="KL(policy || reference) per sequence", title="KL")
    axes[2].plot(steps, [r.get("response_length") for r in rows], marker=".", color="tab:green")
    axes[2].set(xlabel="step", ylabel="mean response tokens", title="length")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_one(algo: str, name: str, args) -> None:
    from prefopt.io import atomic_write_json, provenance

    out = Path(args.out)
    if (out / f"{name}.json").exists():
        print(f"{name}: {out / f'{name}.json'} exists, skipped")
        return
    run_dir = ROOT / "runs" / "online" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    options = [f"data={args.data}", f"steps={args.steps}", f"batch_size={args.batch_size}", f"seed={args.seed}",
               "eval_size=32", *args.options]
    cmd = [sys.executable, "-m", "prefopt", "run", "--algo", algo, "--output-dir", str(run_dir), *options]
    subprocess.run(cmd, check=True, cwd=ROOT)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "generation_seconds" in r]  # the training steps (not evaluations)
    summary = json.loads((run_dir / "summary.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    if train_rows:
        plot(train_rows, f"{algo}, smollm2-135m-instruct, {' '.join(options)}", out / f"{name}_curves.png")
    median = lambda key: statistics.median(r[key] for r in train_rows if key in r) if any(key in r for r in train_rows) else None
    atomic_write_json(out / f"{name}.json", {
        "command": " ".join(["python", *sys.argv]),
        "run_command": " ".join(["prefopt", *cmd[3:]]),
        "seconds_per_step_median": summary["seconds_per_step_median"],
        "generation_seconds_median": median("generation_seconds"),
        "judge_seconds_median": median("judge_seconds"),
        "update_seconds_median": median("update_seconds"),
        "eval_before": summary["eval_before"],
        "eval_after": summary["eval_after"],
        "train_last10": summary["train_last10"],
        "per_step": train_rows,
        "peak_rss_mb": summary["peak_rss_mb"],
        "precision": summary["precision"],
        "provenance": provenance(),
    })
    print(json.dumps({k: summary[k] for k in ("eval_before", "eval_after", "seconds_per_step_median")}, indent=1))


def main() -> None:
    from prefopt.core import registry

    online = sorted(n for n in registry.discover() if getattr(registry.get(n), "online", False))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", nargs="+", default=["ppo"], choices=online)
    parser.add_argument("--data", default="builtin:qa", help="the prompts (a built-in task or a prompts file)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", nargs="*", default=[], help="extra key=value options")
    parser.add_argument("--name", default="", help="result file stem, one algorithm only (default: the algorithm)")
    parser.add_argument("--out", default=str(ROOT / "results" / "online"))
    args = parser.parse_args()
    if args.name and len(args.algo) > 1:
        parser.error("--name names one run; give one --algo with it")
    for algo in args.algo:
        run_one(algo, args.name or algo, args)


if __name__ == "__main__":
    main()
