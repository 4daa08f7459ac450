"""Records -> token ids: the chat template, response encoding and the truncation policy.

Truncation policy (``tokenize_pairs``, ``tokenize_unpaired``, ``tokenize_prompts``)
---------------------------------------------------------------------------------
A prompt longer than ``max_prompt_length`` keeps its END (the last
max_prompt_length tokens: the question the response answers); then each
response keeps its START so that prompt+response <= max_length. At least one
response token always fits: the prompt budget is at most ``max_length - 1``.
A prompt longer than even ``max_length`` is cut the same way here; the run
option ``long_prompts`` decides before tokenising whether such rows are kept
that way (``truncate``, the default, as trl does), dropped (``drop``) or an
error naming the first one (``error``): :func:`apply_long_prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prefopt.data.records import Message, PreferenceRecord, PromptRecord, UnpairedRecord, raw_prompt_text
from prefopt.errors import PrefoptError, first_line


@dataclass
class TokenizedPair:
    index: int  # position in the records list
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class TokenizedUnpaired:
    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


@dataclass
class TokenizedPrompt:
    index: int
    prompt_ids: list[int]


@dataclass
class TruncationStats:
    rows: int = 0
    truncated_prompts: int = 0  # rows whose prompt lost its beginning
    truncated_responses: int = 0  # rows with at least one response cut short
    long_prompts: int = 0  # rows whose prompt alone was longer than max_length (see apply_long_prompts)
    dropped_prompts: int = 0  # of those, the rows left out (long_prompts=drop)


LONG_PROMPTS = ("truncate", "drop", "error")  # what happens to a prompt longer than max_length tokens


# ---------------------------------------------------------------- encoding


def render_prompt_text(tokenizer, prompt_messages: Sequence[Message]) -> str:
    """The prompt as the text the model sees, ending where the assistant reply starts.

    Without a chat template: "User: ...\\n" / "Assistant: ...\\n" / "System: ...\\n"
    per turn, then "Assistant: ".
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt_messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return turns + "Assistant: "


def render_prompt(tokenizer, prompt_messages: Sequence[Message]) -> list[int]:
    """Prompt token ids. Goes via text: in transformers 5 apply_chat_template(tokenize=True)
    returns a BatchEncoding, and add_special_tokens=False avoids a second BOS."""
    return tokenizer(render_prompt_text(tokenizer, prompt_messages), add_special_tokens=False).input_ids


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise PrefoptError("the tokenizer has no end-of-sequence token; responses could not be terminated")
    return tokenizer.eos_token_id


def encode_response(tokenizer, text: str) -> list[int]:
    """Response token ids + eos: the model learns to end its turn (for ChatML, eos = <|im_end|>)."""
    return tokenizer(text, add_special_tokens=False).input_ids + [_eos_id(tokenizer)]


def _encode_prompts(records: Sequence, tokenizer, source: str) -> list[list[int]]:
    """Prompt ids of all records (one batched tokenizer call); template errors name the row.

    A raw record (plain strings, TRL's standard format, under chat_template=auto) is tokenised as it is, no
    template; every other prompt goes through the chat template (:func:`render_prompt_text`).
    """
    texts = []
    for r in records:
        if getattr(r, "raw", False):
            texts.append(raw_prompt_text(r))
            continue
        try:
            texts.append(render_prompt_text(tokenizer, r.prompt))
        except Exception as e:  # noqa: BLE001 - jinja: e.g. "roles must alternate", "system role not supported"
            raise PrefoptError(
                f"{source} row {r.row} field 'prompt': the chat template rejected it ({first_line(e)})"
            ) from None
    return _encode_texts(tokenizer, texts)


def _encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    nonempty = [t for t in texts if t]
    encoded = iter(tokenizer(nonempty, add_special_tokens=False).input_ids if nonempty else [])
    return [next(encoded) if t else [] for t in texts]


def _start_text(prompt: list[int], response: list[int], tokenizer) -> tuple[list[int], list[int]]:
    """Language-modelling text has no prompt. The sequence is what TRL trains on, ``tokenizer(text)`` and eos: the
    special tokens the tokenizer puts in front of any text (a Llama BOS) become the prompt, and without any, the
    text's own first token does (there is nothing to predict it from, as in any LM loss)."""
    if prompt or not response:
        return prompt, response
    lead = tokenizer("", add_special_tokens=True).input_ids
    if lead and lead != [tokenizer.eos_token_id]:
        return list(lead), response
    return response[:1], response[1:]


def _encode_responses(tokenizer, texts: list[str]) -> list[list[int]]:
    eos = _eos_id(tokenizer)
    return [ids + [eos] for ids in _encode_texts(tokenizer, texts)]


# ---------------------------------------------------------------- truncation


def _check_lengths(max_length: int, max_prompt_length: int) -> int:
    """The prompt budget actually used: at least one response token always fits."""
    if max_length < 2:
        raise PrefoptError(f"max_length must be at least 2, got {max_length}")
    if max_prompt_length < 1:
        raise PrefoptError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
    return min(max_prompt_length, max_length - 1)


def _fit_prompt(ids: list[int], prompt_budget: int) -> tuple[list[int], bool]:
    """Apply the prompt half of the truncation policy: keep the end."""
    if len(ids) > prompt_budget:
        return ids[-prompt_budget:], True
    return ids, False


def apply_long_prompts(records: list, tokenizer, max_length: int, policy: str, source: str) -> tuple[list, int]:
    """(records kept, how many had a prompt longer than max_length tokens) under ``long_prompts``: truncate keeps
    them all (tokenising keeps each prompt's end), drop leaves them out, error names the first one."""
    if policy not in LONG_PROMPTS:
        raise PrefoptError(f"option 'long_prompts': expected one of {', '.join(LONG_PROMPTS)}, got {policy!r}")
    if not records:
        return records, 0
    lengths = [len(ids) for ids in _encode_prompts(records, tokenizer, source)]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long and policy == "error":
        r = records[long[0]]
        raise PrefoptError(f"{source} row {r.row} field 'prompt': prompt is {lengths[long[0]]} tokens, longer than "
                           f"max_length={max_length} ({len(long)} such rows; long_prompts=truncate or drop)")  # fmt: skip
    if policy == "drop":
        dropped = set(long)
        return [r for i, r in enumerate(records) if i not in dropped], len(long)
    return records, len(long)


def _tokenize(
    records: Sequence, responses: list[list[str]], tokenizer, max_length: int, max_prompt_length: int, source: str
) -> tuple[list[tuple[list[int], list[list[int]]]], TruncationStats]:
    """The one tokenise path: per record, (prompt ids, [ids of each response column]) under the policy.

    responses holds one list of texts per response column (chosen and rejected,
    a completion, or none), each as long as records; each column is encoded in
    one batched tokenizer call.
    """
    prompt_budget = _check_lengths(max_length, max_prompt_length)
    prompts = _encode_prompts(records, tokenizer, source)
    columns = [_encode_responses(tokenizer, texts) for texts in responses]
    stats = TruncationStats(rows=len(records))
    rows = []
    for i in range(len(records)):
        if not prompts[i] and len(columns) == 1:
            prompts[i], columns[0][i] = _start_text(prompts[i], columns[0][i], tokenizer)
        p, cut_prompt = _fit_prompt(prompts[i], prompt_budget)
        room = max_length - len(p)
        kept = [column[i][:room] for column in columns]
        stats.truncated_prompts += cut_prompt
        stats.truncated_responses += any(len(k) < len(column[i]) for k, column in zip(kept, columns))
        rows.append((p, kept))
    return rows, stats


def tokenize_pairs(
    records: list[PreferenceRecord], tokenizer, max_length: int, max_prompt_length: int, source: str = "data"
) -> tuple[list[TokenizedPair], TruncationStats]:
    """Tokenize pairs under the truncation policy of the module docstring."""
    columns = [[r.chosen for r in records], [r.rejected for r in records]]
    rows, stats = _tokenize(records, columns, tokenizer, max_length, max_prompt_length, source)
    out = [TokenizedPair(index=i, prompt_ids=p, chosen_ids=c, rejected_ids=rj) for i, (p, (c, rj)) in enumerate(rows)]
    return out, stats


def tokenize_unpaired(
    records: list[UnpairedRecord], tokenizer, max_length: int, max_prompt_length: int, source: str = "data"
) -> tuple[list[TokenizedUnpaired], TruncationStats]:
    """Unpaired records under the same truncation policy as tokenize_pairs."""
    rows, stats = _tokenize(
        records, [[r.completion for r in records]], tokenizer, max_length, max_prompt_length, source
    )
    out = [
        TokenizedUnpaired(index=i, prompt_ids=p, completion_ids=c, label=r.label)
        for i, ((p, (c,)), r) in enumerate(zip(rows, records))
    ]
    return out, stats


def tokenize_prompts(
    records: list[PromptRecord], tokenizer, max_length: int, max_prompt_length: int, source: str = "data"
) -> tuple[list[TokenizedPrompt], TruncationStats]:
    """Prompts for generation, under the prompt half of the truncation policy."""
    rows, stats = _tokenize(records, [], tokenizer, max_length, max_prompt_length, source)
    return [TokenizedPrompt(index=i, prompt_ids=p) for i, (p, _) in enumerate(rows)], stats
