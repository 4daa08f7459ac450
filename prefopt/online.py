"""The online loop: rollout -> score -> update, for algorithms with ``online = True``.

It shares the offline loop's pieces — output-folder checks, typed config,
AdamW with the same schedule, checkpoints and exact ``--resume``,
``metrics.jsonl``, the final adapter and ``summary.json`` written last — and,
like it, knows no algorithm names. Per step it hands the algorithm a batch of
prompts and an :class:`OnlineContext` (generation, reference log-probs, one
optimizer update); the algorithm decides how to roll out and update (PPO's
epochs over minibatches, RLAIF's judged pairs, ...).

Every step's sampling is seeded from (seed, step), so a resumed run draws
exactly the rollouts the uninterrupted run would have drawn.
"""

from __future__ import annotations

import copy
import random
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from prefopt.algorithm import Algorithm
from prefopt.checkpoint import latest_checkpoint, save_checkpoint
from prefopt.config import RunConfig, as_flat_dict
from prefopt.data import load_records, tokenize_prompts
from prefopt.errors import PrefoptError
from prefopt.evaluate import sequence_kl
from prefopt.generate import Rollout, SamplingConfig, generate
from prefopt.io import atomic_write_json, atomic_write_text, provenance
from prefopt.logprobs import SequenceLogps, forward_token_logps
from prefopt.models import autocast, pick_device, resolve_precision

STEP_SEED = 1_000_003


class OnlineContext:
    """What an online algorithm may use during a step; holds no algorithm logic."""

    def __init__(self, run: RunConfig, model, tokenizer, device, precision):
        self.run, self.model, self.tokenizer = run, model, tokenizer
        self.device, self.precision = device, precision
        self.lm = model.lm if hasattr(model, "head") else model  # the language model under any value head
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=run.lr, weight_decay=run.weight_decay)
        warmup = int(round(run.warmup_ratio * run.steps))
        from prefopt.train import lr_factor

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, run.steps, warmup, run.schedule)
        )
        # Reference: adapters off (LoRA/QLoRA), else a frozen copy of the starting LM.
        self._frozen = None
        if not hasattr(self.lm, "disable_adapter"):
            self._frozen = copy.deepcopy(self.lm).eval().requires_grad_(False)
        self.step = 0
        self.tokens = 0  # prompt + response tokens rolled out so far (a cost measure)

    def autocast(self):
        return autocast(self.precision, self.device)

    def rollout(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> tuple[Rollout, dict]:
        """Sample responses (seeded by the step) -> (rollout, right-padded batch on the device)."""
        sampling = SamplingConfig(**{**asdict(sampling), "seed": self.run.seed * STEP_SEED + self.step})
        rollout = generate(self.lm, self.tokenizer, prompt_ids, sampling, batch_size=len(prompt_ids), autocast=self.autocast)
        input_ids, attention_mask, loss_mask = rollout.sequences()
        self.tokens += int(attention_mask.sum())
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
        return rollout, {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def reference_token_logps(self, batch: dict) -> torch.Tensor:
        """(N, K) token log-probs of the starting model, columns as forward_token_logps."""
        if self._frozen is not None:
            with self.autocast():
                return forward_token_logps(self._frozen, batch)[0]
        with self.lm.disable_adapter(), self.autocast():
            return forward_token_logps(self.lm, batch)[0]

    @torch.no_grad()
    def reference_sequence_logps(self, batch: dict) -> SequenceLogps:
        """(N,) summed log-probs of the starting model over each row's response."""
        logps = self.reference_token_logps(batch)  # (N, K)
        return SequenceLogps(sum=logps.sum(-1), tokens=batch["loss_mask"][:, 1:].sum(-1).float())

    def update(self, loss: torch.Tensor) -> float:
        """Backward, clip, one optimizer step; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.run.max_grad_norm if self.run.max_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        return norm


class OnlineAlgorithm(Algorithm):
    """Base for objectives that sample from the policy during training.

    Subclasses implement ``train_step(ctx, prompts, prompt_messages)`` -> metrics
    and ``evaluate(ctx, prompts, prompt_messages)`` -> metrics, and may keep
    state across steps in ``state_dict``/``load_state_dict`` (saved with
    checkpoints). ``head = "scalar"`` attaches a value head to the policy.
    """

    online = True
    inputs = "prompts"

    def setup(self, ctx: OnlineContext) -> None:
        """Called once before training (e.g. build the judge)."""

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@torch.no_grad()
def evaluate_samples(ctx: OnlineContext, prompts: list[list[int]], messages: list, judge, sampling: SamplingConfig) -> dict[str, float]:
    """Held-out samples of the current policy: judge score, KL to the reference (k1, k3) and length.

    KL is per sequence (summed over response tokens), averaged over prompts.
    """
    if not prompts:
        return {}
    rollout, batch = ctx.rollout(prompts, sampling)
    scores = judge.score(messages, rollout.texts(ctx.tokenizer))
    was_training = ctx.model.training
    ctx.model.eval()
    with ctx.autocast():
        logps, mask = forward_token_logps(ctx.lm, batch)  # (N, K)
    ref_logps = ctx.reference_token_logps(batch)  # (N, K)
    ctx.model.train(was_training)
    kl = sequence_kl(logps, ref_logps, mask)
    return {
        "reward": float(sum(scores) / len(scores)),
        "kl_k1": kl["kl_k1"],
        "kl_k3": kl["kl_k3"],
        "response_length": float(mask.sum(-1).mean()),
    }


def _prompt_stream(n: int, batch: int, seed: int, skip: int):
    """Endless batches of prompt indices; each epoch a fresh permutation of (seed, epoch)."""
    epoch, served = 0, 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * STEP_SEED + epoch)).tolist()
        for start in range(0, n - batch + 1, batch):
            if served >= skip:
                yield order[start : start + batch]
            served += 1
        epoch += 1


def train_online(algo_name: str, algorithm: OnlineAlgorithm, run: RunConfig, resume_dir: Path | None = None) -> dict:
    """Train an online algorithm; returns the run summary (same layout as offline runs)."""
    from prefopt.models import load_tokenizer
    from prefopt.train import check_output_dir, create_output_dir, default_output_dir, split_records

    out = Path(resume_dir) if resume_dir else Path(run.output_dir or default_output_dir(algo_name))
    check_output_dir(out, resume=resume_dir is not None)
    random.seed(run.seed)
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(run.model)
    records = load_records(run.data, "prompt")
    train_records, eval_records = split_records(records, run.eval_size, run.data)
    if len(train_records) < run.batch_size:
        raise PrefoptError(f"{run.data}: {len(train_records)} training prompts, fewer than batch_size={run.batch_size}")
    train_prompts, _ = tokenize_prompts(train_records, tokenizer, run.max_length, run.max_prompt_length, run.data)
    eval_prompts, _ = tokenize_prompts(eval_records, tokenizer, run.max_length, run.max_prompt_length, run.data)
    device = pick_device()
    precision = resolve_precision(run.precision, device)

    created = create_output_dir(out)
    try:
        return _train_online_in(out, algo_name, algorithm, run, tokenizer, train_records, train_prompts,
                                eval_records, eval_prompts, device, precision, resume=resume_dir is not None)
    except PrefoptError:
        if created and latest_checkpoint(out) is None:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train_online_in(out, algo_name, algorithm, run, tokenizer, train_records, train_prompts, eval_records,
                     eval_prompts, device, precision, resume) -> dict:
    from prefopt.train import (
        CONFIG,
        METRICS,
        SUMMARY,
        _append_metrics,
        _peak_rss_mb,
        load_policy,
        restore,
        save_outputs,
    )

    started = time.perf_counter()
    if not resume:
        atomic_write_text(out / CONFIG, yaml.safe_dump(as_flat_dict(algo_name, run, algorithm.config), sort_keys=False))
    model = load_policy(run, algorithm, device, precision)
    ctx = OnlineContext(run, model, tokenizer, device, precision)
    algorithm.setup(ctx)

    metrics_path = out / METRICS
    state = restore(out, resume, model, ctx.optimizer, ctx.scheduler)
    step = state["step"]
    algorithm.load_state_dict(state.get("algorithm", {}))

    eval_ids = [p.prompt_ids for p in eval_prompts]
    eval_messages = [r.prompt for r in eval_records]
    ctx.step = -1  # evaluation draws from its own seed, never a training step's
    eval_before = state.get("eval_before") or {f"eval_{k}": v for k, v in algorithm.evaluate(ctx, eval_ids, eval_messages).items()}
    if step == 0 and eval_before:
        _append_metrics(metrics_path, {"step": 0, **eval_before})

    stream = _prompt_stream(len(train_prompts), run.batch_size, run.seed, skip=step)
    step_seconds, recent = [], []
    bar = tqdm(total=run.steps, initial=step, desc=algo_name, disable=not run.progress, file=sys.stderr)
    while step < run.steps:
        ids = next(stream)
        ctx.step = step
        t0 = time.perf_counter()
        model.train()
        tokens_before = ctx.tokens
        row = algorithm.train_step(ctx, [train_prompts[i].prompt_ids for i in ids], [train_records[i].prompt for i in ids])
        lr = ctx.scheduler.get_last_lr()[0]
        ctx.scheduler.step()
        step += 1
        step_seconds.append(time.perf_counter() - t0)
        row = {"step": step, **row, "lr": lr, "tokens": ctx.tokens - tokens_before, "seconds": step_seconds[-1]}
        recent = (recent + [row])[-10:]
        _append_metrics(metrics_path, row)
        bar.set_postfix({k: f"{row[k]:.3f}" for k in ("reward", "kl", "loss") if k in row})
        bar.update(1)
        if run.save_every and step % run.save_every == 0 and step < run.steps:
            save_checkpoint(out, step, model, ctx.optimizer, ctx.scheduler,
                            {"eval_before": eval_before, "algorithm": algorithm.state_dict()})
    bar.close()

    ctx.step = -1
    eval_after = {f"eval_{k}": v for k, v in algorithm.evaluate(ctx, eval_ids, eval_messages).items()}
    if eval_after:
        _append_metrics(metrics_path, {"step": step, **eval_after})
    saved = save_outputs(out, model, tokenizer, run.merge)
    numeric = [k for k in recent[0] if k != "step" and isinstance(recent[0][k], (int, float))] if recent else []
    summary = {
        "algo": algo_name,
        "output_dir": str(out),
        "steps": step,
        "train_prompts": len(train_prompts),
        "eval_prompts": len(eval_prompts),
        "eval_pairs": 0,
        "global_batch": run.batch_size,
        "truncation": {},
        "eval_before": eval_before,
        "eval_after": eval_after,
        "train_last10": {k: statistics.fmean(r[k] for r in recent) for k in numeric},
        "seconds_total": time.perf_counter() - started,
        "seconds_per_step_median": statistics.median(step_seconds) if step_seconds else None,
        "peak_rss_mb": _peak_rss_mb(),
        "device": str(device),
        "precision": precision,
        "reference": "adapter" if ctx._frozen is None else "copy",
        "outputs": saved,
        "provenance": provenance(),
    }
    atomic_write_json(out / SUMMARY, summary)
    return summary

