"""A batch's prompt run once for all its replies: one row per group of rows sharing a prompt, [prompt, replies].

A (2B, T) pair batch repeats every prompt: row i is prompt+chosen, row B+i the same prompt+rejected. Run as
one row per pair with an attention mask that keeps the two replies apart, the prompt is computed once:

    tokens      p0 p1 p2 | c0 c1 | r0 r1 r2
    positions    0  1  2 |  3  4 |  3  4  5      (the rejected reply restarts where the prompt ended)
    r1 attends  p0 p1 p2 |   -   | r0 r1         (a reply sees its prompt and itself, never the other reply)

Every state then equals the one the padded rows compute, so the log-probs do too (to float rounding), at
P + C + R tokens per pair instead of 2P + C + R. The first token of each reply is predicted from the prompt's
last state, shared by both. The same holds for any group of rows with one prompt: an online batch's k
completions of each prompt run as [prompt, completion 1, ..., completion k], P + sum of C instead of k P + sum.

The layout is worked out on the host (CPU) from the batch's masks, like ``prefopt.core.logprobs.Layout``, so
the forward indexes with ``index_select`` and never waits for a device. Only the pieces are built here; the
forward lives in ``prefopt.core.logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.attention import SpanAttention

# A batch key: the batch's SharedPrompt, when its prompts run once per group (see shared_prompt_layout).
SHARED_PROMPT = "shared_prompt"


@dataclass
class SharedPrompt:
    """The one-row-per-group form of an (N, T) batch (a pair batch: B groups of 2), and where each response
    cell's predicting state is."""

    input_ids: torch.Tensor  # (G, T') prompt, each reply in turn, then padding (id 0: never attended to)
    position_ids: torch.Tensor  # (G, T') each reply's positions continue from the prompt's
    # (G, 1, T', T') bool, True where a query may attend to a key; None in a packed layout, whose forward needs
    # none: rows_attention_mask() then builds it from `lengths` for a forward that runs the rows after all
    attention_mask: torch.Tensor | None
    states: torch.Tensor  # (R,) flat index into (G * T') of the state predicting each response cell, grid order
    lengths: tuple[tuple[int, tuple[int, ...]], ...]  # each group's (prompt length, reply lengths)
    # With `packed`: the same tokens with the padding left out, one sequence, for a forward whose attention goes
    # span by span (prefopt.core.attention.SpanAttention): where each packed token sits in (G * T'), row after
    # row, each response cell's predicting state as an index into the packed tokens, and the attention's spans.
    # None: the forward runs the rows.
    real: torch.Tensor | None = None  # (S,) flat index into (G * T'), S = sum over groups of P + replies
    packed_states: torch.Tensor | None = None  # (R,) index into the S packed tokens
    spans: SpanAttention | None = None

    def to(self, device, non_blocking: bool = True) -> SharedPrompt:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)
        return SharedPrompt(move(self.input_ids), move(self.position_ids), move(self.attention_mask),
                            move(self.states), self.lengths, move(self.real), move(self.packed_states), self.spans)

    def rows_attention_mask(self) -> torch.Tensor:
        """(G, 1, T', T') bool: the rows' attention mask, as built or (packed layout) built now."""
        if self.attention_mask is not None:
            return self.attention_mask
        return group_attention_mask(self.lengths, self.input_ids.shape[1]).to(self.input_ids.device)


def group_attention_mask(lengths: tuple[tuple[int, tuple[int, ...]], ...], total: int) -> torch.Tensor:
    """(G, 1, T', T') bool, True where a query may attend to a key, of rows [prompt, reply 1, ..., reply k,
    padding] with these (prompt length, reply lengths): the prompt causal; a reply sees its prompt and itself,
    never another reply; a padding query sees itself only (no empty softmax row)."""
    allowed = torch.zeros(len(lengths), 1, total, total, dtype=torch.bool)  # (G, 1, T', T')
    causal = torch.ones(total, total, dtype=torch.bool).tril()  # (T', T')
    for g, (prompt, replies) in enumerate(lengths):
        allowed[g, 0, :prompt, :prompt] = causal[:prompt, :prompt]
        start = prompt
        for reply in replies:
            allowed[g, 0, start : start + reply, :prompt] = True
            allowed[g, 0, start : start + reply, start : start + reply] = causal[:reply, :reply]
            start += reply
        pad = torch.arange(start, total)
        allowed[g, 0, pad, pad] = True
    return allowed


def pair_groups(rows: int) -> torch.Tensor | None:
    """(B, 2) the rows of a (2B, T) pair batch that share a prompt: chosen row i and rejected row B + i."""
    if rows % 2 or rows == 0:
        return None
    return torch.arange(rows).view(2, rows // 2).T


def consecutive_groups(rows: int, size: int) -> torch.Tensor | None:
    """(N / k, k) groups of k consecutive rows (an online batch's k completions of each prompt)."""
    if size < 2 or rows % size or rows == 0:
        return None
    return torch.arange(rows).view(rows // size, size)


def shared_prompt_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                         first: int, response: torch.Tensor, packed: bool = False,
                         groups: torch.Tensor | None = None) -> SharedPrompt | None:
    """The SharedPrompt of a right-padded (N, T) batch whose rows come in groups sharing a prompt, or None when
    its rows are not such groups of (prompt + reply), each reply one unbroken run of loss-mask ones right after
    the prompt (then the padded forward serves the batch).

    input_ids, attention_mask, loss_mask: (N, T) on the CPU; first: the grid's first column (K = T - first);
    response: (R,) flat indices of the response cells of the (N, K) grid, row after row (``Layout.response``);
    packed: also where the real tokens are, for a forward of the tokens packed (``SharedPrompt.real``);
    groups: (G, k) row indices, every row once, each group's replies in its shared row in this order (default:
    a pair batch's ``pair_groups``).
    """
    n, width = input_ids.shape
    groups = pair_groups(n) if groups is None else groups
    if groups is None or groups.numel() != n or not torch.equal(groups.flatten().sort().values, torch.arange(n)):
        return None
    lengths = attention_mask.sum(1)  # (N,)
    replies = loss_mask.sum(1)  # (N,)
    prompts = lengths - replies  # (N,) prompt length of each row
    for row in range(n):
        p, end = int(prompts[row]), int(lengths[row])
        if p < 1 or not bool(attention_mask[row, :end].all()) or not bool(loss_mask[row, p:end].all()):
            return None  # not right-padded prompt + one reply
    p = prompts[groups]  # (G, k)
    if not (p == p[:, :1]).all():
        return None
    p = p[:, 0]  # (G,)
    for members, pg in zip(groups.tolist(), p.tolist(), strict=True):
        if any(not torch.equal(input_ids[row, :pg], input_ids[members[0], :pg]) for row in members[1:]):
            return None
    reply = replies[groups]  # (G, k)
    start = p[:, None] + reply.cumsum(1) - reply  # (G, k) where each reply starts in its group's row
    used = p + reply.sum(1)  # (G,) real cells of each shared row
    total = int(used.max())  # T'
    ids = torch.zeros(len(groups), total, dtype=torch.long)  # (G, T')
    positions = torch.zeros(len(groups), total, dtype=torch.long)  # (G, T')
    for g, members in enumerate(groups.tolist()):
        pg = int(p[g])
        ids[g, :pg] = input_ids[members[0], :pg]
        positions[g, :pg] = torch.arange(pg)
        for m, row in enumerate(members):
            s, c = int(start[g, m]), int(reply[g, m])
            ids[g, s : s + c] = input_ids[row, pg : pg + c]
            positions[g, s : s + c] = torch.arange(pg, pg + c)  # each reply continues from the prompt
    group_lengths = tuple((pg, tuple(cs)) for pg, cs in zip(p.tolist(), reply.tolist(), strict=True))
    # Each response cell's predicting state: a reply's first token from the prompt's last state, later ones
    # from the state just before them in the reply's own run.
    group_of = torch.empty(n, dtype=torch.long)  # (N,)
    member_of = torch.empty(n, dtype=torch.long)  # (N,)
    group_of[groups.flatten()] = torch.arange(len(groups)).repeat_interleave(groups.shape[1])
    member_of[groups.flatten()] = torch.arange(groups.shape[1]).repeat(len(groups))
    k = width - first
    row = response // k  # (R,)
    column = first + response % k  # (R,) column in the (N, T) batch
    group, member = group_of[row], member_of[row]  # (R,) each
    offset = column - p[group]  # (R,) token's place in its reply
    position = torch.where(offset > 0, start[group, member] + offset - 1, p[group] - 1)  # (R,)
    states = group * total + position  # (R,)
    if not packed:
        return SharedPrompt(ids, positions, group_attention_mask(group_lengths, total), states,
                            group_lengths)
    real = (torch.arange(total) < used[:, None]).flatten().nonzero().squeeze(-1)  # (S,)
    place = torch.full((len(groups) * total,), -1, dtype=torch.long)  # (G * T') -> place among the packed tokens
    place[real] = torch.arange(real.numel())
    # the mask is left to rows_attention_mask: the packed forward attends by spans
    return SharedPrompt(ids, positions, None, states, group_lengths, real, place[states],
                        SpanAttention.shared_prompt(group_lengths))
