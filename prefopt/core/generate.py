"""Batched sampling with a KV cache, for rollouts (online methods) and evaluation.

Our own decoding loop rather than ``model.generate``, for three reasons:
the log-prob of every sampled token comes out of the same forward that chose
it (an online loss needs it, and a second forward would double the cost);
the random stream is a private ``torch.Generator`` seeded from the config, so
a rollout is reproducible and leaves the global RNG alone; and the loop is
the same for a plain, a LoRA and a QLoRA model.

Layout. Prompts are LEFT-padded so that every row's next token lands in the
same column: one ``(B, 1)`` forward per step with the KV cache. Models do not
derive position ids from a left-padded attention mask, so they are passed
explicitly (``cumsum(mask) - 1``, clamped at 0 on the padding): each row then
sees the positions it has alone and in the right-padded training forward.
(Rotary embeddings only see position differences, so for Llama a shift
changes little; learned absolute positions would change everything.)
:meth:`Rollout.sequences` re-packs each row RIGHT-padded (prompt, response,
pads), the layout :func:`prefopt.core.logprobs.forward_logps` and the collators
use, where position ids are simply ``arange``.

Groups. ``generate(..., num_samples=k)`` draws k responses per prompt from
one prefill: each micro-batch of prompts is run through the model once, then
the KV cache, the last-position logits, the attention mask and the position
ids are repeated k times along the batch dimension
(``repeat_interleave``: rows prompt0 x k, prompt1 x k, ...) and the k copies
are decoded together. The rollout has the layout, the distribution and (up to
float rounding in the prefill) the draws of a call with every prompt repeated
k times (see :func:`generate`).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from prefopt.core.models import disable_bnb_cpu_repack, eval_mode
from prefopt.core.padding import pad_left, position_ids
from prefopt.errors import PrefoptError


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 64  # most tokens generated per response, the stop token included
    temperature: float = 1.0  # logits are divided by it; 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with mass >= top_p
    seed: int = 0  # seeds the sampler's private generator: same seed, same rollout

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise PrefoptError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise PrefoptError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PrefoptError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    """N sampled responses and what an online loss needs about them."""

    prompt_ids: torch.Tensor  # (N, P) left-padded prompts (pad_id)
    prompt_mask: torch.Tensor  # (N, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (N, G) sampled tokens, right-padded with pad_id after the stop token
    response_mask: torch.Tensor  # (N, G) 1 on generated tokens up to AND including the first stop token
    logprobs: torch.Tensor  # (N, G) log p(token) under softmax(logits / temperature) (T=1 for greedy), 0 where masked
    stopped: torch.Tensor | None = None  # (N,) bool: ended with a stop token (False: cut at max_new_tokens)

    def lengths(self) -> torch.Tensor:
        """(N,) response tokens, the stop token included."""
        return self.response_mask.sum(1)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, loss_mask), each (N, T), RIGHT-padded.

        Each row is its real prompt tokens, then its response tokens (through
        the stop token), then padding, so position ids are ``arange`` as
        :func:`prefopt.core.logprobs.forward_logps` and the collators assume.
        ``loss_mask`` marks the response tokens; T = max(prompt + response).
        """
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (N, P+G)
        real = torch.cat([self.prompt_mask, self.response_mask], dim=1).bool()  # (N, P+G)
        is_response = torch.zeros_like(real)  # (N, P+G)
        is_response[:, self.prompt_ids.shape[1] :] = self.response_mask.bool()
        # A stable sort on "is padding" moves each row's real tokens to the front, in order.
        order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices  # (N, P+G)
        width = int(real.sum(1).max()) if len(real) else 0
        order = order[:, :width]  # (N, T)
        input_ids = ids.gather(1, order)  # (N, T); the moved-back slots keep their pad ids
        attention_mask = real.gather(1, order).long()  # (N, T)
        loss_mask = is_response.gather(1, order).long()  # (N, T)
        return input_ids, attention_mask, loss_mask

    def batch(self) -> dict[str, torch.Tensor]:
        """:meth:`sequences` as the dict :func:`prefopt.core.logprobs.forward_logps` takes."""
        input_ids, attention_mask, loss_mask = self.sequences()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}

    def texts(self, tokenizer) -> list[str]:
        """Decoded responses, without the stop token and the padding."""
        out = []
        for row, n in enumerate(self.lengths().tolist()):
            ids = self.response_ids[row, :n].tolist()
            if ids and self._ends_with_stop(row, ids[-1], tokenizer):
                ids = ids[:-1]
            out.append(tokenizer.decode(ids))
        return out

    def _ends_with_stop(self, row: int, last: int, tokenizer) -> bool:
        if self.stopped is not None:
            return bool(self.stopped[row])
        return last == tokenizer.eos_token_id  # a hand-built Rollout without `stopped`


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits with every token outside the nucleus set to -inf.

    logits: (..., V). The nucleus is the smallest set of most likely tokens
    whose probability mass reaches top_p (Holtzman et al. 2020, Sec. 3.1); the
    most likely token is always kept. A token is dropped when the tokens
    ranked above it already hold >= top_p of the mass.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.float().softmax(dim=-1)  # (..., V)
    mass_before = probs.cumsum(dim=-1) - probs  # (..., V) mass of the tokens ranked above
    drop_sorted = mass_before >= top_p  # (..., V); rank 0 has mass_before 0 < top_p: always kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # (..., V) back in vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-prob.

    logits: (B, V). Returns (tokens (B,), logps (B,)). The log-prob is under
    softmax(logits / temperature) BEFORE nucleus truncation (temperature 1
    for greedy): that is the policy a teacher-forced forward recomputes, so
    the ratio of an online loss starts at exactly 1.
    """
    logits = logits.float()  # (B, V)
    if config.temperature == 0:
        tokens = logits.argmax(dim=-1)  # (B,)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / config.temperature  # (B, V)
    probs = top_p_filter(scaled, config.top_p).softmax(dim=-1)  # (B, V)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    return tokens, scaled.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS plus any the generation config lists.

    Chat models often stop on several tokens (e.g. <|im_end|> and <|endoftext|>).
    """
    ids = [tokenizer.eos_token_id]
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    ids = list(dict.fromkeys(int(i) for i in ids if i is not None))
    if not ids:
        raise PrefoptError("the tokenizer has no end-of-sequence token; responses could not be terminated")
    return ids


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument: `cache` in recent transformers (5.24 renamed it and
    warns on `past_key_values`), `past_key_values` in older releases and other models.

    A peft model forwards keyword arguments to the model it wraps, so the
    wrapped model's signature decides.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(output):
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@dataclass
class _Chunk:
    """What decoding one micro-batch produced (G_b = steps actually taken)."""

    tokens: torch.Tensor  # (B, G_b)
    mask: torch.Tensor  # (B, G_b)
    logps: torch.Tensor  # (B, G_b)
    stopped: torch.Tensor  # (B,) bool


def _repeat_cache(cache, k: int):
    """The KV cache with every row repeated k times along the batch (row i -> rows i*k .. i*k+k-1).

    A transformers ``Cache`` (``DynamicCache`` and the others) is expanded in
    place by its own ``batch_repeat_interleave``; the legacy layout (a tuple
    of per-layer (key, value) tensors, batch first) gets a new tuple.
    """
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(k)
        return cache
    if isinstance(cache, (tuple, list)) and all(
        isinstance(layer, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in layer) for layer in cache
    ):
        return tuple(tuple(t.repeat_interleave(k, dim=0) for t in layer) for layer in cache)
    raise PrefoptError(
        f"num_samples > 1 needs a KV cache that can be repeated along the batch; got {type(cache).__name__}"
    )


def _decode(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    config: SamplingConfig,
    stop: torch.Tensor,
    pad_id: int,
    generator: torch.Generator,
    cache_kwarg: str,
    num_samples: int = 1,
) -> _Chunk:
    """Token-by-token decoding of one left-padded micro-batch with the KV cache.

    ids, mask: (B, P) on the model's device. With num_samples = k > 1 the
    prompts are prefilled once and the cache, logits, mask and positions are
    repeated k times along the batch: the chunk has B * k rows, prompt i's
    in rows i*k .. i*k+k-1. Rows that already emitted a stop token keep being
    fed pad_id (their outputs are masked) until every row has stopped or
    max_new_tokens is reached.
    """
    positions = position_ids(mask)  # (B, P)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]  # (B, V)
    cache = _returned_cache(out)
    if num_samples > 1:  # one prefill, k continuations: B -> B * k rows
        logits = logits.repeat_interleave(num_samples, dim=0)  # (B*k, V)
        mask = mask.repeat_interleave(num_samples, dim=0)  # (B*k, P)
        positions = positions.repeat_interleave(num_samples, dim=0)  # (B*k, P)
        cache = _repeat_cache(cache, num_samples)
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=ids.device)  # (B*k,)
    tokens, logps, alive = [], [], []
    next_position = positions[:, -1:] + 1  # (B*k, 1)
    for step in range(config.max_new_tokens):
        token, logp = sample_next(logits, config, generator)  # (B*k,), (B*k,)
        alive.append(~done)
        tokens.append(token.masked_fill(done, pad_id))
        logps.append(logp.masked_fill(done, 0.0))
        done = done | torch.isin(token, stop)
        if bool(done.all()) or step == config.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, P+step+1)
        out = model(
            input_ids=tokens[-1][:, None],
            attention_mask=mask,
            position_ids=next_position,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg: cache},
        )
        logits, cache = out.logits[:, -1], _returned_cache(out)
        next_position = next_position + 1
    return _Chunk(torch.stack(tokens, 1), torch.stack(alive, 1).long(), torch.stack(logps, 1), done)


def _widen(t: torch.Tensor, width: int, value) -> torch.Tensor:
    """(B, G_b) -> (B, width), filled with value on the right (micro-batches stopped at different steps)."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    config: SamplingConfig,
    *,
    batch_size: int = 8,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    progress: bool = False,
    num_samples: int = 1,
) -> Rollout:
    """Sample num_samples (k) responses per prompt (token-id lists, e.g. from render_prompt).

    The rollout has N * k rows, prompt i's k responses in rows i*k .. i*k+k-1
    (its prompt_ids repeated alike), the layout of a call with every prompt
    repeated k times. With k > 1 each prompt is prefilled once and its KV
    cache repeated k times (see the module docstring) instead of being
    recomputed k times.

    batch_size counts rows decoded together (sequences, not prompts): a
    micro-batch holds max(1, batch_size // k) prompts, in order. Randomness:
    one ``torch.Generator`` seeded with config.seed draws every token, each
    step one ``multinomial`` over the micro-batch's rows in row order, so the
    k rows of a group draw from distinct parts of the stream, and the rollout
    depends only on the model, the prompts, the config, batch_size and k. When
    k divides batch_size the micro-batches, hence the draws, are those of the
    repeated-prompt call with the same batch_size: same seed, same samples,
    up to float rounding differences between prefilling B and B * k rows
    (greedy decoding gives the same tokens). k = 1 is the plain call.

    ``logprobs`` are the log-probs of the sampled tokens from the forward that
    chose them, under softmax(logits / temperature) (T = 1 for greedy) before
    top-p truncation: the training policy's log-probs only at temperature 1
    (and then to float rounding of the cached, left-padded decode).

    ``autocast`` is a zero-argument
    factory of a context manager, e.g.
    ``functools.partial(prefopt.core.models.autocast, "bf16", device)``.
    A QLoRA model is protected from the bitsandbytes CPU repack first
    (see :func:`prefopt.core.models.disable_bnb_cpu_repack`), so training after
    generating still reaches every LoRA layer.
    """
    config.validate()
    if batch_size < 1:
        raise PrefoptError(f"batch_size must be at least 1, got {batch_size}")
    if num_samples < 1:
        raise PrefoptError(f"num_samples must be at least 1, got {num_samples}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise PrefoptError("generate needs at least one prompt, and no prompt may be empty")
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    stop = torch.tensor(stop_token_ids(model, tokenizer), device=device)  # (S,)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(stop[0])
    generator = torch.Generator(device=device).manual_seed(config.seed)
    cache_kwarg = _cache_kwarg(model)
    disable_bnb_cpu_repack(model)
    chunks = []
    per_batch = max(1, batch_size // num_samples)  # prompts per micro-batch
    starts = range(0, len(prompts), per_batch)
    with eval_mode(model), autocast():
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress, file=sys.stderr):
            group = prompts[start : start + per_batch]
            ids, mask = pad_left(group, pad_id)  # (B, P_b)
            chunks.append(_decode(model, ids.to(device), mask.to(device), config, stop, pad_id, generator, cache_kwarg,
                                  num_samples))
    prompt_ids, prompt_mask = pad_left(prompts, pad_id)  # (N, P)
    g = max(c.tokens.shape[1] for c in chunks)
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(num_samples, dim=0).to(device),  # (N*k, P)
        prompt_mask=prompt_mask.repeat_interleave(num_samples, dim=0).to(device),  # (N*k, P)
        response_ids=torch.cat([_widen(c.tokens, g, pad_id) for c in chunks]),  # (N*k, G)
        response_mask=torch.cat([_widen(c.mask, g, 0) for c in chunks]),  # (N*k, G)
        logprobs=torch.cat([_widen(c.logps, g, 0.0) for c in chunks]),  # (N*k, G)
        stopped=torch.cat([c.stopped for c in chunks]),  # (N*k,)
    )
