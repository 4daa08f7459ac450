"""The offline training loop. It reads an algorithm's capabilities
(``inputs``, ``head``, ``needs_reference``, ``online``) and never its name.

Order of work in :func:`train_offline`: every cheap check first (algorithm, output
folder, data, tokenisation), so bad input fails before anything is written;
then the model, the reference, the loop. A run folder is finished when its
``summary.json`` exists; that file is written last, atomically.

Launched in several processes (``prefopt.training.distributed``), each optimizer step's
global batch is split across them and their gradients summed, so the run
matches a one-process run; only process 0 writes.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from prefopt.core.algorithm import Algorithm, PairLogps, PairRewards, preference_accuracy
from prefopt.core.host_memory import release_freed_memory, use_release
from prefopt.core.logprobs import (
    LAYOUT,
    PADDING_FREE,
    host_layout,
    packs_shared_prompts,
    use_padding_free,
    use_shared_prompt,
)
from prefopt.core.models import autocast, load_tokenizer, model_fingerprint, pick_device, resolve_precision
from prefopt.core.padding import widen_right
from prefopt.core.reference import build_reference, resolve_reference_mode, starting_model
from prefopt.core.shared_prompt import SHARED_PROMPT, shared_prompt_layout
from prefopt.data import PreferenceRecord, as_kind, bucketed_batches, collate_pairs, tokenize_pairs
from prefopt.errors import PrefoptError
from prefopt.training import chat_template
from prefopt.training.config import RunConfig, as_flat_dict, steps_for_epochs
from prefopt.training.distributed import Context, check_even_shares, context
from prefopt.training.inputs import PairInputs, RewardPairInputs, inputs_for
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

# ---------------------------------------------------------------- data order


@dataclass
class Prepared:
    """Tokenised data for one run: the algorithm's examples and the held-out pairs."""

    examples: list  # the algorithm's kind; train first, then held-out
    train_ids: list[int]
    eval_ids: list[int]
    eval_pairs: list  # TokenizedPair of the held-out rows when the data is paired (else empty)
    truncation: object
    template_notice: str | None = None  # what chat_template did, said once the model has loaded too


def prepare_data(run: RunConfig, inputs, tokenizer) -> Prepared:
    """Load, split, convert to the algorithm's input kind and tokenise; all checks, no writes."""
    main = context().is_main
    train_records, eval_records, applied = load_split(run, tokenizer, "native")
    train_items = as_kind(train_records, inputs.data_kind, run.data)
    eval_items = as_kind(eval_records, inputs.data_kind, run.eval_data or run.data)
    train_items, long_train = long_prompts(train_items, tokenizer, run, run.data, main)
    eval_items, long_eval = long_prompts(eval_items, tokenizer, run, run.eval_data or run.data, main)
    if not train_items:
        raise PrefoptError(f"{run.data}: no training examples of the kind this algorithm needs ({inputs.data_kind})")
    examples, truncation = inputs.tokenize(
        train_items + eval_items, tokenizer, run.max_length, run.max_prompt_length, run.data
    )
    truncation.long_prompts = long_train + long_eval
    truncation.dropped_prompts = truncation.long_prompts if run.long_prompts == "drop" else 0
    eval_pairs = []
    if eval_records and isinstance(eval_records[0], PreferenceRecord):
        eval_pairs, _ = tokenize_pairs(eval_records, tokenizer, run.max_length, run.max_prompt_length, run.data)
    n_train = len(train_items)
    return Prepared(examples, list(range(n_train)), list(range(n_train, len(examples))), eval_pairs, truncation,
                    applied)  # fmt: skip


def batch_stream(train_ids: list[int], lengths: list[int], global_batch: int, seed: int) -> Iterator[list[int]]:
    """Endless global batches of example ids, epoch after epoch.

    Each epoch's order is a pure function of (seed, epoch): length-bucketed,
    then shuffled. Incomplete batches are dropped (unless there is no complete
    one) so every optimizer step sees the same number of pairs.
    """
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        batches = bucketed_batches([lengths[i] for i in train_ids], global_batch, gen)
        full = [b for b in batches if len(b) == global_batch] or batches
        for batch in full:
            yield [train_ids[i] for i in batch]
        epoch += 1


# ---------------------------------------------------------------- the trainer


def batch_layouts(run: RunConfig, algorithm: Algorithm, inputs, model, device) -> tuple[bool, bool, bool]:
    """(share_prompt, padding_free, packed shared rows) as a run's batches are laid out. Pair batches of a log-prob
    objective run each prompt once (``share_prompt``) unless padding_free is set true; log-prob batches that are
    not whole pair batches (SFT's, KTO's halves) are packed where ``padding_free`` says (auto: on CUDA with
    flash-attention). Reward heads read padded rows. On a CPU the shared rows run packed, as one sequence
    attended span by span (``SpanAttention``), unless padding_free is set false."""
    share = (isinstance(inputs, PairInputs) and algorithm.head == "lm" and run.padding_free is not True
             and use_shared_prompt(run.share_prompt, model, device))
    packed = algorithm.head == "lm" and use_padding_free(run.padding_free, model, device)
    return share, packed, packs_shared_prompts(share, run.padding_free, model)


class Trainer:
    """Holds what one run needs: model, data, reference, optimizer; one step or one evaluation at a time."""

    def __init__(self, algorithm: Algorithm, run: RunConfig, model, tokenizer, data: Prepared,
                 reference, device, precision, dist: Context | None = None):
        self.algorithm, self.run = algorithm, run
        self.dist = dist or Context()
        self.model, self.tokenizer, self.examples = model, tokenizer, data.examples
        self.reference, self.device, self.precision = reference, device, precision
        self.inputs = inputs_for(algorithm)
        self.collate = partial(self.inputs.collate, pad_id=tokenizer.pad_token_id)
        self.share_prompt, self.padding_free, self.pack_shared_prompts = batch_layouts(
            run, algorithm, self.inputs, model, device)
        # Held-out preference accuracy, the same measure for every algorithm:
        # scalar heads compare rewards; LM heads compare the log-ratio to the
        # starting model (scored now, before any update).
        # Taken before any forward: FSDP leaves the root unit's parameters swapped for gathered copies after a
        # no-grad forward, and the optimizer must hold the sharded ones.
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.eval_pairs = data.eval_pairs
        self.pair_scorer = RewardPairInputs() if algorithm.head == "scalar" else PairInputs()
        self.start_scores = None
        if self.eval_pairs and algorithm.head == "lm":
            with starting_model(model) as start:
                self.start_scores = self._score_pairs(start)
        self.optimizer, self.scheduler = make_optimizer(self.params, run)

    def _batch(self, ids: list[int]) -> dict:
        batch = self.collate([self.examples[i] for i in ids])
        return self._on_device(batch)

    def _on_device(self, batch: dict) -> dict:
        """The batch's tensors on the device, with its Layout (token positions, found on the host so the forward
        never waits for the device), marked padding-free when the run packs its rows, and with its one-row-per-pair
        form when the run shares prompts (see prefopt.core.shared_prompt)."""
        if self.run.pad_to_multiple_of > 1:
            batch = widen_right(batch, self.run.pad_to_multiple_of, self.tokenizer.pad_token_id)
        layout = host_layout(batch["attention_mask"], batch["loss_mask"]) if "loss_mask" in batch else None
        shared = None
        if self.share_prompt and layout is not None:
            shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                          layout.first, layout.response, packed=self.pack_shared_prompts)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if layout is not None:
            batch[LAYOUT] = layout.to(self.device)
        if shared is not None:
            batch[SHARED_PROMPT] = shared.to(self.device)
        if self.padding_free:
            batch[PADDING_FREE] = True
        return batch

    def compute_loss(self, batch: dict):
        with autocast(self.precision, self.device):
            policy = self.inputs.policy(self.model, batch)
        reference = self.inputs.reference(self.reference, batch) if self.reference is not None else None
        return self.algorithm.loss(policy, reference, batch)

    @torch.no_grad()
    def _score_pairs(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) scores of the held-out pairs, each (P,): log-prob sums or rewards.

        With several processes each scores every W-th batch; all get every score, in order.
        """
        scores = {}
        was_training = model.training
        model.eval()
        for number, start in enumerate(range(0, len(self.eval_pairs), self.run.batch_size)):
            if not self.dist.mine(number):
                continue
            batch = collate_pairs(self.eval_pairs[start : start + self.run.batch_size], self.tokenizer.pad_token_id)
            batch = self._on_device(batch)
            with autocast(self.precision, self.device):
                scored = self.pair_scorer.policy(model, batch)
            if isinstance(scored, PairLogps):
                scored = PairRewards(scored.chosen.sum, scored.rejected.sum)
            scores[number] = (scored.chosen.float().cpu(), scored.rejected.float().cpu())
        model.train(was_training)
        chosen, rejected = zip(*self.dist.collect(scores))
        return torch.cat(chosen), torch.cat(rejected)

    def preference(self) -> dict[str, float]:
        """Held-out preference accuracy and mean margin (ties count half)."""
        if not self.eval_pairs:
            return {}
        chosen, rejected = self._score_pairs(self.model)  # (P,), (P,)
        if self.start_scores is not None:  # log-ratio to the starting model
            chosen, rejected = chosen - self.start_scores[0], rejected - self.start_scores[1]
        margin = chosen - rejected  # (P,)
        return {"eval_pref_accuracy": float(preference_accuracy(margin).mean()), "eval_pref_margin": float(margin.mean())}

    def train_step(self, ids: list[int]) -> dict[str, float]:
        """One optimizer update over a global batch, split into micro-batches.

        Each micro-batch's summed loss is divided by the global batch size, so
        accumulation gives the same gradient as one big batch. With several
        processes each runs its contiguous share of `ids` and the gradients and
        metric sums are added across processes before the update.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        tokens = 0
        share = self.dist.shard(ids)
        for start in range(0, len(share), self.run.batch_size):
            batch = self._batch(share[start : start + self.run.batch_size])
            out = self.compute_loss(batch)
            (out.losses.sum() * self.dist.loss_scale / len(ids)).backward()
            sums["loss"] += float(out.losses.detach().sum())
            for key, value in out.metrics.items():
                sums[key] += float(value.detach().float().sum())
            tokens += int(batch["attention_mask"].sum())
        if self.dist.distributed:
            if not self.dist.sharded:  # FSDP has summed (reduce-scattered) them in the backward
                self.dist.sum_gradients(self.params)
            sums, tokens = self.dist.sum_metrics(sums, tokens)
        max_norm = self.run.max_grad_norm if self.run.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))  # sharded too (DTensor norms)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {**{k: v / len(ids) for k, v in sums.items()}, "grad_norm": grad_norm, "lr": lr, "tokens": tokens}

    @torch.no_grad()
    def evaluate(self, ids: list[int]) -> dict[str, float]:
        """Mean loss and metrics on held-out examples, and held-out preference accuracy (dropout off)."""
        if not ids:
            return self.preference()
        self.model.eval()
        parts = {}  # batch number -> its sums (each process does every W-th batch)
        for number, start in enumerate(range(0, len(ids), self.run.batch_size)):
            if self.dist.mine(number):
                out = self.compute_loss(self._batch(ids[start : start + self.run.batch_size]))
                part = {"loss": float(out.losses.sum())}
                for key, value in out.metrics.items():
                    part[key] = float(value.float().sum())
                parts[number] = part
        sums: dict[str, float] = defaultdict(float)
        for part in self.dist.collect(parts):  # added in batch order, as one process would
            for key, value in part.items():
                sums[key] += value
        self.model.train()
        return {**{f"eval_{k}": v / len(ids) for k, v in sums.items()}, **self.preference()}


class OfflineSteps:
    """What the run loop drives: the global batches of the data stream, one update each."""

    def __init__(self, trainer: Trainer, data: Prepared, global_batch: int, seed: int, start_step: int):
        lengths = [trainer.inputs.length(e) for e in data.examples]
        self.trainer, self.eval_ids = trainer, data.eval_ids
        self.stream = batch_stream(data.train_ids, lengths, global_batch, seed)
        for _ in range(start_step):  # skip the batches a checkpoint already trained on
            next(self.stream)

    def update(self, step: int) -> dict[str, float]:
        return self.trainer.train_step(next(self.stream))

    def evaluate(self) -> dict[str, float]:
        return self.trainer.evaluate(self.eval_ids)

    def checkpoint_state(self) -> dict:
        return {}


def train_offline(algo_name: str, algorithm: Algorithm, run: RunConfig, out: Path, resume: bool) -> dict:
    """Train an offline `algorithm` as configured by `run`; returns the run summary (process 0's, on every process)."""
    dist = context()
    out = dist.broadcast(out)  # process 0's name: a default one holds the time, which may differ by a second
    folder = RunFolder(out, resume, writer=dist.is_main)

    # --- everything that can reject the input, before anything is written (every process checks)
    tokenizer = None
    with dist.agree():
        inputs = inputs_for(algorithm, algo_name)
        if run.padding_free is True and algorithm.head != "lm":
            raise PrefoptError(f"option 'padding_free': packs the rows whose token log-probs a policy objective "
                               f"reads; {algo_name} trains a reward head on padded rows (leave it at auto or false)")
        if run.share_prompt is True and (algorithm.head != "lm" or not isinstance(inputs, PairInputs)):
            raise PrefoptError(f"option 'share_prompt': runs the prompt of each preference pair once for the token "
                               f"log-probs of both replies; {algo_name} has no such pairs (leave it at auto or false)")
        if run.share_prompt is True and run.padding_free is True:
            raise PrefoptError("options 'share_prompt' and 'padding_free' are two layouts of the same batch; "
                               "set at most one of them to true")
        folder.check()
        random.seed(run.seed)
        torch.manual_seed(run.seed)
        if dist.is_main:  # first alone: a .gguf model is converted once, by process 0
            tokenizer = load_tokenizer(run.model)
    with dist.agree():
        if tokenizer is None:
            tokenizer = load_tokenizer(run.model)
        data = prepare_data(run, inputs, tokenizer)
        global_batch = run.batch_size * run.grad_accum
        run = steps_for_epochs(run, len(data.train_ids), global_batch)
        if dist.sharded:
            check_even_shares(global_batch, dist.world)
        device = dist.device if dist.distributed else pick_device()
        precision = resolve_precision(run.precision, device)
        if use_release(run.release_host_memory, device):
            release_freed_memory()

    with dist.agree():  # only process 0 creates the folder; the others wait here until it exists
        if dist.is_main:
            folder.create()
    try:
        return _train_in(folder, algo_name, algorithm, run, tokenizer, data, global_batch, device, precision, dist)
    except Exception:  # any failure: a folder with nothing to resume must not block the rerun
        folder.discard_if_empty()
        raise


def _build_reference(run, algorithm, model, tokenizer, data: Prepared, device, precision, dist: Context):
    """The reference for the run. A precomputed one is computed and cached by process 0 while the
    others wait, then loaded from that cache by them (never two writers of one cache file)."""
    mode = resolve_reference_mode(run.reference, run.adapter)
    build = partial(
        build_reference, mode, model, run.adapter,
        examples=data.examples,
        collate=partial(inputs_for(algorithm).collate, pad_id=tokenizer.pad_token_id),
        batch_size=run.batch_size,
        fingerprint=f"{model_fingerprint(run.model)}|{run.max_length}|{run.max_prompt_length}",
        autocast=partial(autocast, precision, device),
        progress=run.progress and dist.is_main,
    )
    if mode != "precomputed" or not dist.distributed:
        return build()
    reference = None
    with dist.agree():
        if dist.is_main:
            reference = build()
    with dist.agree():
        if not dist.is_main:
            reference = build()
    return reference


def _train_in(folder: RunFolder, algo_name, algorithm, run, tokenizer, data: Prepared, global_batch, device,
              precision, dist: Context) -> dict:
    started = time.perf_counter()
    reference = None
    with dist.agree():
        folder.write_config(algo_name, run, algorithm.config)
        folder.start_tracking(algo_name, run, algorithm.config)
        model = load_policy(run, algorithm, device, precision, sharded=dist.sharded)
        check_share_prompt(run, model)
        chat_template.say(data.template_notice, dist.is_main)  # after every check: an error stays one line
        if algorithm.needs_reference and (run.reference != "precomputed" or not dist.distributed):
            reference = _build_reference(run, algorithm, model, tokenizer, data, device, precision, dist)
    if algorithm.needs_reference and reference is None:  # precomputed, several processes: agrees by itself
        reference = _build_reference(run, algorithm, model, tokenizer, data, device, precision, dist)
    # every process starts from process 0's weights (they are equal already: same seed, same files)
    dist.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    dist.shard_model(model)  # FSDP only; after the reference, before the optimizer sees the parameters
    if getattr(reference, "mode", None) == "copy":
        dist.shard_model(reference.model)  # the frozen copy too: each process holds a shard of it

    trainer = Trainer(algorithm, run, model, tokenizer, data, reference, device, precision, dist=dist)
    folder.fingerprint = run_fingerprint(algo_name, run, algorithm.config, model_fingerprint(run.model), data.examples)
    state = folder.restore(model, trainer.optimizer, trainer.scheduler)
    steps = OfflineSteps(trainer, data, global_batch, run.seed, state["step"])
    loop = train_loop(folder, algo_name, run, steps, state, model, trainer.optimizer, trainer.scheduler,
                      show_progress=run.progress and dist.is_main, gathered_checkpoints=dist.sharded)

    if dist.sharded:  # process 0 saves an unsharded copy holding the gathered weights
        full = dist.full_state_dict(model)
        if dist.is_main:
            model = load_policy(run, algorithm, "cpu", precision, sharded=True)  # the dtypes of `full`
            model.load_state_dict(full)
    if not dist.is_main:
        return dist.broadcast(None)  # process 0's summary, once it has written everything
    if loop.eval_after:
        folder.log({"step": loop.steps, **loop.eval_after})
    saved = folder.save_outputs(model, tokenizer, run.merge, merged_dtype(run, precision))
    summary = make_summary(
        algo_name, folder, loop, started,
        train_examples=len(data.train_ids),
        eval_examples=len(data.eval_ids),
        eval_pairs=len(data.eval_pairs),
        global_batch=global_batch,
        num_processes=dist.world,
        truncation=asdict(data.truncation),
        device=str(device),
        precision=precision,
        reference=reference.mode if reference is not None else None,
        outputs=saved,
    )
    options = as_flat_dict(algo_name, run, algorithm.config)
    finish_outputs(saved, summary, options, algo_name, algorithm)
    folder.finish(summary)
    push_if_asked(saved, options)
    return dist.broadcast(summary)
