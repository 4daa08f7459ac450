"""prefopt's grpo vs trl's GRPOTrainer: seconds per step (generation and update apart) and peak memory.

Alternating runs, each trainer in a fresh process of its own (so a process's peak RSS is that trainer's
alone): for each of --reps repetitions, prefopt then trl, each doing --warmup untimed then --steps timed
steps. Nothing else should run on the machine meanwhile.

The same for both:
  - model: the bundled SmolLM2-135M-Instruct (or --model), LoRA r 16, alpha 32, dropout 0, every linear
    layer (prefopt's defaults; trl gets the same peft LoraConfig);
  - prompts: the first --prompts x (warmup + steps) training prompts of builtin:qa in order, as one-turn
    chats (both apply the model's chat template with the generation prompt); --prompts prompts per step;
  - group: --k completions per prompt, at most --max-new-tokens tokens, temperature 1, top_p 1;
  - objective: GRPO loss (trl loss_type="grpo", prefopt grpo), beta 0 so neither builds a reference
    (prefopt measure_kl=false), one optimizer update per generation batch (trl steps_per_generation=1,
    num_iterations=1; so neither does an extra forward for the old log-probs), AdamW at a constant lr,
    clipping at 1.0;
  - reward: the same Python function, prefopt.tasks.rewards:qa;
  - precision: fp32 on a CPU without bf16 (--precision bf16 where it has);
  - gradient checkpointing: on for both with --gradient-checkpointing, else off for both (trl's GRPOConfig
    turns it on by default; --trl-default-checkpointing leaves trl at its default and prefopt at its own, off).

prefopt runs at its defaults otherwise: on a CPU its update runs each prompt once for the prompt's k
completions (share_prompt auto; --share-prompt false gives it k padded rows, as trl's).

What is timed. prefopt: the generation_seconds (sampling, the judge) and update_seconds it logs per step.
trl: a TrainerCallback times each step from on_step_begin to on_step_end; generation is the time inside
GRPOTrainer._generate_and_score_completions (sampling, reward, advantages), update the rest. A step's total
is the sum of both. Memory: the process's peak RSS (ru_maxrss) at the end, and what the timed steps added
above the RSS after the model was loaded.

    python benchmarks/grpo_speed_vs_trl.py                     # 4 prompts x 4, 32 tokens, 2 x (1 + 3) steps each
    python benchmarks/grpo_speed_vs_trl.py --gradient-checkpointing --out results/speed/cpu_grpo_vs_trl_checkpointing
    python benchmarks/grpo_speed_vs_trl.py --model /tmp/tiny --steps 1 --warmup 1 --reps 1 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REWARD = "prefopt.tasks.rewards:qa"


def rss_mb() -> float:
    """The process's resident memory now, in MiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompts(n: int) -> list[str]:
    from prefopt.tasks import get_task

    return get_task("qa").prompts("train", n)


# ---------------------------------------------------------------- the two workers (one per process)


def run_prefopt(args, workdir: Path) -> dict:
    from prefopt.algorithms.grpo import GRPO
    from prefopt.training.config import RunConfig
    from prefopt.training.runner import train

    steps = args.warmup + args.steps
    data = workdir / "prompts.jsonl"
    # one-turn conversations, as trl gets them: both render the prompt with the model's chat template
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}) + "\n"
                            for p in prompts(args.prompts * steps)))  # fmt: skip
    run = RunConfig(model=args.model, data=str(data), output_dir=str(workdir / "run"), precision=args.precision,
                    progress=False, steps=steps, batch_size=args.prompts, eval_size=0, lr=args.lr,
                    schedule="constant", warmup_ratio=0.0, max_length=512, max_prompt_length=256,
                    max_grad_norm=1.0, seed=0, gradient_checkpointing=args.gradient_checkpointing,
                    share_prompt="auto" if args.share_prompt == "auto" else False)
    algorithm = GRPO(GRPO.Config(judge=f"python:{REWARD}", num_generations=args.k, max_new_tokens=args.max_new_tokens,
                                 temperature=1.0, top_p=1.0, beta=0.0, measure_kl=False))
    loaded = {}
    real_setup = algorithm.setup

    def setup(ctx):  # the model is loaded by now: the memory baseline
        loaded["rss_mb"] = rss_mb()
        real_setup(ctx)

    algorithm.setup = setup
    train("grpo", algorithm, run)
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "generation_seconds" in r][args.warmup :]
    return {
        "gradient_checkpointing": run.gradient_checkpointing,
        "share_prompt": run.share_prompt,
        "generation_seconds": [r["generation_seconds"] + r["judge_seconds"] for r in rows],
        "update_seconds": [r["update_seconds"] for r in rows],
        "completion_tokens": [r["response_length"] * args.prompts * args.k for r in rows],
        "loaded_rss_mb": loaded["rss_mb"],
        "peak_rss_mb": peak_rss_mb(),
    }


def run_trl(args, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prefopt.core.models import resolve_model
    from prefopt.tasks.rewards import qa

    steps = args.warmup + args.steps
    path = str(resolve_model(args.model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [{"prompt": [{"role": "user", "content": p}]} for p in prompts(args.prompts * steps)]
    config = GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=args.prompts * args.k,
        num_generations=args.k, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        beta=0.0, loss_type="grpo", num_iterations=1, steps_per_generation=1, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16", seed=0, shuffle_dataset=False, disable_tqdm=True,
        **({} if args.trl_default_checkpointing else {"gradient_checkpointing": args.gradient_checkpointing}),
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[qa], args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft_config)
    loaded_rss = rss_mb()
    generation, total = [], []
    real_generate = trainer._generate_and_score_completions

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        out = real_generate(*a, **kw)
        generation.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            total.append(time.perf_counter() - self.t0)

    trainer.add_callback(StepTimer())
    trainer.train()
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    w = args.warmup
    return {
        "gradient_checkpointing": config.gradient_checkpointing,
        "generation_seconds": generation[w:steps],
        "update_seconds": [t - g for t, g in zip(total[w:steps], generation[w:steps])],
        "completion_tokens": [n * args.prompts * args.k for n in lengths[w:steps]],
        "loaded_rss_mb": loaded_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------- the driver


def summarise(runs: list[dict]) -> dict:
    gen = [x for r in runs for x in r["generation_seconds"]]
    upd = [x for r in runs for x in r["update_seconds"]]
    tot = [g + u for r in runs for g, u in zip(r["generation_seconds"], r["update_seconds"])]
    return {
        "steps_timed": len(tot),
        "seconds_per_step_median": statistics.median(tot),
        "generation_seconds_median": statistics.median(gen),
        "update_seconds_median": statistics.median(upd),
        "steps_per_second": 1 / statistics.median(tot),
        "completion_tokens_per_step_mean": statistics.mean(x for r in runs for x in r["completion_tokens"]),
        "gradient_checkpointing": runs[0].get("gradient_checkpointing"),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "steps_added_rss_mb_max": max(r["peak_rss_mb"] - r["loaded_rss_mb"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--k", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both trainers")
    parser.add_argument("--trl-default-checkpointing", action="store_true",
                        help="leave trl's gradient checkpointing at its GRPOConfig default (on)")
    parser.add_argument("--share-prompt", choices=["auto", "false"], default="auto",
                        help="prefopt's share_prompt: auto (each prompt once for its k completions, on a CPU) or "
                             "false (k padded rows)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--reps", type=int, default=2, help="alternating prefopt/trl runs")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "cpu_grpo_vs_trl"))
    parser.add_argument("--worker", choices=["prefopt", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one trainer, in this process
        with tempfile.TemporaryDirectory() as tmp:
            result = (run_prefopt if args.worker == "prefopt" else run_trl)(args, Path(tmp))
        Path(args.result).write_text(json.dumps(result))
        return

    from prefopt.io import atomic_write_json, provenance

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"prefopt": [], "trl": []}
    flags = ("gradient_checkpointing", "trl_default_checkpointing")
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("worker", "result", "out", *flags)]
    passthrough += [f"--{k.replace('_', '-')}" for k in flags if getattr(args, k)]
    for rep in range(args.reps):
        for who in ("prefopt", "trl"):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, __file__, *passthrough, "--worker", who, "--result", f.name]
                print(f"rep {rep + 1}/{args.reps}: {who}", flush=True)
                subprocess.run(cmd, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                runs[who].append(json.loads(Path(f.name).read_text()))
    summary = {who: summarise(r) for who, r in runs.items()}
    summary["speedup_steps_per_second"] = summary["prefopt"]["steps_per_second"] / summary["trl"]["steps_per_second"]
    summary["memory_ratio_peak_rss"] = summary["prefopt"]["peak_rss_mb_max"] / summary["trl"]["peak_rss_mb_max"]
    atomic_write_json(out / "results.json", {
        "command": " ".join(["python", "benchmarks/grpo_speed_vs_trl.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "out")},
        "summary": summary,
        "runs": runs,
        "provenance": {**provenance(), "trl": version("trl")},
    })
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
