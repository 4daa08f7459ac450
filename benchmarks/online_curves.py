"""A real online run on the default model and built-in task, with its curves.

Runs `prefopt run --algo ppo` (or rlaif) on builtin:qa with the bundled model,
then writes results/online/<name>.json (settings, summary, per-step medians of
generation and update seconds) and, for PPO, results/online/<name>_curves.png
(reward and KL per step).

    python benchmarks/online_curves.py --algo ppo --steps 30
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
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, [r["reward"] for r in rows], marker=".")
    axes[0].set(xlabel="step", ylabel="mean gold reward of rollouts", title="reward")
    axes[1].plot(steps, [r["kl"] for r in rows], marker=".", color="tab:red")
    axes[1].set(xlabel="step", ylabel="KL(policy || reference) per sequence", title="KL")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="ppo", choices=["ppo", "rlaif"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", nargs="*", default=[], help="extra key=value options")
    parser.add_argument("--name", default="", help="result file stem (default: the algorithm)")
    parser.add_argument("--out", default=str(ROOT / "results" / "online"))
    args = parser.parse_args()
    from prefopt.io import atomic_write_json, provenance

    name = args.name or args.algo
    run_dir = ROOT / "runs" / "online" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    options = [f"steps={args.steps}", f"batch_size={args.batch_size}", f"seed={args.seed}", "eval_size=32", *args.options]
    cmd = [sys.executable, "-m", "prefopt", "run", "--algo", args.algo, "--output-dir", str(run_dir), *options]
    subprocess.run(cmd, check=True, cwd=ROOT)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "kl" in r or "tie_rate" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve_rows = [r for r in train_rows if "reward" in r and ("kl" in r)]
    if curve_rows:
        plot(curve_rows, f"{args.algo} on builtin:qa, smollm2-135m-instruct, {' '.join(options)}", out / f"{name}_curves.png")
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


if __name__ == "__main__":
    main()
