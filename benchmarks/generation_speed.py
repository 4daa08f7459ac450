"""Generation throughput: prefopt's own KV-cache sampler vs Hugging Face `model.generate`.

Same model, same prompts (the built-in qa task through the chat template, left
padded), same precision (bf16 autocast where supported, else fp32), same
sampling (temperature 1, top_p 1, no top-k; or greedy with --greedy). Both
ignore end-of-sequence tokens, so every call generates exactly
`--max-new-tokens` tokens per prompt (asserted): prefopt's stop-token lookup is
replaced by a token id that never occurs, and HF gets `eos_token_id=[]` (no
stopping criterion and, unlike `min_new_tokens`, no suppression of EOS logits;
the two decoding rules stay identical, so greedy outputs can be compared token
for token). One warm-up call per (implementation, batch size), then `--reps`
timed calls alternating the order; tokens/s = generated tokens / wall seconds
(prefill included). With --greedy the generated ids are compared per prompt.

    python benchmarks/generation_speed.py                        # batch 8 and 32, 64 new tokens, 3 reps
    python benchmarks/generation_speed.py --greedy --lora        # + identity check, + the LoRA-wrapped model
    python benchmarks/generation_speed.py --batch-sizes 2 --max-new-tokens 8 --reps 1 --out /tmp/gen_smoke
    python benchmarks/generation_speed.py --group-sizes 4,8 --batch-sizes 8   # + group sampling, see below

Group sampling (--group-sizes k,...): k responses per prompt from prefopt's sampler, each prompt's prefill
computed once and its KV cache repeated k times (``generate(..., num_samples=k)``) vs the same prompts repeated
k times in the prompt list (one prefill per row); same batch (all B * k rows together), same seed, same EOS
handling and protocol. With --greedy the two outputs are compared row by row (they must be identical).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]

import prefopt.core.generate as prefopt_generate
from prefopt.core.generate import SamplingConfig
from prefopt.io import cpu_model

IMPLS = ("prefopt", "hf")
EOS_HANDLING = (
    "EOS ignored by both: prefopt's stop tokens replaced by an id that never occurs (-1), HF eos_token_id=[]; "
    "neither suppresses EOS logits; every call generates exactly max_new_tokens tokens per prompt (asserted)"
)


def qa_prompts(tokenizer, n: int) -> list[list[int]]:
    """The first n distinct qa prompts as token ids (chat template, generation prompt)."""
    from prefopt.data import render_prompt
    from prefopt.tasks import load_builtin

    records = load_builtin("qa", kind="prompt", n=max(4 * n, 64))
    if len(records) < n:
        raise SystemExit(f"the qa task gave only {len(records)} distinct prompts; {n} needed")
    return [render_prompt(tokenizer, r.prompt) for r in records[:n]]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, P): prompts right-aligned, the layout HF generate needs (the one prefopt's sampler uses)."""
    from prefopt.core.padding import pad_left

    return pad_left(prompts, pad_id)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_prefopt(model, tokenizer, prompts, max_new_tokens: int, greedy: bool, seed: int, amp) -> torch.Tensor:
    """(B, max_new_tokens) token ids from prefopt's sampler, all prompts in one batch, EOS ignored."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0 if greedy else 1.0, top_p=1.0, seed=seed)
    with mock.patch.object(prefopt_generate, "stop_token_ids", lambda model, tokenizer: [-1]):
        rollout = prefopt_generate.generate(model, tokenizer, prompts, config, batch_size=len(prompts), autocast=amp)
    return rollout.response_ids


def run_hf(model, tokenizer, prompts, max_new_tokens: int, greedy: bool, seed: int, amp) -> torch.Tensor:
    """(B, max_new_tokens) token ids from `model.generate` on the left-padded batch, EOS ignored."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    torch.manual_seed(seed)
    with amp():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=[],  # no stopping criterion, no EOS suppression: exactly max_new_tokens tokens
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    return out[:, ids.shape[1] :]


RUNNERS = {"prefopt": run_prefopt, "hf": run_hf}
GROUP_IMPLS = ("repeated", "prefill_once")


def run_group(impl: str, model, tokenizer, prompts, k: int, max_new_tokens: int, greedy: bool, seed: int, amp):
    """(B * k, max_new_tokens) ids: k samples per prompt, by repeating the prompts or from one prefill each."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0 if greedy else 1.0, top_p=1.0, seed=seed)
    rows, num_samples = ([p for p in prompts for _ in range(k)], 1) if impl == "repeated" else (prompts, k)
    with mock.patch.object(prefopt_generate, "stop_token_ids", lambda model, tokenizer: [-1]):
        rollout = prefopt_generate.generate(model, tokenizer, rows, config, batch_size=len(prompts) * k, autocast=amp,
                                            num_samples=num_samples)
    return rollout.response_ids


def bench_group(model, tokenizer, prompts, k: int, *, max_new_tokens: int, reps: int, greedy: bool, seed: int, amp,
                device) -> dict:
    """One warm-up per implementation, then `reps` timed calls each, alternating the order."""
    def call(impl: str, seed: int):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        ids = run_group(impl, model, tokenizer, prompts, k, max_new_tokens, greedy, seed, amp)
        sync(device)
        seconds = time.perf_counter() - start
        if tuple(ids.shape) != (len(prompts) * k, max_new_tokens):
            raise AssertionError(f"{impl} generated {tuple(ids.shape)} tokens")
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        return seconds, ids.cpu(), peak

    outputs = {impl: call(impl, seed)[1] for impl in GROUP_IMPLS}
    calls = {impl: [] for impl in GROUP_IMPLS}
    for rep in range(reps):
        for impl in GROUP_IMPLS if rep % 2 == 0 else GROUP_IMPLS[::-1]:
            seconds, _, peak = call(impl, seed + rep)
            calls[impl].append({"seconds": seconds, "peak_cuda_mib": peak})
    generated = len(prompts) * k * max_new_tokens
    row = {"prompts": len(prompts), "k": k, "rows": len(prompts) * k,
           "prompt_tokens": sum(len(p) for p in prompts), "generated_tokens_per_call": generated}
    for impl, runs in calls.items():
        seconds = [r["seconds"] for r in runs]
        peaks = [r["peak_cuda_mib"] for r in runs if r["peak_cuda_mib"] is not None]
        row[impl] = {"seconds": seconds, "seconds_median": statistics.median(seconds),
                     "tokens_per_s_median": generated / statistics.median(seconds),
                     "peak_cuda_mib": max(peaks) if peaks else None}
    row["speedup_prefill_once"] = row["repeated"]["seconds_median"] / row["prefill_once"]["seconds_median"]
    if greedy:
        row["greedy"] = greedy_agreement(outputs["prefill_once"], outputs["repeated"])
    return row


def group_table(rows: list[dict]) -> str:
    lines = ["| model | prompts x k | repeated s (tok/s) | prefill once s (tok/s) | repeated / prefill once |"
             + (" greedy match |" if rows and "greedy" in rows[0] else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if rows and "greedy" in rows[0] else "")]
    for row in rows:
        cells = [row["variant"], f"{row['prompts']} x {row['k']}"]
        for impl in GROUP_IMPLS:
            r = row[impl]
            cells.append(f"{r['seconds_median']:.2f} ({r['tokens_per_s_median']:.1f})")
        cells.append(f"{row['speedup_prefill_once']:.2f}")
        if "greedy" in row:
            cells.append(f"{row['greedy']['prompts_identical']}/{row['greedy']['prompts']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timed(impl: str, model, tokenizer, prompts, max_new_tokens: int, greedy: bool, seed: int, amp, device):
    """(seconds, token ids, peak CUDA MiB or None) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    ids = RUNNERS[impl](model, tokenizer, prompts, max_new_tokens, greedy, seed, amp)
    sync(device)
    seconds = time.perf_counter() - start
    if tuple(ids.shape) != (len(prompts), max_new_tokens):
        raise AssertionError(f"{impl} generated {tuple(ids.shape)} tokens, expected {(len(prompts), max_new_tokens)}")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, ids.cpu(), peak


def greedy_agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-prompt identity of two (B, G) id tensors, and the mean length of the common prefix."""
    same = a == b  # (B, G)
    prefix = torch.where(same.all(1), a.shape[1], (~same).int().argmax(1))  # (B,) first mismatch column
    return {
        "prompts_identical": int(same.all(1).sum()),
        "prompts": a.shape[0],
        "match_rate": float(same.all(1).float().mean()),
        "token_agreement": float(same.float().mean()),
        "mean_common_prefix": float(prefix.float().mean()),
    }


def bench_batch(model, tokenizer, prompts, *, max_new_tokens: int, reps: int, greedy: bool, seed: int, amp, device):
    """Warm-up each implementation once, then `reps` timed calls per implementation, alternating the order."""
    calls = {impl: [] for impl in IMPLS}
    outputs = {}
    for impl in IMPLS:  # warm-up (allocator, kernels, lazy imports); its ids serve the greedy check
        _, outputs[impl], _ = timed(impl, model, tokenizer, prompts, max_new_tokens, greedy, seed, amp, device)
    for rep in range(reps):
        for impl in IMPLS if rep % 2 == 0 else IMPLS[::-1]:
            seconds, _, peak = timed(impl, model, tokenizer, prompts, max_new_tokens, greedy, seed + rep, amp, device)
            calls[impl].append({"seconds": seconds, "peak_cuda_mib": peak})
    generated = len(prompts) * max_new_tokens
    row = {
        "batch_size": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "prompt_width": max(len(p) for p in prompts),
        "generated_tokens_per_call": generated,
    }
    for impl, runs in calls.items():
        rates = [generated / r["seconds"] for r in runs]
        peaks = [r["peak_cuda_mib"] for r in runs if r["peak_cuda_mib"] is not None]
        row[impl] = {
            "seconds": [r["seconds"] for r in runs],
            "tokens_per_s": rates,
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates),
            "peak_cuda_mib": max(peaks) if peaks else None,
        }
    row["ratio_prefopt_over_hf"] = row["prefopt"]["tokens_per_s_median"] / row["hf"]["tokens_per_s_median"]
    if greedy:
        row["greedy"] = greedy_agreement(outputs["prefopt"], outputs["hf"])
    return row


def load(spec: str, variant: str, device: torch.device):
    from prefopt.core.models import LoraSettings, load_model

    if variant == "lora":
        return load_model(spec, adapter="lora", lora=LoraSettings(), device=device).eval().requires_grad_(False)
    return load_model(spec, adapter="full", device=device).eval().requires_grad_(False)


def table(record: dict) -> str:
    """Markdown table of the results."""
    lines = [
        "| model | batch | prefopt tok/s (min-max) | HF tok/s (min-max) | prefopt / HF |"
        + (" greedy match |" if record["settings"]["greedy"] else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if record["settings"]["greedy"] else ""),
    ]
    for row in record["results"]:
        cells = [row["variant"], str(row["batch_size"])]
        for impl in IMPLS:
            r = row[impl]
            cells.append(f"{r['tokens_per_s_median']:.1f} ({r['tokens_per_s_min']:.1f}-{r['tokens_per_s_max']:.1f})")
        cells.append(f"{row['ratio_prefopt_over_hf']:.2f}")
        if "greedy" in row:
            g = row["greedy"]
            cells.append(f"{g['prompts_identical']}/{g['prompts']} ({g['token_agreement']:.1%} tokens)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(record: dict) -> str:
    s, m = record["settings"], record["machine"]
    peaks = [
        f"{row['variant']} b={row['batch_size']}: prefopt {row['prefopt']['peak_cuda_mib']:.0f} MiB, "
        f"HF {row['hf']['peak_cuda_mib']:.0f} MiB"
        for row in record["results"]
        if row["prefopt"]["peak_cuda_mib"] is not None
    ]
    memory = "peak CUDA memory: " + "; ".join(peaks) if peaks else f"peak RSS of the whole process: {m['peak_rss_mib']:.0f} MiB"
    decoding = "greedy" if s["greedy"] else "sampling, temperature 1.0, top_p 1.0, no top-k"
    versions = ", ".join(f"{k} {v}" for k, v in record["provenance"]["versions"].items() if v)
    machine = f"{m['cpu_model']}, {m['cpu_count']} CPUs" + (f", {m['cuda']}" if m["cuda"] else "")
    lines = [
        "# Generation throughput: prefopt sampler vs HF generate",
        "",
        f"- command: `{record['command']}`",
        f"- model: {record['model']}; prompts: built-in qa task, chat template, left padded",
        f"- decoding: {decoding}; {s['max_new_tokens']} new tokens per prompt; seed {s['seed']}",
        f"- EOS: {record['eos_handling']}",
        f"- protocol: 1 warm-up per (implementation, batch size), then {s['reps']} timed call(s) each, alternating;"
        + " tokens/s = generated tokens / wall seconds (prefill included); median (min-max)",
        f"- device: {record['device']}; precision: {record['precision']} (asked: {s['precision']});"
        + f" torch threads: {m['torch_threads']}",
        f"- machine: {machine}",
        f"- versions: {versions}; git {record['provenance']['git']}",
        f"- {memory}",
    ]
    out = "\n".join(lines) + "\n\n" + table(record) + "\n"
    if record.get("groups"):
        out += ("\n## Group sampling: k samples per prompt, prompts repeated vs prefilled once\n\n"
                "median seconds per call (generated tokens/s), all rows in one batch\n\n"
                + group_table(record["groups"]) + "\n")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--greedy", action="store_true", help="greedy decoding for both; checks the ids are identical")
    parser.add_argument("--lora", action="store_true", help="also measure the model wrapped in prefopt's LoRA")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-sizes", default="", help="k values: also time k samples per prompt (see docstring)")
    parser.add_argument("--skip-hf", action="store_true", help="only the group-sampling comparison")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed"))
    args = parser.parse_args(argv)

    from prefopt.core.models import autocast, load_tokenizer, pick_device, resolve_precision
    from prefopt.io import atomic_write_json, atomic_write_text, provenance

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    amp = functools.partial(autocast, precision, device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tokenizer = load_tokenizer(args.model)
    prompts = qa_prompts(tokenizer, max(batch_sizes))
    variants = ["full", "lora"] if args.lora else ["full"]

    group_sizes = [int(k) for k in args.group_sizes.split(",") if k.strip()]
    results, groups = [], []
    print(f"device {device}, precision {precision}, torch threads {torch.get_num_threads()}", flush=True)
    for variant in variants:
        model = load(args.model, variant, device)
        for b in batch_sizes:
            for k in group_sizes:
                row = {"variant": variant, **bench_group(
                    model, tokenizer, prompts[:b], k, max_new_tokens=args.max_new_tokens, reps=args.reps,
                    greedy=args.greedy, seed=args.seed, amp=amp, device=device,
                )}
                groups.append(row)
                msg = (f"{variant} {b} prompts x {k}: repeated {row['repeated']['seconds_median']:.2f} s, "
                       f"prefill once {row['prefill_once']['seconds_median']:.2f} s, "
                       f"ratio {row['speedup_prefill_once']:.2f}")
                if "greedy" in row:
                    msg += f", greedy match {row['greedy']['prompts_identical']}/{row['greedy']['prompts']}"
                print(msg, flush=True)
            if args.skip_hf:
                continue
            row = {"variant": variant, **bench_batch(
                model, tokenizer, prompts[:b], max_new_tokens=args.max_new_tokens, reps=args.reps,
                greedy=args.greedy, seed=args.seed, amp=amp, device=device,
            )}
            results.append(row)
            msg = (f"{variant} b={b}: prefopt {row['prefopt']['tokens_per_s_median']:.1f} tok/s, "
                   f"HF {row['hf']['tokens_per_s_median']:.1f} tok/s, ratio {row['ratio_prefopt_over_hf']:.2f}")
            if "greedy" in row:
                g = row["greedy"]
                msg += f", greedy match {g['prompts_identical']}/{g['prompts']} ({g['token_agreement']:.1%} tokens)"
            print(msg, flush=True)
        del model

    record = {
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else [__file__, *argv])]),
        "model": args.model + " (variants: " + ", ".join(
            {"full": "plain float model", "lora": "LoRA-wrapped, prefopt's default LoraSettings"}[v] for v in variants
        ) + ")",
        "device": str(device),
        "precision": precision,
        "eos_handling": EOS_HANDLING,
        "settings": {
            "batch_sizes": batch_sizes, "max_new_tokens": args.max_new_tokens, "reps": args.reps,
            "precision": args.precision, "greedy": args.greedy, "seed": args.seed, "lora": args.lora,
            "temperature": None if args.greedy else 1.0, "top_p": None if args.greedy else 1.0,
            "hf_top_k": None if args.greedy else 0, "group_sizes": group_sizes,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        },
        "results": results,
        "groups": groups,
        "provenance": provenance(),
    }
    out = Path(args.out)
    atomic_write_json(out / "generation.json", record)
    atomic_write_text(out / "generation.md", markdown(record))
    print("\n" + table(record))
    if groups:
        print("\n" + group_table(groups))
    print(f"wrote {out / 'generation.json'} and {out / 'generation.md'}")
    return record


if __name__ == "__main__":
    main()
