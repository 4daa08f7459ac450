"""Whole processes: `prefopt run --algo dpo` against a plain trl script, from launch to the saved adapter.

What a user waits for and what their machine must hold: interpreter start, imports, model load, tokenisation,
the training steps and saving the LoRA adapter, each trainer in its own process (peak RSS is that process's own,
read by `os.wait4`). Both read the same JSONL of plain-string pairs (`--lengths spread` pairs of
`speed_vs_trl.py`, decoded to text; plain strings get no chat template in either), with the same LoRA, optimizer,
lr, clipping, beta, batch size, max length and steps; each trainer keeps its own defaults otherwise (prefopt's
length-bucketed order and reference without the adapter, gradient checkpointing off; trl's random order,
reference without the adapter, gradient checkpointing on, which DPOConfig defaults to: `--trl-checkpointing off`
turns it off, to compare the two at the same setting).
The runs alternate which goes first, `--reps` times. Their batches differ in order, so per-step losses are not
compared here: `speed_grid.py` checks the two losses agree to 1e-4 on identical batches at each grid point.

    python benchmarks/speed_whole_process.py --batch-size 4 --max-length 256 --steps 10
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def write_pairs(path: Path, model: str, batch: int, length: int, rows: int, seed: int) -> tuple[str, float]:
    """The speed_vs_trl `--lengths spread` pairs, decoded to text; returns the model folder and mean tokens/pair."""
    sys.path.insert(0, str(HERE))
    from speed_vs_trl import Setup, load_pairs

    from prefopt.core.models import resolve_model

    setup = Setup(model=model, batch_size=batch, max_length=length, max_prompt_length=length // 2, lengths="spread",
                  rows=rows, seed=seed)  # fmt: skip
    tokenizer, pairs, _ = load_pairs(setup)
    with path.open("w") as f:
        for p in pairs:
            text = {k: tokenizer.decode(getattr(p, f"{k}_ids")) for k in ("prompt", "chosen", "rejected")}
            f.write(json.dumps(text) + "\n")
    tokens = statistics.fmean(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return resolve_model(setup.model), tokens


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process, which must succeed."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {shlex.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def run_prefopt(model: str, data: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable, "-m", "prefopt", "run", "--algo", "dpo", "--model", model, "--data", str(data),
        "--output-dir", str(out),
        f"steps={args.steps}", f"batch_size={args.batch_size}", f"max_length={args.max_length}",
        f"max_prompt_length={args.max_length // 2}", f"precision={args.precision}", "eval_size=0", "progress=false",
        "warmup_ratio=0", "schedule=constant", f"lr={args.lr}", "lora_r=16", "lora_alpha=32", "lora_dropout=0",
        "seed=0",
    ]  # fmt: skip
    seconds, rss = timed(cmd)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "seconds" in r]
    summary = json.loads((out / "summary.json").read_text())
    return {"trainer": "prefopt", "command": shlex.join(cmd[1:]), "wall_seconds": seconds, "peak_rss_mb": rss,
            "train_seconds": sum(r["seconds"] for r in steps), "losses": [r["loss"] for r in steps],
            "peak_rss_mb_training": summary.get("peak_rss_mb_training"),  # prefopt's own reading, before saving
            "tokens_per_step": [r.get("tokens") for r in steps]}  # fmt: skip


def run_trl(model: str, data: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable, str(HERE / "trl_dpo_plain.py"), "--model", model, "--data", str(data), "--out", str(out),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
        "--lr", str(args.lr), *(["--bf16"] if args.precision == "bf16" else []),
        *(["--no-gradient-checkpointing"] if args.trl_checkpointing == "off" else []),
    ]  # fmt: skip
    seconds, rss = timed(cmd)
    speed = json.loads((out / "speed.json").read_text())
    return {"trainer": "trl", "command": shlex.join(cmd[1:]), "wall_seconds": seconds, "peak_rss_mb": rss,
            "train_seconds": speed["train_seconds"], "losses": speed["losses"]}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model both trainers load (a local folder, e.g. from random_init_model.py)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--trl-checkpointing",
        choices=("default", "off"),
        default="default",
        help="trl's gradient checkpointing: its default (on) or off, as prefopt's default",
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "cpu_whole_process"))
    args = parser.parse_args(argv)

    from prefopt.io import atomic_write_json, atomic_write_text, cpu_model, provenance

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        model, tokens = write_pairs(data, args.model, args.batch_size, args.max_length, args.rows, seed=0)
        for rep in range(args.reps):
            for name in ("prefopt", "trl") if rep % 2 == 0 else ("trl", "prefopt"):
                out = Path(tmp) / f"{name}{rep}"
                run = run_prefopt(model, data, out, args) if name == "prefopt" else run_trl(model, data, out, args)
                if not any(out.rglob("adapter_model.safetensors")):
                    raise SystemExit(f"{name} saved no adapter under {out}")
                runs.append({"rep": rep, **run})
                print(f"rep {rep} {name}: {run['wall_seconds']:.1f} s, {run['peak_rss_mb']:.0f} MB", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["trainer"] == name)

    table = {name: {"wall_seconds": median(name, "wall_seconds"), "train_seconds": median(name, "train_seconds"),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs if r["trainer"] == name)}
             for name in ("prefopt", "trl")}  # fmt: skip
    speed = table["trl"]["wall_seconds"] / table["prefopt"]["wall_seconds"]
    train_speed = table["trl"]["train_seconds"] / table["prefopt"]["train_seconds"]
    memory = table["prefopt"]["peak_rss_mb"] / table["trl"]["peak_rss_mb"]
    command = shlex.join(["python", "benchmarks/speed_whole_process.py", *(sys.argv[1:] if argv is None else argv)])
    record = {"command": command, "settings": vars(args), "pairs_mean_tokens": tokens, "runs": runs, "table": table,
              "whole_process_speed_prefopt_over_trl": speed, "training_speed_prefopt_over_trl": train_speed,
              "peak_rss_prefopt_over_trl": memory, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
              "provenance": provenance()}  # fmt: skip
    out = Path(args.out)
    atomic_write_json(out / "whole_process.json", record)
    lines = [
        (f"# Whole processes: prefopt run vs a plain trl script (batch {args.batch_size}, max length "
        f"{args.max_length}, {args.steps} steps, {args.precision}, model {args.model})"), "",
        "Gradient checkpointing: prefopt off (its default), trl "
        + ("off." if args.trl_checkpointing == "off" else "on (its default)."), "",
        (f"`{command}`; {args.reps} repetitions, alternating which runs first; pairs of {tokens:.0f} tokens on "
        "average (chosen + rejected rows). Wall = launch to saved adapter; training = the steps alone."), "",
        "| | wall s (median) | training s (median) | peak RSS MB (max) |", "| --- | ---: | ---: | ---: |",
        *(f"| {n} | {t['wall_seconds']:.1f} | {t['train_seconds']:.1f} | {t['peak_rss_mb']:.0f} |"
          for n, t in table.items()), "",
        (f"prefopt / trl: whole process {speed:.2f}x as fast, training steps {train_speed:.2f}x, peak RSS "
        f"{memory:.2f}x."), "",
        f"Machine: {record['cpu_model']}, {record['cpu_count']} CPUs; git {record['provenance'].get('git', '')}.",
    ]  # fmt: skip
    atomic_write_text(out / "whole_process.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
