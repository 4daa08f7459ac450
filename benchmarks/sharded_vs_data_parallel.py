"""FSDP (sharded) against data-parallel training: seconds per step, peak memory, final held-out metrics.

Runs the same `prefopt run` twice in N processes (default 2), once data-parallel
(`--num-processes N`) and once sharded (`--num-processes N --fsdp`), one after the
other, and reads both run summaries: median seconds per step, process 0's peak
resident memory over training (`peak_rss_mb_training`, before the final evaluation
and export) and over the whole run, and the final held-out loss and preference
accuracy (they should agree: the two modes compute the same update).

    python benchmarks/sharded_vs_data_parallel.py                       # DPO, full fine-tuning, bundled model
    python benchmarks/sharded_vs_data_parallel.py --out /tmp/sharded -- adapter=lora steps=2

Options after `--` go to both runs (they override the defaults below).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from prefopt.io import atomic_write_json, atomic_write_text, provenance

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ["adapter=full", "steps=4", "batch_size=2", "grad_accum=2", "max_length=256", "progress=false",
            "eval_every=0", "save_every=0", "seed=0"]


def run_mode(algo: str, processes: int, sharded: bool, options: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "prefopt", "run", "--algo", algo, "--output-dir", str(out), *DEFAULTS, *options,
           "--num-processes", str(processes), *(["--fsdp"] if sharded else [])]
    print("$", shlex.join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"sharded_vs_data_parallel: run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    after = summary["eval_after"]
    return {
        "mode": "fsdp" if sharded else "data-parallel",
        "seconds_per_step_median": summary["seconds_per_step_median"],
        "peak_rss_mb_training": summary["peak_rss_mb_training"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "eval_loss": after.get("eval_loss"),
        "eval_pref_accuracy": after.get("eval_pref_accuracy"),
        "reference": summary["reference"],
        "device": summary["device"],
        "precision": summary["precision"],
    }


def as_markdown(result: dict) -> str:
    lines = [
        (f"# FSDP vs data-parallel ({result['algo']}, {result['processes']} processes, {result['rows'][0]['device']}, "
        f"{result['rows'][0]['precision']})"),
        "",
        (f"Options: `{' '.join(result['options'])}`. Memory: process 0's peak resident set "
        "(training = before the final evaluation and export)."),
        "",
        "| mode | s/step median | peak RSS training MB | peak RSS run MB | eval loss | eval pref accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | {r['seconds_per_step_median']:.2f} | {r['peak_rss_mb_training']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['eval_loss']:.4f} | {r['eval_pref_accuracy']:.3f} |")
    p = result["provenance"]
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items() if v)
    lines += ["", f"`{result['command']}`", "",
              (f"Machine: {p['cpu_model']}, {p['cpu_count']} CPUs{', ' + p['cuda'] if p['cuda'] else ''}; "
              f"{versions}; git {p['git']}"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="dpo")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "cpu_sharded_vs_data_parallel"))
    parser.add_argument("options", nargs="*", help="key=value options for both runs (after --)")
    args = parser.parse_args(argv)
    options = [*DEFAULTS, *args.options]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_mode(args.algo, args.processes, sharded, args.options, Path(tmp) / name)
                for sharded, name in ((False, "dp"), (True, "fsdp"))]
    result = {
        "algo": args.algo,
        "processes": args.processes,
        "options": options,
        "rows": rows,
        "command": shlex.join(["python", "benchmarks/sharded_vs_data_parallel.py", *(argv or sys.argv[1:])]),
        "provenance": provenance(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sharded_vs_data_parallel.json", result)
    atomic_write_text(out / "sharded_vs_data_parallel.md", as_markdown(result))
    print(as_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
