"""PPO step time: seconds generating and updating per step, and peak RSS, of whole `prefopt run --algo ppo` runs.

Each run is its own process: LoRA PPO on the bundled model with the `gold:qa` rule, 8 prompts per step, 32 new
tokens, 4 PPO epochs of one minibatch (the defaults), fp32, no held-out evaluation. The first `--warmup` steps are
excluded; the medians of `generation_seconds` and `update_seconds` (logged by every PPO step) are reported. To
compare code versions, pass each checkout with `--source` (its folder is put first on PYTHONPATH; a git clone
needs `ln -s ../algorithms prefopt/algorithms` to import as installed); runs alternate between sources.

    python benchmarks/ppo_step_time.py
    python benchmarks/ppo_step_time.py --source /tmp/before --source /tmp/after --reps 2 --out results/speed/cpu_ppo_step
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_version(source: str) -> str:
    where = source or str(ROOT)
    done = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                          text=True)
    return done.stdout.strip()


def run_one(source: str, out: Path, args) -> dict:
    cmd = [
        sys.executable, "-m", "prefopt", "run", "--algo", "ppo", "--output-dir", str(out), f"steps={args.steps}",
        f"batch_size={args.batch_size}", f"max_new_tokens={args.max_new_tokens}", f"ppo_epochs={args.ppo_epochs}",
        "precision=fp32", "eval_size=0", "progress=false", "seed=0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": source} if source else None
    subprocess.run(cmd, check=True, cwd=source or ROOT, env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "update_seconds" in r][args.warmup :]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "source": source or str(ROOT), "git": git_version(source), "command": shlex.join(cmd[1:]),
        "generation_seconds": statistics.median(r["generation_seconds"] for r in steps),
        "update_seconds": statistics.median(r["update_seconds"] for r in steps),
        "peak_rss_mb": summary.get("peak_rss_mb"), "timed_steps": len(steps),
        "losses": [r["loss"] for r in rows if "update_seconds" in r],
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", default=[], help="a checkout to run (repeatable)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for ppo_step_time.{json,md} (default: print only)")
    args = parser.parse_args(argv)

    from prefopt.io import atomic_write_json, atomic_write_text, cpu_model

    sources = args.source or [""]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = sources if rep % 2 == 0 else sources[::-1]
            for k, source in enumerate(order):
                run = run_one(source, Path(tmp) / f"r{rep}_{k}", args)
                runs.append({"rep": rep, **run})
                print(f"{run['git']}: generation {run['generation_seconds']:.2f} s, update "
                      f"{run['update_seconds']:.2f} s, {run['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    command = shlex.join(["python", "benchmarks/ppo_step_time.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        (f"# PPO step time ({args.batch_size} prompts x {args.max_new_tokens} new tokens, {args.ppo_epochs} epochs, "
        "LoRA, fp32)"), "", f"`{command}`; {args.steps} steps per run, the first {args.warmup} excluded; medians.", "",
        "| code | rep | generation s/step | update s/step | peak RSS MB |", "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {r['git']} | {r['rep']} | {r['generation_seconds']:.2f} | {r['update_seconds']:.2f} | "
          f"{r['peak_rss_mb']:.0f} |" for r in runs), "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs.",
    ]  # fmt: skip
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "ppo_step_time.json", {"command": command, "settings": vars(args), "runs": runs,
                                                       "cpu_model": cpu_model(), "cpu_count": os.cpu_count()})
        atomic_write_text(out / "ppo_step_time.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
