"""Starting gold score of a model on every built-in task: how much headroom each task leaves.

Samples ``--samples`` responses per held-out prompt (temperature 1, like the benchmark's evaluation) and a greedy
one, scores them with the task's gold rule and writes results/tasks/headroom.json + headroom.md: the sampled mean
(over every sample), the greedy mean, and best-of-n (per prompt the highest gold among its n samples, averaged over
prompts) for n = 1, 2, 4, ... up to ``--samples``. A task has headroom when the sampled mean is well below the
maximum and best-of-n well above the mean: preference training can move the model, and there is room to move into.

    python benchmarks/task_headroom.py                   # bundled model, 64 prompts per task
    python benchmarks/task_headroom.py --prompts 128 --model HuggingFaceTB/SmolLM2-360M-Instruct
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16, help="sampled responses per prompt (best-of-n up to this)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "tasks"))
    parser.add_argument("--tasks", default="", help="comma-separated tasks to (re)measure; the other rows of an "
                        "existing headroom.json are kept (default: every built-in task)")
    args = parser.parse_args()

    from prefopt.core.generate import SamplingConfig
    from prefopt.core.models import load_model, load_tokenizer, pick_device, resolve_precision
    from prefopt.evaluation.metrics import Sampler
    from prefopt.io import atomic_write_json, atomic_write_text, provenance
    from prefopt.tasks import get_task, task_names

    device = pick_device()
    precision = resolve_precision("auto", device)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, adapter="full", device=device).eval().requires_grad_(False)
    sampler = Sampler(model, tokenizer, precision, batch_size=64)
    chosen = [t for t in args.tasks.split(",") if t] or task_names()
    previous = Path(args.out) / "headroom.json"
    kept = {}
    if args.tasks and previous.exists():  # rows of the tasks not re-measured now, with their own command and git
        old = json.loads(previous.read_text())
        kept = {r["task"]: {**r, "measured_by": {"command": old.get("command"), "git": old["provenance"].get("git")}}
                for r in old.get("rows", []) if r["task"] not in chosen}  # fmt: skip
    rows = []
    for name in chosen:
        task = get_task(name)
        prompts = task.prompts("heldout", args.prompts)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        row = {"task": name, "prompts": len(prompts), "gold_range": list(task.gold_range)}
        for mode, temperature in (("sampled", 1.0), ("greedy", 0.0)):
            started = time.perf_counter()
            n = args.samples if mode == "sampled" else 1
            asked = [c for c in conversations for _ in range(n)]  # n samples of each prompt, side by side
            _, texts, lengths = sampler.sample(
                asked, SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=temperature, seed=args.seed),
                progress=True,
            )
            scores = task.gold_scores([p for p in prompts for _ in range(n)], texts)
            row[mode] = {
                "gold_mean": statistics.fmean(scores),
                "gold_sd": statistics.stdev(scores),
                "at_max": sum(s >= task.gold_range[1] for s in scores) / len(scores),
                "length_mean": statistics.fmean(lengths),
                "seconds": time.perf_counter() - started,
                "examples": [{"prompt": p, "response": t, "gold": s}
                             for p, t, s in list(zip(prompts, texts[::n], scores[::n]))[:3]],
            }
            if n > 1:
                row[mode]["best_of"] = best_of_n(scores, n)
        rows.append(row)
        best = row["sampled"].get("best_of", {})
        print(f"{name}: best-of-n {best}", flush=True)
        print(f"{name}: sampled {row['sampled']['gold_mean']:.3f}, greedy {row['greedy']['gold_mean']:.3f} "
              f"(range {task.gold_range})", flush=True)
    rows = sorted([*rows, *kept.values()], key=lambda r: r["task"])
    record = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "precision": precision,
        "device": str(device),
        "rows": rows,
        "provenance": provenance(),
    }
    lines = [
        f"# Starting gold score of `{args.model}` on the built-in tasks",
        "",
        (f"{args.prompts} held-out prompts per task, {args.max_new_tokens} new tokens, seed {args.seed}, "
         f"{precision}, git {record['provenance'].get('git')}. Command: `{record['command']}`"),
        "",
        (f"Sampled: {args.samples} samples per prompt at T=1 (mean ± sd over all samples). Best-of-n: per prompt the "
         "highest gold of its first n samples, averaged over prompts (a ceiling a policy can reach without leaving "
         "the starting model's own replies)."),
        "",
        ("| task | gold range | sampled (T=1) mean ± sd | greedy mean | best-of-4 | best-of-16 | share at the maximum "
         "(sampled / greedy) | mean length |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, g = r["sampled"], r["greedy"]
        best = s.get("best_of", {})
        shown = [f"{best[k]:.3f}" if k in best else "-" for k in ("4", "16")]
        lines.append(f"| {r['task']} | {r['gold_range'][0]:g} .. {r['gold_range'][1]:g} | {s['gold_mean']:.3f} ± "
                     f"{s['gold_sd']:.3f} | {g['gold_mean']:.3f} | {shown[0]} | {shown[1]} | {s['at_max']:.2f} / "
                     f"{g['at_max']:.2f} | {s['length_mean']:.1f} |")
    for r in kept.values():
        lines.append(f"\n{r['task']}: measured earlier by `{r['measured_by']['command']}` at git {r['measured_by']['git']}.")
    out = Path(args.out)
    atomic_write_json(out / "headroom.json", record)
    atomic_write_text(out / "headroom.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def best_of_n(scores: list[float], samples: int) -> dict[str, float]:
    """{n: mean over prompts of the best gold among a prompt's first n samples} for n = 1, 2, 4, ... <= samples.

    ``scores`` holds ``samples`` consecutive scores per prompt.
    """
    groups = [scores[i : i + samples] for i in range(0, len(scores), samples)]
    out, n = {}, 1
    while n <= samples:
        out[str(n)] = statistics.fmean(max(g[:n]) for g in groups)
        n *= 2
    return out


if __name__ == "__main__":
    main()
