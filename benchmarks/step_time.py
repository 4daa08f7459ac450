"""Seconds per training step and peak memory: DPO + LoRA on the default model.

Each configuration runs as its own `prefopt run` process (so peak RSS is that
run's own), on synthetic pairs whose prompt + response fill `max_length`
tokens, the worst case for that length. The first `--warmup` steps are
excluded; the median and the spread (min-max) of the rest are reported.

    python benchmarks/step_time.py                 # batch 4, max length 256, fp32 and bf16
    python benchmarks/step_time.py --steps 12 --out results/step_time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright", "stars",
         "watch", "quietly"]


def write_pairs(path: Path, n: int, prompt_words: int, response_words: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(prompt_words))
            chosen = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(response_words))
            rejected = " ".join(reversed(chosen.split()[1:])) + " no"  # same length, never identical
            f.write(json.dumps({"prompt": f"{i}: {prompt}", "chosen": chosen, "rejected": rejected}) + "\n")


def run_one(data: Path, out: Path, precision: str, args) -> dict:
    cmd = [
        sys.executable, "-m", "prefopt", "run", "--algo", "dpo", "--data", str(data), "--output-dir", str(out),
        f"steps={args.steps}", f"batch_size={args.batch_size}", f"max_length={args.max_length}",
        f"max_prompt_length={args.max_length // 2}", f"precision={precision}", "eval_size=8", "progress=false",
        "warmup_ratio=0", "schedule=constant", "lr=1e-4",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if "seconds" in r][args.warmup :]
    tokens = [r["tokens"] for r in rows if "tokens" in r][args.warmup :]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "precision": precision,
        "seconds_per_step_median": statistics.median(seconds),
        "seconds_per_step_min": min(seconds),
        "seconds_per_step_max": max(seconds),
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_second": statistics.mean(tokens) / statistics.median(seconds),
        "peak_rss_mb": summary["peak_rss_mb"],
        "truncation": summary["truncation"],
        "timed_steps": len(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", default=str(ROOT / "results" / "step_time"))
    args = parser.parse_args()

    from prefopt.io import atomic_write_json, provenance

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        # Long enough that truncation makes every sequence exactly max_length tokens:
        # the prompt keeps its last max_length/2, the response its first max_length/2.
        write_pairs(data, n=200, prompt_words=args.max_length // 2, response_words=args.max_length // 2)
        for precision in args.precisions.split(","):
            results.append(run_one(data, Path(tmp) / f"run-{precision}", precision, args))
            print(json.dumps(results[-1]), flush=True)

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": "smollm2-135m-instruct (LoRA r=16, all linear layers)",
        "algo": "dpo",
        "batch_size_pairs": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup_steps_excluded": args.warmup,
        "threads": os.cpu_count(),
        "results": results,
        "provenance": provenance(),
    }
    out = Path(args.out)
    atomic_write_json(out / "dpo_lora_step_time.json", record)
    print(f"wrote {out / 'dpo_lora_step_time.json'}")


if __name__ == "__main__":
    main()
