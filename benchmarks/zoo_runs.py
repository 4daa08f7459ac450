"""One real run of every registered offline algorithm on the same model, data, steps, batch and seed.

Each algorithm runs as its own `prefopt run` process into runs/zoo/<algo>
(not committed: adapters); cells already finished (a summary.json there) are
skipped, so a killed sweep resumes. Writes results/zoo/zoo.json and
results/zoo/zoo.md (a table).

    python benchmarks/zoo_runs.py                      # all built-in algorithms, defaults below
    python benchmarks/zoo_runs.py --algos dpo,kto --steps 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def builtin_algorithms() -> list[str]:
    from prefopt.core import registry

    return sorted(
        name for name, entries in registry.discover().items()
        if entries[0].package == "prefopt" and not registry.get(name).online
    )


def run_cell(algo: str, out: Path, args) -> dict:
    if not (out / "summary.json").exists():
        shutil.rmtree(out, ignore_errors=True)  # an unfinished cell starts over
        cmd = [
            sys.executable, "-m", "prefopt", "run", "--algo", algo, "--output-dir", str(out),
            f"steps={args.steps}", f"batch_size={args.batch_size}", f"seed={args.seed}", "progress=false",
        ]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"{algo}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = json.loads((out / "summary.json").read_text())
    last = summary["train_last10"]
    return {
        "algo": algo,
        "final_train_loss": last["loss"],
        "eval_pref_accuracy_before": summary["eval_before"].get("eval_pref_accuracy"),
        "eval_pref_accuracy_after": summary["eval_after"].get("eval_pref_accuracy"),
        # the algorithm's own implicit-reward accuracy (its `accuracy` metric), where it defines one
        "eval_own_accuracy_after": summary["eval_after"].get("eval_accuracy"),
        "eval_pairs": summary["eval_pairs"],
        "seconds_per_step_median": summary["seconds_per_step_median"],
        "seconds_total": summary["seconds_total"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "precision": summary["precision"],
        "reference": summary["reference"],
    }


def to_markdown(record: dict) -> str:
    lines = [
        f"# Every algorithm, same budget ({record['steps']} steps x batch {record['batch_size']}, seed {record['seed']})",
        "",
        (f"Model `{record['model']}`, data `{record['data']}`, LoRA defaults, held-out pairs: "
         f"{record['rows'][0]['eval_pairs'] if record['rows'] else 0}. Machine: {record['machine']}."),
        f"Command: `{record['command']}`",
        "",
        "| algorithm | final train loss (mean of last 10 steps) | held-out preference accuracy before -> after | own implicit-reward accuracy after | s/step (median) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['algo']} | {r['final_train_loss']:.4f} | {r['eval_pref_accuracy_before']:.3f} -> "
            f"{r['eval_pref_accuracy_after']:.3f} | "
            + (f"{r['eval_own_accuracy_after']:.3f}" if r["eval_own_accuracy_after"] is not None else "-")
            + f" | {r['seconds_per_step_median']:.2f} |"
        )
    lines += [
        "",
        "Held-out preference accuracy is the same measurement for every algorithm: the fraction of held-out",
        "pairs whose summed log-ratio to the starting model (reward margin for `reward`) favours the chosen",
        "response. The own-accuracy column uses each objective's implicit reward instead (per-token means for",
        "simpo, log odds for orpo, ...). Loss values are in each objective's own units and are not comparable",
        "across rows.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="", help="comma-separated; default: every built-in algorithm")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "zoo"))
    args = parser.parse_args()

    from prefopt.io import atomic_write_json, atomic_write_text, provenance

    algos = [a for a in args.algos.split(",") if a] or builtin_algorithms()
    out = Path(args.out)
    rows = [run_cell(algo, ROOT / "runs" / "zoo" / algo, args) for algo in algos]
    prov = provenance()
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": "smollm2-135m-instruct",
        "data": "builtin:qa",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "machine": f"{prov['cpu_count']} CPU cores, {prov['platform']}, cuda={prov['cuda']}",
        "rows": rows,
        "provenance": prov,
    }
    atomic_write_json(out / "zoo.json", record)
    atomic_write_text(out / "zoo.md", to_markdown(record))
    print(to_markdown(record))


if __name__ == "__main__":
    main()
