"""A pair batch's prompt run once for both replies: one row per pair, [prompt, chosen, rejected].

A (2B, T) pair batch repeats every prompt: row i is prompt+chosen, row B+i the same prompt+rejected. Run as
one row per pair with an attention mask that keeps the two replies apart, the prompt is computed once:

    tokens      p0 p1 p2 | c0 c1 | r0 r1 r2
    positions    0  1  2 |  3  4 |  3  4  5      (the rejected reply restarts where the prompt ended)
    r1 attends  p0 p1 p2 |   -   | r0 r1         (a reply sees its prompt and itself, never the other reply)

Every state then equals the one the padded rows compute, so the log-probs do too (to float rounding), at
P + C + R tokens per pair instead of 2P + C + R. The first token of each reply is predicted from the prompt's
last state, shared by both.

The layout is worked out on the host (CPU) from the batch's masks, like ``prefopt.core.logprobs.Layout``, so
the forward indexes with ``index_select`` and never waits for a device. Only the pieces are built here; the
forward lives in ``prefopt.core.logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A batch key: the batch's SharedPrompt, when its pairs' prompts run once (see shared_prompt_layout).
SHARED_PROMPT = "shared_prompt"


@dataclass
class SharedPrompt:
    """The one-row-per-pair form of a (2B, T) pair batch, and where each response cell's predicting state is."""

    input_ids: torch.Tensor  # (B, T') prompt, chosen, rejected, then padding (id 0: never attended to)
    position_ids: torch.Tensor  # (B, T') the rejected reply's positions continue from the prompt's
    attention_mask: torch.Tensor  # (B, 1, T', T') bool, True where a query may attend to a key
    states: torch.Tensor  # (R,) flat index into (B * T') of the state predicting each response cell, grid order
    # With `packed`: the same tokens with the padding left out, for a forward that pads only around attention
    # (prefopt.core.attention.PaddedAttention): where each packed token sits in (B * T'), row after row, and each
    # response cell's predicting state as an index into the packed tokens. None: the forward runs the rows.
    real: torch.Tensor | None = None  # (S,) flat index into (B * T'), S = sum over pairs of P + C + R
    packed_states: torch.Tensor | None = None  # (R,) index into the S packed tokens

    def to(self, device, non_blocking: bool = True) -> SharedPrompt:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)
        return SharedPrompt(move(self.input_ids), move(self.position_ids), move(self.attention_mask),
                            move(self.states), move(self.real), move(self.packed_states))


def shared_prompt_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                         first: int, response: torch.Tensor, packed: bool = False) -> SharedPrompt | None:
    """The SharedPrompt of a right-padded (2B, T) pair batch, or None when its rows are not B pairs of
    (prompt + reply) with rows i and B+i holding the same prompt and each reply one unbroken run of loss-mask
    ones right after it (then the padded forward serves the batch).

    input_ids, attention_mask, loss_mask: (2B, T) on the CPU; first: the grid's first column (K = T - first);
    response: (R,) flat indices of the response cells of the (2B, K) grid, row after row (``Layout.response``);
    packed: also where the real tokens are, for a forward of the tokens packed (``SharedPrompt.real``).
    """
    n, width = input_ids.shape
    if n % 2 or n == 0:
        return None
    b = n // 2
    lengths = attention_mask.sum(1)  # (2B,)
    replies = loss_mask.sum(1)  # (2B,)
    prompts = lengths - replies  # (2B,) prompt length of each row
    for row in range(n):
        p, end = int(prompts[row]), int(lengths[row])
        if p < 1 or not bool(attention_mask[row, :end].all()) or not bool(loss_mask[row, p:end].all()):
            return None  # not right-padded prompt + one reply
    if not torch.equal(prompts[:b], prompts[b:]):
        return None
    p, c, r = prompts[:b], replies[:b], replies[b:]  # (B,) each
    if any(not torch.equal(input_ids[i, : int(p[i])], input_ids[b + i, : int(p[i])]) for i in range(b)):
        return None
    total = int((p + c + r).max())  # T'
    ids = torch.zeros(b, total, dtype=torch.long)  # (B, T')
    positions = torch.zeros(b, total, dtype=torch.long)  # (B, T')
    allowed = torch.zeros(b, 1, total, total, dtype=torch.bool)  # (B, 1, T', T')
    causal = torch.ones(total, total, dtype=torch.bool).tril()  # (T', T')
    for i in range(b):
        pi, ci, ri = int(p[i]), int(c[i]), int(r[i])
        real = pi + ci + ri
        ids[i, : pi + ci] = input_ids[i, : pi + ci]
        ids[i, pi + ci : real] = input_ids[b + i, pi : pi + ri]
        positions[i, : pi + ci] = torch.arange(pi + ci)
        positions[i, pi + ci : real] = torch.arange(pi, pi + ri)
        allowed[i, 0, :real, :real] = causal[:real, :real]
        allowed[i, 0, pi + ci : real, pi : pi + ci] = False  # the rejected reply never sees the chosen one
        pad = torch.arange(real, total)
        allowed[i, 0, pad, pad] = True  # a padding query attends to itself only: no empty softmax row
    # Each response cell's predicting state. Chosen (row i < B): the state just before it, as in the padded
    # row. Rejected (row B+i): its first token from the prompt's last state, later ones from the state before.
    k = width - first
    row = response // k  # (R,)
    column = first + response % k  # (R,) column in the (2B, T) batch
    pair = row % b  # (R,)
    offset = column - p[pair]  # (R,) token's place in its reply
    rejected = row >= b
    position = torch.where(rejected & (offset > 0), p[pair] + c[pair] + offset - 1, column - 1)  # (R,)
    position = torch.where(rejected & (offset == 0), p[pair] - 1, position)  # (R,)
    states = pair * total + position  # (R,)
    if not packed:
        return SharedPrompt(ids, positions, allowed, states)
    real = (torch.arange(total) < (p + c + r)[:, None]).flatten().nonzero().squeeze(-1)  # (S,)
    place = torch.full((b * total,), -1, dtype=torch.long)  # (B * T') -> place among the packed tokens
    place[real] = torch.arange(real.numel())
    return SharedPrompt(ids, positions, allowed, states, real, place[states])
