"""The only place that shifts, masks and reduces token log-probabilities.

A causal LM's logits at position t predict token t+1, so the log-prob of the
response token at position t+1 is read from logits[:, t]. The loss mask marks
response tokens (1) against prompt and padding (0) in *input* positions; it is
shifted together with the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows of logits processed at once by the selective log-softmax: bounds the
# float32 temporary to chunk x vocab instead of (B*T) x vocab.
_CHUNK_ROWS = 1024


@dataclass
class SequenceLogps:
    """Per-sequence reductions of response-token log-probs."""

    sum: torch.Tensor  # (N,) sum of log p over response tokens
    tokens: torch.Tensor  # (N,) number of response tokens (float)

    @property
    def mean(self) -> torch.Tensor:  # (N,) per-token average; 0 for empty responses
        return self.sum / self.tokens.clamp(min=1)

    def detach(self) -> "SequenceLogps":
        return SequenceLogps(self.sum.detach(), self.tokens.detach())

    def index(self, rows) -> "SequenceLogps":
        return SequenceLogps(self.sum[rows], self.tokens[rows])


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


def forward_token_logps(model, batch: dict, first: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token response log-probs from one forward: (logps (N, K), mask (N, K)).

    Logits are only computed from the first response position on
    (``logits_to_keep``): prompt positions never reach the vocabulary
    projection, which is a large share of a small model's compute and of its
    activation memory. K = T - first response column; the same batch always
    gives the same K, so token-level tensors of two forwards line up; pass
    ``first`` (from the full batch) to line up a sub-batch with it.
    """
    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]  # (N, T)
    first = first_response_position(loss_mask) if first is None else first
    keep = input_ids.shape[1] - first + 1  # logits at positions first-1 .. T-1
    logits = model(
        input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep
    ).logits  # (N, keep, V)
    # Drop the prompt columns that can never carry a response token.
    return token_logps(logits, input_ids[:, first - 1 :], loss_mask[:, first - 1 :])


def first_response_position(loss_mask: torch.Tensor) -> int:
    """Earliest column holding a response token in any row (>= 1: position 0 has no predecessor)."""
    cols = loss_mask.any(dim=0).nonzero()
    return max(1, int(cols[0])) if len(cols) else 1
