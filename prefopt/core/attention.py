"""prefopt's SDPA for CPU runs: float32 attention over short keys under bf16, grouped key/value heads unrepeated,
and packed tokens attended span by span.

Under CPU bf16 autocast SDPA runs in bf16, and PyTorch's CPU flash-attention kernel is slower on bf16 than on
float32 while the keys are few: forward + backward, 9 heads of 64 with a boolean mask, batch x keys 8 x 109
17.7 vs 6.4 ms, 4 x 181 14.7 vs 7.1, 8 x 200 24.7 vs 16.4, 4 x 400 28.6 vs 25.8. In a LoRA DPO step of the
135M model, the two alternating over the same batches with float32 at every length: 8 pairs x max length 128
1.14-1.20x as fast, 8 x 256 1.11-1.16x, but 4 x 512 0.84-0.99x (results/speed/cpu_attention_prethreshold/,
`benchmarks/cpu_attention.py`). Kernel timings put the crossover near 256 keys (they move by tens of percent
from run to run), so calls over 256 keys or more stay in bf16; with that, 8 x 128 1.14-1.19x, 4 x 512
1.07-1.21x (results/speed/cpu_attention/). Upcasting the three tensors costs little beside the
attention, and float32 attention is the more exact one.

On a CPU a grouped-query model's key and value heads also go to SDPA as they are, in every precision, where
transformers would repeat them into a copy per query head (see ``_sdpa``). A batch's real tokens packed into one
sequence (padding-free rows, shared-prompt groups) attend with one call per row or reply (``SpanAttention``):
no padding and no masked cells computed. On CUDA the function is transformers' own SDPA, unchanged.

The function is registered with transformers under its own name and set on the SDPA models prefopt loads for a
CPU; a model's saved config does not record it (transformers drops the attention implementation when it writes a
config).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

CPU_SDPA = "sdpa_cpu"
# Float32 only over fewer keys than this: from about 256 keys on, the two kernels took about the same time or
# bf16 was faster (`benchmarks/cpu_attention.py --kernel`).
FLOAT32_BELOW_KEYS = 256
_LOW_PRECISION = (torch.bfloat16, torch.float16)


# The keyword argument a forward of packed tokens passes to the model, which hands it to each layer's attention.
SPAN_ATTENTION = "prefopt_span_attention"

Span = tuple[int, int]  # [start, end) in a packed sequence


@dataclass(frozen=True)
class SpanAttention:
    """Packed tokens, one (1, S) sequence, that attend span by span: every layer but attention runs on the real
    tokens only, and attention makes one SDPA call per span of queries over the spans of keys it may see (their
    pieces of the packed key and value, no copy when there is one). Each call's queries are its last keys in
    order, and query j sees every key up to its own: with as many queries as keys that is a plain causal call
    (no mask, and the kernel skips the key blocks above the diagonal), with fewer a (Q, K) lower-right causal mask.

    - a packed row (``rows``): its own tokens, causal;
    - a group of rows sharing a prompt (``shared_prompt``, prefopt.core.shared_prompt): the prompt and the first
      reply as one causal call, each later reply over [prompt, itself].

    No padding and no (S, S) mask: each call computes only cells that are attended. One layer's attention of 8
    pair groups (1519 tokens; padded rows 8 x 261), forward + backward, 9 heads over 3, on a 2-core CPU: 39.4 ->
    22.6 ms with float32 inputs and 42.6 -> 22.4 ms with bf16 against the padded rows' masked call; 16 groups
    (3431 tokens) 133.3 -> 54.9 ms (results/speed/cpu_attention_spans_split/, `benchmarks/cpu_attention.py
    --span-kernel`).

    Passed to the model as ``prefopt_span_attention=``; transformers hands the keyword on to the attention
    function, and only sdpa_on_cpu reads it."""

    calls: tuple[tuple[Span, tuple[Span, ...]], ...]  # (query span, key spans); the query spans tile 0..S in order

    @staticmethod
    def rows(lengths: list[int]) -> SpanAttention:
        """Packed rows of these lengths, one after another, each attending within itself (an empty row has
        nothing to attend)."""
        calls, start = [], 0
        for length in lengths:
            if length:
                calls.append(((start, start + length), ((start, start + length),)))
            start += length
        return SpanAttention(tuple(calls))

    @staticmethod
    def shared_prompt(groups: list[tuple[int, list[int]]]) -> SpanAttention:
        """Packed [prompt, reply 1, ..., reply k] groups, (prompt length, reply lengths) each, one after
        another: the prompt and reply 1 causal, each later reply over the prompt and itself."""
        calls, start = [], 0
        for prompt, replies in groups:
            first_end = start + prompt + replies[0]
            calls.append(((start, first_end), ((start, first_end),)))
            reply_start = first_end
            for reply in replies[1:]:
                own = (reply_start, reply_start + reply)
                calls.append((own, ((start, start + prompt), own)))
                reply_start += reply
            start = reply_start
        return SpanAttention(tuple(calls))

    @cached_property
    def _pieces(self) -> tuple[list[int], tuple[tuple[tuple[int, int, int], ...], ...]]:
        """(each call's query count, each call's key spans as (piece, start, end) within the query pieces): the
        calls' query spans tile the packed sequence, and every key span lies inside one of them."""
        bounds = [start for (start, _), _ in self.calls]  # where each piece starts in the packed sequence
        sizes = [end - start for (start, end), _ in self.calls]
        keys = []
        for _, key_spans in self.calls:
            pieces = [bisect_right(bounds, a) - 1 for a, _ in key_spans]
            keys.append(tuple((i, a - bounds[i], b - bounds[i]) for i, (a, b) in zip(pieces, key_spans, strict=True)))
        return sizes, tuple(keys)

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> torch.Tensor:
        """query (1, heads, S, D), key and value (1, kv heads, S, D) -> the output (1, S, heads, D). As in
        sdpa_on_cpu, under bf16 or fp16 a call over fewer than FLOAT32_BELOW_KEYS keys attends in float32, the
        others in that dtype, and the output is in it."""
        sizes, key_spans = self._pieces
        low = _low_precision(query, key, value) if query.device.type == "cpu" else None
        if low is None:
            return torch.cat(_span_calls(module, _split((query, key, value), sizes), key_spans, **kwargs), dim=1)
        # The packed tensors converted once for all the calls, not once per call (in the forward and again in the
        # backward: thousands of small conversions per step).
        wide = [sum(b - a for _, a, b in spans) < FLOAT32_BELOW_KEYS for spans in key_spans]
        with torch.autocast("cpu", enabled=False):
            outs = [None] * len(key_spans)
            dtypes = {torch.float32 if w else low for w in wide}
            for dtype in dtypes:
                calls = [i for i, w in enumerate(wide) if (torch.float32 if w else low) == dtype]
                pieces = _split((query.to(dtype), key.to(dtype), value.to(dtype)), sizes)
                for i, out in zip(calls, _span_calls(module, pieces, key_spans, calls, **kwargs), strict=True):
                    outs[i] = out  # (1, Q, heads, D)
            if len(dtypes) > 1:
                outs = [out.float() for out in outs]  # exact for the low-precision outputs
            return torch.cat(outs, dim=1).to(low)


def _split(tensors: tuple[torch.Tensor, ...], sizes: list[int]) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Each (1, heads, S, D) tensor cut into one piece per span call, by split: its backward joins the pieces'
    gradients in one copy, where a slice of the whole sequence per call would each write a zero-filled gradient
    of all S tokens."""
    return tuple(t.split(sizes, dim=2) for t in tensors)


def _span_calls(module, pieces, key_spans, calls: list[int] | None = None, **kwargs) -> list[torch.Tensor]:
    """The outputs (1, Q, heads, D) of span calls (all, or the indices `calls`) from the query, key and value
    pieces (``_split``) and each call's key spans as (piece, start, end)."""
    queries, keys, values = pieces
    outs = []
    for i in range(len(key_spans)) if calls is None else calls:
        q, k, v = queries[i], _take(keys, key_spans[i]), _take(values, key_spans[i])  # k, v: (1, kv heads, K, D)
        mask = None if k.shape[2] == q.shape[2] else _lower_right(q.shape[2], k.shape[2], q.device)
        out, _ = _sdpa(module, q, k, v, mask, **kwargs)  # (1, Q, heads, D)
        outs.append(out)
    return outs


def _take(pieces: tuple[torch.Tensor, ...], spans: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """(1, heads, K, D): the (piece, start, end) spans of the (1, heads, n, D) pieces, in order."""
    parts = [pieces[i] if (a, b) == (0, pieces[i].shape[2]) else pieces[i][:, :, a:b] for i, a, b in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


@lru_cache(maxsize=512)
def _lower_right(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """(1, 1, Q, K) bool: query j sees keys 0 .. K - Q + j (the queries are the last Q keys)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)[None, None]


def sdpa_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa_attention_forward, on a CPU with query, key and value in float32 where it would run in
    bf16 or fp16 over fewer than FLOAT32_BELOW_KEYS keys (the output in that dtype), and grouped heads unrepeated
    (``_sdpa``). query: (B, heads, T, D); key, value: (B, kv heads, S, D). With a SpanAttention under
    SPAN_ATTENTION, the three come packed, (1, heads, S, D), the model's attention mask is not used, and the
    output is packed too, (1, S, heads, D)."""
    spans = kwargs.pop(SPAN_ATTENTION, None)
    if spans is not None:
        return spans.attend(module, query, key, value, **kwargs), None
    low = _low_precision(query, key, value)
    if query.device.type != "cpu" or low is None or key.shape[-2] >= FLOAT32_BELOW_KEYS:
        return _sdpa(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        out, weights = _sdpa(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(low), weights


def _sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
          is_causal: bool | None = None, **kwargs):
    """transformers' sdpa_attention_forward, except that on a CPU a grouped-query model's training forward (several
    queries, with a mask or as many keys as queries, nothing else) passes the key and value heads to SDPA as they are
    (``enable_gqa``) instead of repeating them into a copy per query head: transformers repeats them whenever a
    mask is given, for the CUDA kernels' sake, but PyTorch's CPU flash kernel takes grouped heads with a mask:
    the same values, no copy, and key/value tensors saved for the backward a third (9 query heads on 3) or a
    quarter (32 on 8) of the size. The call alone, forward + backward (results/speed/cpu_attention_gqa/): float32
    as fast or faster (21.0 -> 20.7 ms at 8 x 217 keys, 20.7 -> 14.5 at 16 x 120), bf16 faster at 2 x 308 (37.3
    -> 32.9) but slower at 16 x 120 (40.7 -> 52.0), a length at which a bf16 run attends in float32 anyway."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    plain = all(kwargs.get(k) is None or kwargs.get(k) is False for k in ("softcap", "position_bias",
                                                                          "output_attentions"))
    # A mask says which keys each query sees; without one SDPA's causal flag aligns queries to the first keys,
    # right only when there are as many (not when decoding with a cache).
    aligned = query.shape[2] > 1 and (attention_mask is not None or query.shape[2] == key.shape[2])
    if query.device.type != "cpu" or groups <= 1 or not plain or not aligned:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(attention_mask is None and causal), enable_gqa=True)  # (B, heads, T, D)
    return out.transpose(1, 2).contiguous(), None  # (B, T, heads, D), as transformers returns it


def _low_precision(*tensors: torch.Tensor) -> torch.dtype | None:
    """The dtype SDPA would run in if it is below float32, else None: CPU autocast's when it is on (it casts all
    three: after RoPE, whose cos/sin are float32, the query and key arrive in float32 and only the value in
    bf16), else a low-precision input's."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype in _LOW_PRECISION else None
    return next((t.dtype for t in tensors if t.dtype in _LOW_PRECISION), None)


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(CPU_SDPA, sdpa_on_cpu)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_SDPA, sdpa_mask)  # the masks SDPA takes


def use_cpu_attention(model, device) -> bool:
    """Switch an SDPA model to sdpa_on_cpu for a CPU run (any precision); True when switched. Other models and
    devices are left as they are. In float32 this only passes grouped heads unrepeated: no step-time difference
    beyond this machine's noise (float32 LoRA DPO steps, median pass ratio 1.01-1.05x, results/speed/
    cpu_attention_fp32/), and the key and value tensors SDPA saves for its backward are smaller (a third at 9 query
    heads over 3, a quarter at 32 over 8)."""
    config = getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "config", None)
    if torch.device(device).type != "cpu" or config is None:
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    config._attn_implementation = CPU_SDPA
    return True


def is_sdpa(implementation: str) -> bool:
    """Whether an attention implementation name is SDPA (plain, or prefopt's for a CPU)."""
    return implementation in ("sdpa", CPU_SDPA)
