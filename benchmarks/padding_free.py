"""Padded vs padding-free batches: seconds per DPO step and peak memory of whole `prefopt run` processes.

Each configuration is its own process (peak RSS is that run's own), DPO + LoRA on the bundled model, on pairs
with a realistic spread of lengths (prompts of 8-80 words, replies of 4-60: the sequences of one batch differ,
so a padded batch carries padding even after length bucketing). `padding_free=off` and `on` alternate, `--reps`
times each; the first `--warmup` steps of a run are excluded. Both runs set `share_prompt=false` (unless
`--shared`), so that `off` is the padded rows (a pair batch's other layout, each prompt once, is
`benchmarks/share_prompt.py`'s). On a CPU `on` packs the tokens and attends each row by itself; elsewhere,
without flash-attention, attention runs over the whole packed sequence with a block-diagonal mask. Both runs of
a repetition train on the same batches from the same seed, so their per-step losses must agree: in fp32 every
step's to 1e-4; in bf16, where matrix products of other shapes round differently and the difference grows
through the updates, the first step's to 1e-2 (the largest difference over all steps is reported). The script
stops if they do not.

With `--shared` both runs share each pair's prompt (`share_prompt=true`, the CPU default for pair objectives)
and `off` / `on` are `padding_free=false` / `auto`: the shared rows padded against packed into one sequence
attended span by span (what a CPU run does).

    python benchmarks/padding_free.py                          # batch 8, max length 256, 12 steps, 2 reps
    python benchmarks/padding_free.py --out results/speed/cpu_padding_free
    python benchmarks/padding_free.py --shared --out results/speed/cpu_padding_free_shared
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright", "stars", "watch", "quietly", "near", "old", "stone", "walls", "and", "rivers"]  # fmt: skip


def write_pairs(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    with path.open("w") as f:
        for i in range(n):
            chosen = words(4, 60)
            f.write(json.dumps({"prompt": f"{i}: {words(8, 80)}", "chosen": chosen, "rejected": chosen + " no"}) + "\n")


def run_one(data: Path, out: Path, mode: str, args) -> dict:
    cmd = [
        sys.executable, "-m", "prefopt", "run", "--algo", "dpo", "--data", str(data), "--output-dir", str(out),
        f"steps={args.steps}", f"batch_size={args.batch_size}", f"max_length={args.max_length}",
        f"max_prompt_length={args.max_length // 2}", f"precision={args.precision}", "eval_size=8",
        "progress=false", "warmup_ratio=0", "schedule=constant", "lr=1e-4",
        *((f"padding_free={'auto' if mode == 'on' else 'false'}", "share_prompt=true") if args.shared else
          (f"padding_free={mode == 'on'}", "share_prompt=false")),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "seconds" in r]
    seconds = [r["seconds"] for r in steps][args.warmup :]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "padding_free": mode,
        "seconds_per_step_median": statistics.median(seconds),
        "seconds_per_step_min": min(seconds),
        "seconds_per_step_max": max(seconds),
        "tokens_per_step": statistics.mean(r["tokens"] for r in steps[args.warmup :]),
        "peak_rss_mb": summary["peak_rss_mb"],
        "losses": [r["loss"] for r in steps],
        "timed_steps": len(seconds),
        "command": " ".join(cmd[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", action="store_true", help="shared-prompt rows padded (off) vs packed (on)")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "cpu_padding_free"))
    args = parser.parse_args()

    from prefopt.io import atomic_write_json, atomic_write_text, provenance

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        write_pairs(data, n=400, seed=args.seed)
        for rep in range(args.reps):
            pair = {}
            for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):  # alternate which goes first
                pair[mode] = run_one(data, Path(tmp) / f"{mode}{rep}", mode, args)
                runs.append({"rep": rep, **pair[mode]})
            checked = zip(pair["on"]["losses"], pair["off"]["losses"])
            if args.precision != "fp32":  # bf16, or auto (bf16 where the CPU has it): the first step only
                checked = [next(checked)]
            for a, b in checked:
                if abs(a - b) > (1e-4 if args.precision == "fp32" else 1e-2):
                    raise SystemExit(f"repetition {rep}: padding-free loss {a} differs from the padded {b}")
    off = statistics.median(r["seconds_per_step_median"] for r in runs if r["padding_free"] == "off")
    on = statistics.median(r["seconds_per_step_median"] for r in runs if r["padding_free"] == "on")
    rss_off = max(r["peak_rss_mb"] for r in runs if r["padding_free"] == "off")
    rss_on = max(r["peak_rss_mb"] for r in runs if r["padding_free"] == "on")
    result = {"settings": vars(args), "provenance": provenance(), "runs": runs,
              "padded_seconds_per_step": off, "padding_free_seconds_per_step": on,
              "padding_free_speedup": off / on, "padded_peak_rss_mb": rss_off, "padding_free_peak_rss_mb": rss_on,
              "max_loss_difference": max(abs(a - b) for rep in range(args.reps) for a, b in zip(
                  *(r["losses"] for r in runs if r["rep"] == rep)))}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "padding_free.json", result)
    lines = [
        "# Padded vs padding-free DPO steps", "",
        (f"`python benchmarks/padding_free.py {' '.join(sys.argv[1:])}`; {args.reps} repetitions alternating, "
         f"{args.steps} steps each ({args.warmup} warm-up excluded), batch {args.batch_size} pairs, max length "
         f"{args.max_length}, precision {args.precision}; per-step losses of the two modes differ by at most "
         f"{result['max_loss_difference']:.1e}."), "",
        "| padding_free | s/step (median of runs) | peak RSS MB (max) |", "| --- | --- | --- |",
        f"| off ({'shared-prompt' if args.shared else 'padded'} rows, length-bucketed) | {off:.3f} | {rss_off:.0f} |",
        f"| on (packed tokens) | {on:.3f} | {rss_on:.0f} |", "",
        f"Padding-free runs at {off / on:.2f}x the padded steps/s.", "",
        f"Machine: {result['provenance'].get('cpu_model', '')}; git {result['provenance'].get('git', '')}.",
    ]  # fmt: skip
    atomic_write_text(out / "padding_free.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
