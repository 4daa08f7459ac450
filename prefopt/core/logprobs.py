"""The only place that shifts, masks and reduces token log-probabilities.

A causal LM's logits at position t predict token t+1, so the log-prob of the
response token at position t+1 is read from logits[:, t]. The loss mask marks
response tokens (1) against prompt and padding (0) in *input* positions; it is
shifted together with the labels.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from prefopt.core.attention import CPU_SDPA, SPAN_ATTENTION, SpanAttention, is_sdpa
from prefopt.core.fsdp import is_fsdp_unit
from prefopt.core.shared_prompt import SHARED_PROMPT, SharedPrompt

# Rows of logits processed at once by the selective log-softmax: bounds the
# float32 temporary to chunk x vocab instead of (B*T) x vocab.
_CHUNK_ROWS = 1024
# linear_log_softmax keeps the forward's softmax for the backward, instead of making the logits again, while it
# holds at most this many bytes (a small batch's response rows: one projection matmul fewer per step).
_KEEP_SOFTMAX_BYTES = 256 * 2**20
# linear_log_softmax makes about this many logits at once (32 MB in float32).
_CHUNK_LOGITS = 8 * 2**20


@dataclass
class SequenceLogps:
    """Per-sequence reductions of response-token log-probs."""

    sum: torch.Tensor  # (N,) sum of log p over response tokens
    tokens: torch.Tensor  # (N,) number of response tokens (float)

    @property
    def mean(self) -> torch.Tensor:  # (N,) per-token average; 0 for empty responses
        return self.sum / self.tokens.clamp(min=1)

    def detach(self) -> SequenceLogps:
        return SequenceLogps(self.sum.detach(), self.tokens.detach())

    def index(self, rows) -> SequenceLogps:
        return SequenceLogps(self.sum[rows], self.tokens[rows])


# A batch key: the batch's Layout, worked out on the host before the batch went to the device (see host_layout).
LAYOUT = "layout"


@dataclass
class Layout:
    """Where a right-padded (N, T) batch's tokens are, as index tensors made on the host (CPU) from its masks.

    Boolean-mask indexing (``hidden[mask]``) and ``int(tensor)`` make the host wait for an accelerator to
    finish everything queued before it can go on; a step of a small model is then bound by those waits. With
    the positions known before the batch is moved, the forward indexes with ``index_select`` and never waits.
    """

    first: int  # first column holding a response token in any row (>= 1); K = T - first
    response: torch.Tensor  # (R,) flat indices of the response cells of the (N, K) grid, row after row
    real: torch.Tensor  # (S,) flat indices of the real tokens of the (N, T) batch, row after row
    positions: torch.Tensor  # (S,) each real token's position in its row (right padding: its column)
    targets: torch.Tensor  # (R,) positions 0..S-2 of the packed sequence whose next token is a response token

    def to(self, device, non_blocking: bool = True) -> Layout:
        move = lambda t: t.to(device, non_blocking=non_blocking)
        return Layout(self.first, move(self.response), move(self.real), move(self.positions), move(self.targets))


def host_layout(attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> Layout:
    """The Layout of a right-padded batch from its (N, T) masks, on the CPU (where these waits cost nothing)."""
    first = first_response_position(loss_mask)
    response = loss_mask[:, first:].flatten().nonzero().squeeze(-1)  # (R,)
    real = attention_mask.flatten().nonzero().squeeze(-1)  # (S,)
    positions = real % attention_mask.shape[1]  # (S,)
    targets = loss_mask.flatten()[real][1:].nonzero().squeeze(-1)  # (R,)
    return Layout(first, response, real, positions, targets)


def _layout_for(batch: dict, first: int) -> Layout | None:
    """The batch's host Layout when it describes this (N, K) grid (a caller may pass another batch's first)."""
    layout = batch.get(LAYOUT)
    return layout if layout is not None and layout.first == first else None


def selective_log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] without a full-vocabulary float32 log-softmax.

    logits: (..., V) in any float dtype; labels: (...) int64. Returns (...) float32.
    Computed as logit[label] - logsumexp(logits) over row chunks.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (R, V)
    flat_labels = labels.reshape(-1)  # (R,)
    out = torch.empty(flat_labels.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, flat_logits.shape[0], _CHUNK_ROWS):
        chunk = flat_logits[start : start + _CHUNK_ROWS].float()  # (r, V)
        picked = chunk.gather(-1, flat_labels[start : start + _CHUNK_ROWS, None]).squeeze(-1)  # (r,)
        out[start : start + _CHUNK_ROWS] = picked - torch.logsumexp(chunk, dim=-1)
    return out.reshape(labels.shape)


def _entropy(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """-sum p log p of softmax(logits) per row, as lse - sum softmax(z) z. logits: (r, V); lse: (r,) their
    logsumexp. Returns (r,)."""
    return lse - (torch.exp(logits - lse[:, None]) * logits).sum(-1)


def chunked_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, over row chunks. logits: (..., V). Returns (...) float32, no grad."""
    flat = logits.detach().reshape(-1, logits.shape[-1])  # (R, V)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], _CHUNK_ROWS):
        chunk = flat[start : start + _CHUNK_ROWS].float()  # (r, V)
        out[start : start + _CHUNK_ROWS] = _entropy(chunk, torch.logsumexp(chunk, dim=-1))
    return out.reshape(logits.shape[:-1])


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the next tokens, masked.

    logits: (N, T, V); input_ids, loss_mask: (N, T).
    Returns (logps (N, T-1) with zeros where masked, mask (N, T-1) float).
    """
    labels = input_ids[:, 1:]  # (N, T-1)
    mask = loss_mask[:, 1:].float()  # (N, T-1)
    safe_labels = labels.masked_fill(mask == 0, 0)  # padding ids may be out of range
    logps = selective_log_softmax(logits[:, :-1], safe_labels)  # (N, T-1)
    return logps * mask, mask


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> SequenceLogps:
    """Sum and token count of response log-probs per sequence. Shapes as token_logps."""
    logps, mask = token_logps(logits, input_ids, loss_mask)
    return SequenceLogps(sum=logps.sum(-1), tokens=mask.sum(-1))


def forward_logps(model, batch: dict) -> SequenceLogps:
    """One forward of `model` over a collated batch -> per-sequence log-probs.

    batch holds input_ids, attention_mask, loss_mask, each (N, T).
    """
    logps, mask = forward_token_logps(model, batch)
    return SequenceLogps(sum=logps.sum(-1), tokens=mask.sum(-1))


def forward_token_logps(model, batch: dict, first: int | None = None, fused: bool = True,
                        return_entropy: bool = False):
    """Per-token response log-probs from one forward: (logps (N, K), mask (N, K)), and with ``return_entropy``
    the entropy of the policy's next-token distribution at each response token, (N, K) float32, no grad,
    0 off the mask (made from the same logits chunks: no extra forward, no stored logits).

    Only response tokens reach the vocabulary projection. With ``fused`` (and a
    model whose output layer is a plain projection, see ``fused_head``) the
    backbone's hidden states of the response tokens go through
    ``linear_log_softmax``: logits are made chunk by chunk and never stored, and
    prompt and padding positions are skipped. Otherwise the model is asked for
    logits from the first response position on (``logits_to_keep``). Both give
    the same values. K = T - first response column; the same batch always gives
    the same K, so token-level tensors of two forwards line up; pass ``first``
    (from the full batch) to line up a sub-batch with it.
    """
    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]  # (N, T)
    if first is None:
        first = batch[LAYOUT].first if batch.get(LAYOUT) is not None else first_response_position(loss_mask)
    parts = fused_head(model) if fused else None
    layout = _layout_for(batch, first)
    if parts is not None and batch.get(SHARED_PROMPT) is not None and layout is not None:  # before padding-free
        return _shared_token_logps(*parts, batch[SHARED_PROMPT], layout, input_ids, loss_mask[:, first:].float(),
                                   return_entropy)  # fmt: skip
    if batch.get(PADDING_FREE):
        return _packed_token_logps(model, batch, first, parts, return_entropy)
    if parts is None:
        keep = input_ids.shape[1] - first + 1  # logits at positions first-1 .. T-1
        logits = model(
            input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep
        ).logits  # (N, keep, V)
        # Drop the prompt columns that can never carry a response token.
        logps, mask = token_logps(logits, input_ids[:, first - 1 :], loss_mask[:, first - 1 :])
        if not return_entropy:
            return logps, mask
        return logps, mask, chunked_entropy(logits[:, :-1]) * mask
    backbone, head = parts
    mask = loss_mask[:, first:].float()  # (N, K)
    hidden = backbone(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    hidden = hidden[:, first - 1 : -1]  # (N, K, H): the states that predict tokens first .. T-1
    index = layout.response if layout is not None else None
    return hidden_token_logps(hidden, head, input_ids[:, first:], mask, return_entropy, index)


def _shared_token_logps(backbone, head: torch.nn.Linear, shared: SharedPrompt, layout: Layout,
                        input_ids: torch.Tensor, mask: torch.Tensor, return_entropy: bool):
    """forward_token_logps of an (N, T) batch with each prompt run once per group of rows sharing it (a pair
    batch's pairs, an online batch's completions of a prompt; ``prefopt.core.shared_prompt``): one (G, T')
    forward, then the same (N, K) outputs as the padded path. A packed layout (``SharedPrompt.real``)
    on a model with prefopt's CPU attention runs only the real tokens, as one sequence whose attention goes
    span by span (``SpanAttention``); other models run the rows."""
    if shared.real is not None and attends_spans(backbone):
        hidden = backbone(input_ids=shared.input_ids.flatten().index_select(0, shared.real)[None],
                          position_ids=shared.position_ids.flatten().index_select(0, shared.real)[None],
                          use_cache=False, **_span_keywords(shared.spans, shared.real)).last_hidden_state  # (1, S, H)
        states = hidden[0].index_select(0, shared.packed_states)  # (R, H)
    else:
        hidden = backbone(input_ids=shared.input_ids, attention_mask=shared.rows_attention_mask(),
                          position_ids=shared.position_ids, use_cache=False).last_hidden_state  # (G, T', H)
        states = hidden.flatten(0, 1).index_select(0, shared.states)  # (R, H)
    labels = input_ids[:, layout.first :].flatten().index_select(0, layout.response)  # (R,)
    if not return_entropy:
        return _scatter(linear_log_softmax(states, head.weight, labels), layout.response, mask.shape), mask
    picked, entropy = linear_log_softmax(states, head.weight, labels, return_entropy=True)  # (R,) x 2
    return _scatter(picked, layout.response, mask.shape), mask, _scatter(entropy, layout.response, mask.shape)


def hidden_token_logps(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, mask: torch.Tensor,
                       return_entropy: bool = False, index: torch.Tensor | None = None):
    """(logps (N, K), mask (N, K)) [+ entropy (N, K), no grad] of `labels` from the final hidden states that
    predict them, through a plain output projection (see ``fused_head``), by ``linear_log_softmax``: only the
    masked-in rows are projected, and their logits are never stored. hidden: (N, K, H); labels, mask: (N, K);
    index: (R,) the flat indices of mask's nonzero cells when known (``Layout.response``): no host wait."""
    if index is None:
        index = mask.flatten().nonzero().squeeze(-1)  # (R,)
    states = hidden.flatten(0, 1).index_select(0, index)  # (R, H)
    picked_labels = labels.flatten().index_select(0, index)  # (R,)
    if not return_entropy:
        return _scatter(linear_log_softmax(states, head.weight, picked_labels), index, mask.shape), mask
    picked, entropy = linear_log_softmax(states, head.weight, picked_labels, return_entropy=True)  # (R,) x 2
    return _scatter(picked, index, mask.shape), mask, _scatter(entropy, index, mask.shape)


# A batch key: forward the batch's rows packed into one sequence, no padding (see _packed_token_logps).
PADDING_FREE = "padding_free"


def use_padding_free(option: bool | str, model, device) -> bool:
    """The run option ``padding_free`` resolved for a model: true/false as said; ``auto`` packs only where it
    was measured faster, CUDA with flash-attention's variable-length kernel. On a CPU (prefopt's SDPA attends
    the packed rows one by one, ``attends_spans``) it was faster on data with a spread of lengths but slower on
    length-bucketed batches with little padding left, so ``auto`` leaves the rows padded there
    (``benchmarks/padding_free.py``, ``benchmarks/share_prompt.py``, docs/speed.md)."""
    if option != "auto":
        return bool(option)
    return torch.device(device).type == "cuda" and _attention_implementation(model).startswith("flash_attention")


def _attention_implementation(model) -> str:
    """The attention kernel family transformers runs the model with ('sdpa', 'eager', 'flash_attention_2' ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(getattr(base, "config", None), "_attn_implementation", "") or "")


def share_prompt_support(model) -> str | None:
    """Why `model` cannot run a pair batch's prompts once (``prefopt.core.shared_prompt``), or None when it can:
    that needs the fused head (a plain output projection) and SDPA attention, which takes the boolean
    (B, 1, T', T') mask as it is."""
    if fused_head(model) is None:
        return "its output layer is not a plain projection of the final hidden state (or it is FSDP-wrapped)"
    attention = _attention_implementation(model)
    if not is_sdpa(attention):
        return f"its attention implementation is '{attention}', not sdpa"
    return None


def attends_spans(model) -> bool:
    """Whether `model` can run a batch's real tokens packed into one sequence and attend them span by span: what
    its attention function, prefopt's CPU SDPA, knows how to do (``SpanAttention``). Shared-prompt rows and
    padding-free batches run so: no padding in any layer, and attention computes only the cells that are
    attended; the same values (``benchmarks/share_prompt.py``, ``benchmarks/padding_free.py``, docs/speed.md)."""
    return _attention_implementation(model) == CPU_SDPA


def _span_keywords(spans: SpanAttention, real: torch.Tensor) -> dict:
    """The model keywords of a packed forward that attends by `spans`. The spans make their own masks; a one-cell
    stand-in mask keeps transformers from building the (S, S) one it would for packed positions, unused here."""
    return {SPAN_ATTENTION: spans, "attention_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool, device=real.device)}


def use_shared_prompt(option: bool | str, model, device) -> bool:
    """The run option ``share_prompt`` resolved for a model: false as said; true where the model supports it
    (see share_prompt_support); ``auto`` also only on a CPU, where it was measured faster
    (``benchmarks/share_prompt.py``, docs/speed.md). On CUDA SDPA leaves its flash kernel for
    one that takes a mask, not measured here."""
    if option is False or share_prompt_support(model) is not None:
        return False
    return option is True or torch.device(device).type == "cpu"


def packs_shared_prompts(share: bool, padding_free: bool | str, model) -> bool:
    """Whether shared-prompt rows (``share``, from use_shared_prompt) run packed, as one sequence attended span
    by span: where the model attends spans (prefopt's CPU SDPA), unless the run option ``padding_free`` is
    false (measured faster in every CPU precision: ``benchmarks/share_prompt.py``, docs/speed.md)."""
    return share and padding_free is not False and attends_spans(model)


def _packed_token_logps(model, batch: dict, first: int, parts, return_entropy: bool):
    """forward_token_logps of a right-padded batch run padding-free: its N rows' real tokens packed into one
    sequence of S = sum of lengths, positions restarting at 0 for each row. Given ``position_ids`` and no
    attention mask, transformers attends within each row only (flash-attention's variable-length kernel where it
    is installed, else a block-diagonal causal mask), so every value equals the padded forward's; no compute is
    spent on padding. prefopt's CPU SDPA attends each row's span of the packed sequence by itself instead
    (``SpanAttention``), without an (S, S) mask. The same (N, K) outputs as the padded path.

    The response tokens, read row after row, are in the same order in the packed sequence as in the (N, K) grid,
    and none is the first token of its row (a prompt always comes first), so the state just before each is of
    its own row.
    """
    input_ids, loss_mask, attention_mask = batch["input_ids"], batch["loss_mask"], batch["attention_mask"]  # (N, T)
    layout = _layout_for(batch, first)
    if layout is None:
        layout = host_layout(attention_mask, loss_mask)  # on an accelerator: waits here, once per forward
        layout = Layout(first, loss_mask[:, first:].flatten().nonzero().squeeze(-1), layout.real, layout.positions,
                        layout.targets)  # the caller's grid
    packed = input_ids.flatten().index_select(0, layout.real)  # (S,)
    labels = packed[1:].index_select(0, layout.targets)  # (R,)
    grid = (loss_mask.shape[0], loss_mask.shape[1] - first)  # (N, K)
    entropy = None
    rows = {}
    if attends_spans(model):
        rows = _span_keywords(SpanAttention.rows(attention_mask.sum(1).tolist()), layout.real)
    if parts is None:
        logits = model(input_ids=packed[None], position_ids=layout.positions[None], use_cache=False,
                       logits_to_keep=layout.targets, **rows).logits[0]  # (R, V)  # fmt: skip
        picked = selective_log_softmax(logits, labels)  # (R,)
        if return_entropy:
            entropy = chunked_entropy(logits)  # (R,)
    else:
        backbone, head = parts
        hidden = backbone(input_ids=packed[None], position_ids=layout.positions[None], use_cache=False,
                          **rows).last_hidden_state  # (1, S, H)  # fmt: skip
        states = hidden[0].index_select(0, layout.targets)  # (R, H)
        if return_entropy:
            picked, entropy = linear_log_softmax(states, head.weight, labels, return_entropy=True)  # (R,) x 2
        else:
            picked = linear_log_softmax(states, head.weight, labels)  # (R,)
    mask = loss_mask[:, first:].float()  # (N, K)
    if not return_entropy:
        return _scatter(picked, layout.response, grid), mask
    return _scatter(picked, layout.response, grid), mask, _scatter(entropy, layout.response, grid)


def _scatter(values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(R,) values at flat indices index of an (N, K) grid -> (N, K), 0 elsewhere (differentiable in values)."""
    flat = torch.zeros(shape[0] * shape[1], dtype=values.dtype, device=values.device)
    return flat.index_copy(0, index, values).view(shape)


# Architectures whose logits are exactly `lm_head(final hidden state)`: no soft-capping, scaling or bias.
FUSED_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def fused_head(model):
    """(backbone, output projection) of a causal LM whose logits are a plain projection of the final hidden
    state, or None (then logits come from the model itself). LoRA layers stay injected in the backbone."""
    if is_fsdp_unit(model):  # the root's forward gathers the embedding and head weights: go through it
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in FUSED_HEAD_MODEL_TYPES:
        return None
    head = base.get_output_embeddings()
    backbone = getattr(base, "base_model", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or backbone is None or backbone is base:
        return None
    return backbone, head


def linear_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       return_entropy: bool = False):
    """log softmax(hidden @ weight.T)[label] per row, without storing the (R, V) logits.

    hidden: (R, H); weight: (V, H); labels: (R,) int64. Returns (R,) float32 (float64 for float64 inputs),
    and with ``return_entropy`` also each row's softmax entropy, (R,), not differentiable.
    The projection runs in the autocast dtype when autocast is on (as the
    model's own head would), else in the weight's dtype; the softmax in float32.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = weight.dtype
    # Keep the softmax for the backward only when one will come (Function.forward itself runs without grad).
    softmax_bytes = labels.shape[0] * weight.shape[0] * torch.promote_types(dtype, torch.float32).itemsize
    keep = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad) and (
        softmax_bytes <= _KEEP_SOFTMAX_BYTES)
    logps, entropy = _LinearLogSoftmax.apply(hidden, weight, labels, dtype, return_entropy, keep)
    return (logps, entropy) if return_entropy else logps


class _LinearLogSoftmax(torch.autograd.Function):
    """Row chunks of logits are made in the forward and made again in the backward: memory is chunk x V
    instead of R x V, for one more projection matmul. When the rows' float32 softmax fits _KEEP_SOFTMAX_BYTES
    (and a backward will come) it is kept instead: no second matmul.

    Each chunk's float32 logits are worked on in place in one buffer (max, shift, exp, sum, normalise), never
    as a new R x V tensor per operation: on a CPU the head's element-wise passes over the vocabulary, each
    writing fresh memory, had cost more than its matmul. The backward multiplies the softmax part of
    d logp / d logits (-softmax x grad) in the projection dtype and adds the one-hot part, grad x weight[label],
    in float32."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, dtype, with_entropy, keep):
        acc = torch.promote_types(dtype, torch.float32)  # softmax dtype: float32 (float64 for float64 inputs)
        rows, vocab = labels.shape[0], weight.shape[0]
        step = _chunk_rows(vocab)
        with torch.autocast(hidden.device.type, enabled=False):
            w = projection_weight(weight, dtype)  # (V, H)
            out = torch.empty(labels.shape, dtype=acc, device=hidden.device)  # (R,)
            lse = torch.empty_like(out)  # (R,)
            entropy = torch.empty_like(out) if with_entropy else out.new_empty(0)  # (R,) or unused
            softmax = _kept_softmax(ctx, rows, vocab, acc, hidden.device) if keep else out.new_empty(0)  # (R, V)
            scratch = None if keep else torch.empty(min(step, rows), vocab, dtype=acc, device=hidden.device)
            for start in range(0, rows, step):
                end = min(start + step, rows)
                z = softmax[start:end] if keep else scratch[: end - start]  # (r, V) float32
                _project_into(z, hidden[start:end], w)
                top = z.amax(dim=-1, keepdim=True)  # (r, 1)
                picked = z.gather(-1, labels[start:end, None])  # (r, 1)
                z.sub_(top)  # shifted logits: exp cannot overflow
                if with_entropy:  # H = lse - sum p z = log(total) - sum p (z - top)
                    shifted_dot = z.exp() * z  # (r, V)
                z.exp_()  # unnormalised softmax
                total = z.sum(dim=-1, keepdim=True)  # (r, 1)
                log_total = total.log()  # (r, 1)
                lse[start:end] = (top + log_total).squeeze(-1)
                out[start:end] = picked.squeeze(-1) - lse[start:end]
                if with_entropy:
                    entropy[start:end] = log_total.squeeze(-1) - shifted_dot.sum(-1) / total.squeeze(-1)
                if keep:
                    z.div_(total)  # the softmax, kept for the backward
        ctx.dtype = dtype
        ctx.save_for_backward(hidden, weight, labels, lse, softmax)
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy):  # grad_out: (R,); the entropy has no gradient
        hidden, weight, labels, lse, softmax = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, vocab = labels.shape[0], weight.shape[0]
        step = _chunk_rows(vocab)
        acc = lse.dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        kept = softmax.numel() > 0
        with torch.autocast(hidden.device.type, enabled=False):
            w = projection_weight(weight, ctx.dtype)  # (V, H)
            # float32 work space: the softmax made again (not kept), or -softmax x grad (kept, read only)
            scratch = torch.empty(min(step, rows), vocab, dtype=acc, device=hidden.device)
            scaled = scratch if ctx.dtype == acc else torch.empty(scratch.shape, dtype=ctx.dtype, device=hidden.device)
            for start in range(0, rows, step):
                end = min(start + step, rows)
                if kept:
                    p = softmax[start:end]  # (r, V), read only
                else:
                    p = scratch[: end - start]
                    _project_into(p, hidden[start:end], w)
                    p.sub_(lse[start:end, None]).exp_()  # (r, V) softmax
                g = grad_out[start:end, None].to(acc)  # (r, 1)
                # d logp[label] / d logits = onehot(label) - softmax: the softmax part here, in the projection
                # dtype; the one-hot part below. Multiplied in float32, then rounded once: a float32 x float32
                # product written straight into a bf16 tensor took a CPU 5x as long as the two passes.
                part = torch.mul(p, g.neg(), out=scratch[: end - start])  # (r, V) float32
                if scaled is not scratch:
                    part = scaled[: end - start].copy_(part)  # (r, V) projection dtype
                label_rows = labels[start:end]  # (r,)
                if need_hidden:
                    onehot_part = g * w.index_select(0, label_rows).to(acc)  # (r, H)
                    grad_hidden[start:end] = (part @ w).to(acc) + onehot_part
                if need_weight:
                    h = hidden[start:end]  # (r, H)
                    grad_weight += (part.T @ h.to(ctx.dtype)).to(acc)  # (V, H)
                    grad_weight.index_add_(0, label_rows, g * h.to(acc))
        return grad_hidden, (grad_weight.to(weight.dtype) if need_weight else None), None, None, None, None


# The buffer of the last kept softmax whose autograd node has been freed, for the next forward to fill: made
# afresh, a step's rows x vocabulary float32 buffer (about 240 MB at 8 pairs x 256 tokens of a 49k vocabulary) is
# memory the system must map and zero on first write, which on a CPU made the first pass over it several times
# slower than the rest (its chunks' copies 11.5 ms against 1.3 ms on memory already written). A buffer goes back
# here only when its node is freed, so never while a graph kept for another backward still holds it.
_SPARE_SOFTMAX: list = [None]


def _kept_softmax(ctx, rows: int, vocab: int, dtype: torch.dtype, device) -> torch.Tensor:
    """An (rows, vocab) buffer for the softmax ctx keeps: the spare one when it is large enough, else a new one;
    handed back to _SPARE_SOFTMAX when ctx (the autograd node) is freed."""
    spare, _SPARE_SOFTMAX[0] = _SPARE_SOFTMAX[0], None
    if spare is None or spare.dtype != dtype or spare.device != torch.device(device) or spare.numel() < rows * vocab:
        spare = None  # dropped before the new one is made: never both held
        spare = torch.empty(rows * vocab, dtype=dtype, device=device)
    ctx.softmax_lease = _Lease()
    weakref.finalize(ctx.softmax_lease, _SPARE_SOFTMAX.__setitem__, 0, spare)
    return spare[: rows * vocab].view(rows, vocab)


class _Lease:
    """Lives as long as the autograd node that holds it (a weakref-able marker; see _kept_softmax)."""


def _chunk_rows(vocab: int) -> int:
    """Rows of logits made at once: about _CHUNK_LOGITS of them (32 MB in float32), at least 32 rows (the
    projection matmul slows below that on a CPU)."""
    return max(32, _CHUNK_LOGITS // vocab)


def _project_into(z: torch.Tensor, hidden: torch.Tensor, w: torch.Tensor) -> None:
    """z (r, V) in the softmax dtype <- hidden (r, H) @ w.T in w's dtype (the projection dtype)."""
    if w.dtype == z.dtype:
        torch.mm(hidden.to(w.dtype), w.T, out=z)
    else:
        z.copy_(hidden.to(w.dtype) @ w.T)


# id(weight) -> (weakref to it, its version and storage, its copy in the projection dtype)
_PROJECTION_COPIES: dict[int, tuple] = {}


def projection_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in the projection dtype. A frozen weight's copy (a LoRA run's output layer under bf16 autocast)
    is kept until the weight changes in place, gets new storage or is freed: made afresh it was a V x H copy
    in each forward and backward. A trained weight is cast every time (it changes every step)."""
    if weight.dtype == dtype:
        return weight
    if weight.requires_grad:
        return weight.to(dtype)
    key = id(weight)
    state = (weight._version, weight.data_ptr(), dtype)
    held = _PROJECTION_COPIES.get(key)
    if held is not None and held[0]() is weight and held[1] == state:
        return held[2]
    copy = weight.detach().to(dtype)
    _PROJECTION_COPIES[key] = (weakref.ref(weight, lambda _ref: _PROJECTION_COPIES.pop(key, None)), state, copy)
    return copy


def first_response_position(loss_mask: torch.Tensor) -> int:
    """Earliest column holding a response token in any row (>= 1: position 0 has no predecessor)."""
    cols = loss_mask.any(dim=0).nonzero()
    return max(1, int(cols[0])) if len(cols) else 1
