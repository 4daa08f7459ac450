"""The online loop: rollout -> score -> update, for algorithms with ``online = True``.

It runs in the same lifecycle as the offline loop (:mod:`prefopt.training.lifecycle`:
output-folder checks, typed config, AdamW with the same schedule, periodic
evaluation, checkpoints and exact ``--resume``, ``metrics.jsonl``, the final
adapter and ``summary.json`` written last, one schema) and, like it, knows no
algorithm names. It builds the run's reference (adapters disabled, or a frozen
copy) only when the algorithm's ``needs_reference`` asks for it (the group methods at ``beta = 0``
with ``measure_kl=false`` do without: no frozen copy in memory, no reference forwards, and
evaluation then logs no KL); run options that mean nothing for sampled data (``grad_accum``,
``reference=precomputed``, several processes) are refused before any work. Per step it hands the algorithm a batch of
prompts and an :class:`OnlineContext` (generation, reference log-probs, one
optimizer update); the algorithm decides how to roll out and update (PPO's
epochs over minibatches, RLAIF's judged pairs, ...).

Every step's sampling is seeded from (seed, step), so a resumed run draws
exactly the rollouts the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from prefopt.core.algorithm import Algorithm
from prefopt.core.generate import Rollout, SamplingConfig, generate
from prefopt.core.host_memory import release_freed_memory, use_release
from prefopt.core.logprobs import (
    LAYOUT,
    SequenceLogps,
    forward_token_logps,
    host_layout,
    packs_shared_prompts,
    use_shared_prompt,
)
from prefopt.core.models import autocast, eval_mode, load_tokenizer, model_fingerprint, pick_device, resolve_precision
from prefopt.core.reference import build_reference
from prefopt.core.rl import per_sequence_kl
from prefopt.core.shared_prompt import SHARED_PROMPT, shared_prompt_layout
from prefopt.data import tokenize_prompts
from prefopt.errors import PrefoptError
from prefopt.training import chat_template
from prefopt.training.config import RunConfig, as_flat_dict, steps_for_epochs
from prefopt.training.distributed import context
from prefopt.training.lifecycle import (
    RunFolder,
    make_optimizer,
    make_summary,
    merged_dtype,
    run_fingerprint,
    train_loop,
)
from prefopt.training.outputs import finish_outputs, push_if_asked
from prefopt.training.policy import check_share_prompt, load_policy
from prefopt.training.split import load_split, long_prompts

STEP_SEED = 1_000_003


class OnlineContext:
    """What an online algorithm may use during a step; holds no algorithm logic.

    ``reference`` is the run's reference when ``needs_reference`` (the algorithm's, read once it is configured),
    else None: asking for reference log-probs then is a bug in the algorithm and raises PrefoptError.
    """

    def __init__(self, run: RunConfig, model, tokenizer, device, precision, needs_reference: bool = True):
        self.run, self.model, self.tokenizer = run, model, tokenizer
        self.device, self.precision = device, precision
        self.lm = model.lm if hasattr(model, "head") else model  # the language model under any value head
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(self.params, run)
        # the run's reference, built before any update: adapters off (LoRA/QLoRA) or a frozen copy of the LM;
        # none when training never uses it (evaluation then skips its KL)
        self.reference = (build_reference(run.reference, self.lm, run.adapter, autocast=self.autocast)
                          if needs_reference else None)
        # forwards of groups of completions of one prompt run the prompt once (see with_shared_prompts)
        self.share_prompt = use_shared_prompt(run.share_prompt, self.lm, device)
        # and on a CPU the shared rows run packed, as one sequence attended span by span, unless padding_free=false
        self.pack_shared_prompts = packs_shared_prompts(self.share_prompt, run.padding_free, self.lm)
        self.step = 0
        self.tokens = 0  # prompt + response tokens rolled out so far (a cost measure)
        # the run's prompt stream: more_prompts(n) -> (token ids, messages) of the next n training prompts
        # (set by the run loop; DAPO refills dropped groups from it)
        self.more_prompts: Callable[[int], tuple[list[list[int]], list]] | None = None

    def autocast(self):
        return autocast(self.precision, self.device)

    def rollout(self, prompt_ids: list[list[int]], sampling: SamplingConfig,
                num_samples: int = 1) -> tuple[Rollout, dict]:
        """Sample num_samples responses per prompt (seeded by the step) -> (rollout, right-padded batch on the
        device); rows prompt0 x k, prompt1 x k, ..., each prompt prefilled once (see generate)."""
        sampling = SamplingConfig(**{**asdict(sampling), "seed": self.run.seed * STEP_SEED + self.step})
        rollout = generate(self.lm, self.tokenizer, prompt_ids, sampling, batch_size=len(prompt_ids) * num_samples,
                           autocast=self.autocast, num_samples=num_samples)
        input_ids, attention_mask, loss_mask = rollout.sequences()
        self.tokens += int(attention_mask.sum())
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
        return rollout, {k: v.to(self.device) for k, v in batch.items()}

    def with_shared_prompts(self, batch: dict, groups: torch.Tensor | None) -> dict:
        """`batch` with its host Layout and SharedPrompt when the run shares prompts and its rows come in
        `groups` (G, k) that share a prompt (``consecutive_groups``: the k completions of each prompt, as
        ``rollout`` returns them; ``pair_groups``: a pair batch): forward_token_logps then runs each prompt once
        per group, the same values (``prefopt.core.shared_prompt``). Otherwise, or when the rows are not such
        groups, `batch` as it is. Index only its tensors for a subset of rows."""
        if not self.share_prompt or groups is None:
            return batch
        ids, attention, loss = (batch[k].cpu() for k in ("input_ids", "attention_mask", "loss_mask"))
        layout = host_layout(attention, loss)
        shared = shared_prompt_layout(ids, attention, loss, layout.first, layout.response,
                                      packed=self.pack_shared_prompts, groups=groups)  # fmt: skip
        if shared is None:
            return batch
        return {**batch, LAYOUT: layout.to(self.device), SHARED_PROMPT: shared.to(self.device)}

    def reference_token_logps(self, batch: dict) -> torch.Tensor:
        """(N, K) token log-probs of the starting model, columns as forward_token_logps."""
        if self.reference is None:
            raise PrefoptError("no reference model was built: the algorithm declared needs_reference=False "
                               "but asked for reference log-probs (a bug in the algorithm)")
        return self.reference.token_logps(batch)

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
    # Whether its update forwards run each prompt once for the completions sampled from it (run option
    # share_prompt, through OnlineContext.with_shared_prompts); share_prompt=true is refused where not.
    shares_prompts = False

    def completions_per_prompt(self) -> int:
        """Completions sampled (and scored) per prompt per step: a step's reward queries per prompt."""
        return int(getattr(self.config, "num_generations", 1))

    def setup(self, ctx: OnlineContext) -> None:
        """Called once before training (e.g. build the judge)."""

    def reward_source(self) -> str | None:
        """The judge spec the training signal comes from (None if none): the benchmark tells a policy
        trained against a proxy reward from one trained against gold by it."""
        return None

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class JudgedOnlineAlgorithm(OnlineAlgorithm):
    """An online algorithm trained against a judge: its Config has ``judge`` (a spec for ``make_judge``),
    ``judge_weights`` (weights of comma-separated judges), ``gold`` (a second judge logged, never trained on)
    and ``max_new_tokens``, ``temperature``, ``top_p`` (how it samples). One home for what PPO, online DPO and
    the group methods share: building the judges, naming the reward source, the sampling settings."""

    def __init__(self, config=None):
        super().__init__(config)
        self.judge = self.gold = None

    def reward_source(self) -> str | None:
        return self.config.judge

    def setup(self, ctx: OnlineContext) -> None:
        from prefopt.judges import make_judge

        c = self.config
        self.judge = make_judge(c.judge, weights=c.judge_weights or None)
        self.gold = make_judge(c.gold) if c.gold else None

    def sampling(self) -> SamplingConfig:
        c = self.config
        return SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p)

    def reward_parts(self) -> dict[str, float]:
        """A weighted judge's mean score of each part on its last call, as "reward/<judge>" (the total is their
        weighted sum); {} for a single judge."""
        means = self.judge.component_means() if hasattr(self.judge, "component_means") else {}
        return {f"reward/{name}": value for name, value in means.items()}


@torch.no_grad()
def evaluate_samples(ctx: OnlineContext, prompts: list[list[int]], messages: list, judge, sampling: SamplingConfig) -> dict[str, float]:
    """Held-out samples of the current policy: judge score, KL to the reference (k1, k3) and length.

    KL is per sequence (summed over response tokens), averaged over prompts. A run without a reference
    (``ctx.reference`` None: the algorithm's training never uses one) logs no ``kl_k1``/``kl_k3`` at all,
    every evaluation alike, rather than build a reference for evaluation only.
    """
    if not prompts:
        return {}
    rollout, batch = ctx.rollout(prompts, sampling)
    scores = judge.score(messages, rollout.texts(ctx.tokenizer))
    with eval_mode(ctx.model):
        with ctx.autocast():
            logps, mask = forward_token_logps(ctx.lm, batch)  # (N, K)
        ref_logps = ctx.reference_token_logps(batch) if ctx.reference is not None else None  # (N, K)
    metrics = {"reward": float(sum(scores) / len(scores))}
    if ref_logps is not None:
        metrics["kl_k1"] = float(per_sequence_kl(logps, ref_logps, mask, "k1").mean())
        metrics["kl_k3"] = float(per_sequence_kl(logps, ref_logps, mask, "k3").mean())
    metrics["response_length"] = float(mask.sum(-1).mean())
    return metrics


def _prompt_indices(n: int, batch: int, seed: int, skip: int):
    """Endless training-prompt indices, the first `skip` left out. Each epoch is a fresh permutation of
    (seed, epoch) cut to whole batches (a last partial batch is left out, so every step sees batch prompts)."""
    per_epoch = n - n % batch
    epoch, offset = divmod(skip, per_epoch)  # straight to where a resumed run left off
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * STEP_SEED + epoch)).tolist()
        yield from order[offset:per_epoch]
        epoch, offset = epoch + 1, 0


def check_online_options(algo_name: str, run: RunConfig, world: int, shares_prompts: bool = False) -> None:
    """Run options an online method cannot honour, refused in one line before any work."""
    if world > 1:
        raise PrefoptError(f"{algo_name} is an online method and runs in one process; "
                           f"launch it without accelerate/--num-processes (got {world} processes)")
    if run.grad_accum != 1:
        raise PrefoptError(f"option 'grad_accum': {algo_name} is an online method that updates on each step's own "
                           f"samples (its options set the updates per step); set grad_accum=1, got {run.grad_accum}")
    if run.padding_free is True:
        raise PrefoptError(f"option 'padding_free': packs the batches of offline objectives; {algo_name} samples and "
                           "scores its own rollouts as padded batches (leave it at auto or false)")
    if run.share_prompt is True and not shares_prompts:
        raise PrefoptError(f"option 'share_prompt': runs each prompt once for the replies that share it; {algo_name} "
                           "does not group its forwards by prompt (leave it at auto or false)")
    if run.pad_to_multiple_of != 1:
        raise PrefoptError(f"option 'pad_to_multiple_of': widens the batches of offline objectives; {algo_name} samples "
                           "and scores its own rollouts (leave it at 1)")
    if run.reference == "precomputed":
        raise PrefoptError(f"option 'reference': {algo_name} scores new samples every step, so its reference cannot be "
                           "precomputed; use reference=auto, adapter or copy")


class OnlineSteps:
    """What the run loop drives: one batch of prompts per step, rolled out and learnt from by the algorithm."""

    def __init__(self, algorithm: OnlineAlgorithm, ctx: OnlineContext, train_prompts: list, train_records: list,
                 eval_prompts: list, eval_records: list, seed: int, prompt_position: int):
        self.algorithm, self.ctx = algorithm, ctx
        self.train_ids = [p.prompt_ids for p in train_prompts]
        self.train_messages = [r.prompt for r in train_records]
        self.eval_ids = [p.prompt_ids for p in eval_prompts]
        self.eval_messages = [r.prompt for r in eval_records]
        # where the stream stands: a step takes batch_size prompts, and DAPO's refills take more (ctx.more_prompts)
        self.position = prompt_position
        self.stream = _prompt_indices(len(train_prompts), ctx.run.batch_size, seed, skip=prompt_position)
        ctx.more_prompts = self.draw

    def draw(self, n: int) -> tuple[list[list[int]], list]:
        """The stream's next n training prompts: (token ids, chat messages)."""
        ids = [next(self.stream) for _ in range(n)]
        self.position += n
        return [self.train_ids[i] for i in ids], [self.train_messages[i] for i in ids]

    def update(self, step: int) -> dict[str, float]:
        ctx = self.ctx
        ctx.step = step
        ctx.model.train()
        tokens_before = ctx.tokens
        row = self.algorithm.train_step(ctx, *self.draw(ctx.run.batch_size))
        lr = ctx.scheduler.get_last_lr()[0]
        ctx.scheduler.step()
        return {**row, "lr": lr, "tokens": ctx.tokens - tokens_before}

    def evaluate(self) -> dict[str, float]:
        self.ctx.step = -1  # evaluation draws from its own seed, never a training step's
        metrics = self.algorithm.evaluate(self.ctx, self.eval_ids, self.eval_messages)
        return {f"eval_{k}": v for k, v in metrics.items()}

    def checkpoint_state(self) -> dict:
        return {"algorithm": self.algorithm.state_dict(), "prompt_position": self.position}


def train_online(algo_name: str, algorithm: OnlineAlgorithm, run: RunConfig, out: Path, resume: bool) -> dict:
    """Train an online algorithm; returns the run summary (the same schema as offline runs)."""
    check_online_options(algo_name, run, context().world, algorithm.shares_prompts)
    folder = RunFolder(out, resume)
    folder.check()
    random.seed(run.seed)
    torch.manual_seed(run.seed)
    tokenizer = load_tokenizer(run.model)
    train_records, eval_records, applied = load_split(run, tokenizer, "prompt")
    train_records, long_train = long_prompts(train_records, tokenizer, run, run.data)
    eval_records, long_eval = long_prompts(eval_records, tokenizer, run, run.eval_data or run.data)
    if len(train_records) < run.batch_size:
        raise PrefoptError(f"{run.data}: {len(train_records)} training prompts, fewer than batch_size={run.batch_size}")
    train_prompts, truncation = tokenize_prompts(train_records, tokenizer, run.max_length, run.max_prompt_length,
                                                 run.data)
    eval_prompts, _ = tokenize_prompts(eval_records, tokenizer, run.max_length, run.max_prompt_length, run.data)
    truncation.long_prompts = long_train + long_eval
    truncation.dropped_prompts = truncation.long_prompts if run.long_prompts == "drop" else 0
    run = steps_for_epochs(run, len(train_prompts), run.batch_size)
    device = pick_device()
    precision = resolve_precision(run.precision, device)
    if use_release(run.release_host_memory, device):
        release_freed_memory()

    folder.create()
    try:
        started = time.perf_counter()
        folder.write_config(algo_name, run, algorithm.config)
        folder.start_tracking(algo_name, run, algorithm.config)
        model = load_policy(run, algorithm, device, precision)
        check_share_prompt(run, model)  # true only for the algorithms that share, whose model is the LM itself
        chat_template.say(applied)  # after every check: an error stays one line
        ctx = OnlineContext(run, model, tokenizer, device, precision, needs_reference=algorithm.needs_reference)
        algorithm.setup(ctx)
        folder.fingerprint = run_fingerprint(algo_name, run, algorithm.config, model_fingerprint(run.model),
                                             train_prompts + eval_prompts)
        state = folder.restore(model, ctx.optimizer, ctx.scheduler)
        algorithm.load_state_dict(state.get("algorithm", {}))
        # a checkpoint from before refills were counted: each step took batch_size prompts
        position = state.get("prompt_position", state["step"] * run.batch_size)
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise PrefoptError(f"{out}: the checkpoint's prompt_position must be a whole number >= 0, got {position!r}")
        steps = OnlineSteps(algorithm, ctx, train_prompts, train_records, eval_prompts, eval_records, run.seed,
                            position)
        loop = train_loop(folder, algo_name, run, steps, state, model, ctx.optimizer, ctx.scheduler,
                          show_progress=run.progress)
        if loop.eval_after:
            folder.log({"step": loop.steps, **loop.eval_after})
        saved = folder.save_outputs(model, tokenizer, run.merge, merged_dtype(run, precision))
        summary = make_summary(
            algo_name, folder, loop, started,
            train_examples=len(train_prompts),
            eval_examples=len(eval_prompts),
            eval_pairs=0,
            global_batch=run.batch_size,
            num_processes=1,
            truncation=asdict(truncation),
            device=str(device),
            precision=precision,
            reference=ctx.reference.mode if ctx.reference is not None else None,  # None: none built, as offline
            outputs=saved,
        )
        options = as_flat_dict(algo_name, run, algorithm.config)
        finish_outputs(saved, summary, options, algo_name, algorithm)
        folder.finish(summary)
        push_if_asked(saved, options)
        return summary
    except Exception:  # any failure: a folder with nothing to resume must not block the rerun
        folder.discard_if_empty()
        raise
