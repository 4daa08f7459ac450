"""Row -> canonical record: column detection, per-row validation, and conversion between kinds.

Formats, detected from the columns (extra columns are ignored)
--------------------------------------------------------------
- ``chosen`` + ``rejected`` + ``prompt`` -> paired, explicit prompt. Per row,
  ``prompt`` is a string or a list of ``{role, content}`` messages, and each
  response is a string (standard format) or a list of messages (TRL's
  conversational format). For a message list the response is the content of
  its LAST message, which must be an assistant message; the messages before it
  belong to the prompt: if they start with the prompt (datasets such as
  UltraFeedback repeat the whole dialogue in ``chosen``) they replace it,
  otherwise they are appended to it. Both sides must end up with the same prompt.
- ``chosen`` + ``rejected`` without ``prompt`` -> paired, implicit prompt:
  (a) message lists: all messages but the last are the prompt and must be equal
  on both sides; the last message of each is the (assistant) response;
  (b) Anthropic-HH strings ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``: split into
  messages at those markers; the prompt is everything before the last
  ``"\\n\\nAssistant:"`` (equal on both sides), the response what follows it.
- ``prompt`` + ``completion`` + ``label`` -> unpaired (KTO). ``label`` is a
  boolean; the strings "true"/"false" and the numbers 0/1 (CSV) are accepted.
  ``completion`` is a string or a message list as above.
- ``prompt`` + ``completion`` without ``label`` -> demonstrations (SFT): every
  completion is a desirable example.
- ``prompt`` alone -> prompts only (string or message list).
- other tools' formats (``messages``, Alpaca, ShareGPT, LLaMA-Factory ranking) and
  the ``columns=`` renaming: :mod:`prefopt.data.foreign`, applied first.

- ``text`` alone -> demonstrations (SFT) of language-modelling text (TRL's
  standard language-modelling format): the whole text is the completion, with no prompt.

A plain string prompt becomes ``[{"role": "user", "content": prompt}]``. A row whose prompt and responses are all
plain strings is marked ``raw`` (TRL's standard format): the run option ``chat_template`` decides whether the model
sees those strings as they are (``auto``, the default, as TRL) or wrapped in a chat template
(:mod:`prefopt.training.chat_template`). Message lists are conversational and always go through a template.

Kinds: ``"native"`` keeps the records as the format gives them;
``"demonstrations"`` takes the chosen side of pairs, the desirable examples of
unpaired data, or demonstrations; ``"paired"`` needs paired data; ``"unpaired"`` takes unpaired data or
splits each pair into (prompt, chosen, True) and (prompt, rejected, False);
``"prompt"`` takes the prompts of any data, deduplicated, first occurrence kept.

Bad input raises :class:`PrefoptError` with one line naming the file, the row
and the field; the first problem found is the one reported.

Size: one field's text (a string, or the roles and contents of a message list
together) may hold at most ``max_field_chars`` characters (default
:data:`MAX_FIELD_CHARS`, a million). The limit only bounds memory: it is
checked before anything is tokenised, and it is far above any text that fits a
model's context (a prompt longer than ``max_length`` tokens is an error later
anyway; a long response is truncated), so no real row is refused. Text must
also be valid Unicode (JSON can spell an unpaired surrogate, ``"\\ud800"``,
which no tokenizer accepts).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from prefopt.data.records import KINDS, Message, PreferenceRecord, PromptRecord, UnpairedRecord
from prefopt.data.sources import read_numbered_rows, type_name
from prefopt.errors import PrefoptError

_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_KNOWN_COLUMNS = ("prompt", "chosen", "rejected", "completion", "label", "text")
_SURROGATE = re.compile("[\ud800-\udfff]")

MAX_FIELD_CHARS = 1_000_000  # characters per text field; ~250k tokens, beyond any max_length in use


def _clip(text: str, limit: int = 40) -> str:
    """Text read from a file, cut short for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    """A value read from a file as an error message shows it: repr for strings, cut short."""
    return _clip(repr(value) if isinstance(value, str) else str(value))


def _column_list(columns: Sequence[str], limit: int = 20) -> str:
    """Column names for a message: a file may hold any number of them, of any length."""
    more = f", ... ({len(columns) - limit} more)" if len(columns) > limit else ""
    return ", ".join(_clip(str(c)) for c in columns[:limit]) + more


# ---------------------------------------------------------------- format detection


def _columns(rows: Sequence[dict]) -> list[str]:
    """Union of the keys of all rows, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _close(column: str, candidates: Sequence[str], cutoff: float) -> str | None:
    """The candidate most like `column` (case-insensitive), if any is close enough."""
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(column.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[match[0]] if match else None


def _missing_column(name: str, column: str, columns: list[str]) -> PrefoptError:
    close = _close(column, [c for c in columns if c not in _KNOWN_COLUMNS], cutoff=0.6)
    hint = f"; did you mean '{_clip(close)}'?" if close else ""
    return PrefoptError(f"{name}: missing column '{column}' (columns: {_column_list(columns) or 'none'}{hint})")


def detect_format(columns: Sequence[str], name: str = "data") -> str:
    """'paired', 'paired-implicit', 'unpaired', 'demonstrations', 'prompt' or 'text' from the column names.

    A near-miss column (a misspelled 'rejected', a 'promt' next to chosen and
    rejected) is reported as missing with a did-you-mean, not silently ignored.
    """
    cols = list(columns)
    has = set(cols)
    others = [c for c in cols if c not in _KNOWN_COLUMNS]
    if has & {"chosen", "rejected"}:
        for needed in ("chosen", "rejected"):
            if needed not in has:
                raise _missing_column(name, needed, cols)
        if "prompt" in has:
            return "paired"
        if _close("prompt", others, cutoff=0.85):  # 'promt', 'Prompt' (but not 'prompt_id')
            raise _missing_column(name, "prompt", cols)
        return "paired-implicit"
    if has & {"completion", "label"}:
        for needed in ("prompt", "completion"):
            if needed not in has:
                raise _missing_column(name, needed, cols)
        if "label" in has:
            return "unpaired"
        if _close("label", others, cutoff=0.75):  # 'lable', 'labels'
            raise _missing_column(name, "label", cols)
        return "demonstrations"
    if "prompt" in has:
        return "prompt"
    if "text" in has:
        return "text"
    for known in ("prompt", "chosen", "rejected", "completion", "label"):
        if _close(known, others, cutoff=0.75):
            raise _missing_column(name, known, cols)
    raise PrefoptError(
        f"{name}: no known columns (columns: {_column_list(cols) or 'none'}); expected prompt+chosen+rejected, "
        "chosen+rejected, prompt+completion(+label), prompt, text, messages, instruction+output (Alpaca), "
        "conversations (ShareGPT); map yours with columns=, e.g. "
        f"columns={_mapping_example(cols)}"
    )


def _mapping_example(columns: list[str]) -> str:
    """A columns= value for the user's own columns: the first three onto prompt, chosen, rejected."""
    names = [c for c in columns if isinstance(c, str) and ":" not in c and "," not in c and len(c) <= 40][:3]
    targets = ("prompt", "chosen", "rejected") if len(names) >= 3 else ("prompt", "completion")
    pairs = [f"{n}:{t}" for n, t in zip(names, targets)] or ["question:prompt", "answer:completion"]
    return ",".join(pairs)


# ---------------------------------------------------------------- row validation


class _Row:
    """One source row being validated: knows how to name itself in an error."""

    def __init__(self, name: str, row: int, values: dict, max_chars: int = MAX_FIELD_CHARS):
        self.name, self.row, self.values, self.max_chars = name, row, values, max_chars

    def error(self, field: str | None, problem: str) -> PrefoptError:
        where = f"{self.name} row {self.row}" + (f" field '{field}'" if field else "")
        return PrefoptError(f"{where}: {problem}")

    def get(self, field: str) -> Any:
        if field not in self.values:
            close = difflib.get_close_matches(field, [str(k) for k in self.values], n=1)
            hint = f"; did you mean '{_clip(close[0])}'?" if close else ""
            raise self.error(field, f"missing column '{field}'{hint}")
        value = self.values[field]
        if value is None:
            raise self.error(field, "missing value (null or empty cell)")
        return value

    def check_size(self, field: str, chars: int) -> None:
        """The size cap of the module docstring, checked before any text is tokenised."""
        if chars > self.max_chars:
            limit = f"more than the {self.max_chars:,} one field may hold (a wrong column?)"
            raise self.error(field, f"{chars:,} characters of text, {limit}")

    def unicode(self, value: str, field: str, what: str = "text") -> None:
        bad = _SURROGATE.search(value)
        if bad:
            raise self.error(
                field, f"{what} is not valid Unicode (unpaired surrogate {bad.group()!a} at character {bad.start()})"
            )

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected a string or a list of messages, got {type_name(value)}")
        self.check_size(field, len(value))
        if not value.strip():
            raise self.error(field, "empty string")
        self.unicode(value, field)
        return value

    def messages(self, value: Any, field: str) -> list[Message]:
        """A non-empty list of {role, content} dicts with non-empty string content."""
        if not isinstance(value, (list, tuple)):
            raise self.error(field, f"expected a string or a list of messages, got {type_name(value)}")
        if not value:
            raise self.error(field, "empty list of messages")
        out, chars = [], 0
        for i, msg in enumerate(value, start=1):
            if not isinstance(msg, dict):
                raise self.error(
                    field, f"message {i} is not an object with 'role' and 'content' (got {type_name(msg)})"
                )
            for key in ("role", "content"):
                if key not in msg or msg[key] is None:
                    raise self.error(field, f"message {i} has no '{key}'")
                if not isinstance(msg[key], str):
                    raise self.error(field, f"message {i} '{key}' must be a string, got {type_name(msg[key])}")
            chars += len(msg["role"]) + len(msg["content"])
            self.check_size(field, chars)
            if not msg["role"].strip():
                raise self.error(field, f"message {i} has an empty role")
            if not msg["content"].strip():
                raise self.error(field, f"message {i} has empty content")
            self.unicode(msg["role"], field, f"message {i} role")
            self.unicode(msg["content"], field, f"message {i} content")
            out.append({"role": msg["role"], "content": msg["content"]})
        return out

    def prompt(self, field: str = "prompt") -> list[Message]:
        value = self.get(field)
        if isinstance(value, str):
            return [{"role": "user", "content": self.text(value, field)}]
        return self.messages(value, field)

    def response(self, field: str) -> tuple[list[Message], str]:
        """(messages that extend the prompt, response text) of a response column."""
        value = self.get(field)
        if isinstance(value, str):
            return [], self.text(value, field)
        msgs = self.messages(value, field)
        last = msgs[-1]
        if last["role"] != "assistant":
            raise self.error(field, f"the last message must be an assistant message, got role {_shown(last['role'])}")
        return msgs[:-1], last["content"]


def _join_prompt(prompt: list[Message], lead: list[Message]) -> list[Message]:
    """Prompt + the messages a response list carries before its reply (see module doc)."""
    if not lead:
        return prompt
    if lead[: len(prompt)] == prompt:
        return lead
    return prompt + lead


def _parse_hh(row: _Row, field: str) -> tuple[list[Message], str]:
    """An Anthropic-HH dialogue string -> (prompt messages, final assistant reply)."""
    text = row.text(row.get(field), field)
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _HH_MARKER.split(text)  # [lead, role, content, role, content, ...]
    if len(parts) < 3 or "Assistant" not in parts[1::2]:
        raise row.error(
            field,
            "no 'prompt' column, and the text has no '\\n\\nAssistant:' marker to split the prompt from the response",
        )
    if parts[-2] != "Assistant":
        raise row.error(field, "the dialogue ends with a Human turn, not an '\\n\\nAssistant:' response")
    messages = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    for role, content in zip(parts[1:-2:2], parts[2:-2:2]):
        if not content.strip():
            raise row.error(field, f"empty {role} turn")
        messages.append({"role": _HH_ROLES[role], "content": content.strip()})
    if not messages:
        raise row.error(field, "no prompt before the final '\\n\\nAssistant:' turn")
    response = parts[-1].strip()
    if not response:
        raise row.error(field, "empty response after the final '\\n\\nAssistant:'")
    return messages, response


def _implicit_side(row: _Row, field: str) -> tuple[list[Message], str]:
    value = row.get(field)
    if isinstance(value, str):
        return _parse_hh(row, field)
    msgs = row.messages(value, field)
    if msgs[-1]["role"] != "assistant":
        raise row.error(field, f"the last message must be an assistant message, got role {_shown(msgs[-1]['role'])}")
    if len(msgs) < 2:
        raise row.error(field, "no 'prompt' column, and the dialogue has no messages before the response")
    return msgs[:-1], msgs[-1]["content"]


def _pair(row: _Row, implicit: bool) -> PreferenceRecord:
    if implicit:
        chosen_value, rejected_value = row.get("chosen"), row.get("rejected")
        if isinstance(chosen_value, str) != isinstance(rejected_value, str):
            raise row.error("rejected", f"expected the same shape as 'chosen', got {type_name(rejected_value)}")
        prompt_c, chosen = _implicit_side(row, "chosen")
        prompt_r, rejected = _implicit_side(row, "rejected")
        if prompt_c != prompt_r:
            raise row.error(
                None, "'chosen' and 'rejected' do not share a prompt (they must differ only in the last assistant turn)"
            )
    else:
        prompt = row.prompt()
        lead_c, chosen = row.response("chosen")
        lead_r, rejected = row.response("rejected")
        prompt_c, prompt_r = _join_prompt(prompt, lead_c), _join_prompt(prompt, lead_r)
        if prompt_c != prompt_r:
            raise row.error(None, "'chosen' and 'rejected' continue the prompt with different messages")
    if chosen.strip() == rejected.strip():
        raise row.error(None, "'chosen' and 'rejected' are identical")
    raw = not implicit and _all_strings(row, ("prompt", "chosen", "rejected"))
    return PreferenceRecord(prompt=tuple(prompt_c), chosen=chosen, rejected=rejected, row=row.row, raw=raw)


def _all_strings(row: _Row, fields: Sequence[str]) -> bool:
    """Whether these fields are all plain strings (TRL's standard format, kept as raw text by default)."""
    return all(isinstance(row.values.get(f), str) for f in fields)


def _label(row: _Row) -> bool:
    value = row.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    shown = _shown(value) if isinstance(value, (str, int, float)) else type_name(value)
    raise row.error("label", f"expected a boolean (true/false or 1/0), got {type_name(value)} {shown}")


def _unpaired(row: _Row, labelled: bool = True) -> UnpairedRecord:
    """prompt + completion (+ label); a demonstration (no label column) is a desirable example."""
    prompt = row.prompt()
    lead, completion = row.response("completion")
    label = _label(row) if labelled else True
    raw = _all_strings(row, ("prompt", "completion"))
    return UnpairedRecord(prompt=tuple(_join_prompt(prompt, lead)), completion=completion, label=label, row=row.row,
                          raw=raw)  # fmt: skip


def _text(row: _Row) -> UnpairedRecord:
    """A `text` row: language-modelling text, all of it the completion of an empty raw prompt."""
    return UnpairedRecord(prompt=(), completion=row.text(row.get("text"), "text"), label=True, row=row.row, raw=True)


# ---------------------------------------------------------------- kinds


def split_pairs(records: Sequence[PreferenceRecord]) -> list[UnpairedRecord]:
    """Each pair -> (prompt, chosen, True), (prompt, rejected, False); rows kept."""
    out = []
    for r in records:
        out.append(UnpairedRecord(prompt=r.prompt, completion=r.chosen, label=True, row=r.row, raw=r.raw))
        out.append(UnpairedRecord(prompt=r.prompt, completion=r.rejected, label=False, row=r.row, raw=r.raw))
    return out


def unique_prompts(records: Sequence) -> list[PromptRecord]:
    """The distinct prompts of any records, in order of first appearance."""
    seen: set = set()
    out = []
    for r in records:
        key = (r.raw, tuple((m["role"], m["content"]) for m in r.prompt))
        if key not in seen:
            seen.add(key)
            out.append(PromptRecord(prompt=tuple(r.prompt), row=r.row, raw=r.raw))
    return out


def as_kind(records: list, kind: str, name: str = "data") -> list:
    """Convert paired/unpaired/prompt records to the requested kind (or explain why not)."""
    _check_kind(kind)
    if kind == "native":
        return records
    if kind == "prompt":
        if records and all(isinstance(r, UnpairedRecord) and not r.prompt for r in records):
            raise PrefoptError(f"{name} holds language-modelling text only (a 'text' column); this needs prompts")
        return unique_prompts([r for r in records if r.prompt])
    if not records:
        return records
    first = records[0]
    if kind == "demonstrations":
        if isinstance(first, PreferenceRecord):  # the chosen side of each pair
            return [UnpairedRecord(prompt=r.prompt, completion=r.chosen, label=True, row=r.row, raw=r.raw)
                    for r in records]  # fmt: skip
        if isinstance(first, UnpairedRecord):  # desirable examples only
            return [r for r in records if r.label]
        raise PrefoptError(f"{name} holds prompts only; this needs demonstrations (prompt, completion)")
    if kind == "paired":
        if isinstance(first, PreferenceRecord):
            return records
        raise PrefoptError(f"{name} holds {_held(first)}; this needs paired data (prompt, chosen, rejected)")
    if isinstance(first, PreferenceRecord):
        return split_pairs(records)
    if isinstance(first, UnpairedRecord):
        return records
    raise PrefoptError(f"{name} holds prompts only; this needs prompt, completion, label (or prompt, chosen, rejected)")


def _held(first) -> str:
    """What a file of records like `first` holds, for an error."""
    if isinstance(first, UnpairedRecord):
        return "language-modelling text ('text')" if not first.prompt else "unpaired data (prompt, completion, label)"
    return "prompts only"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PrefoptError(f"unknown data kind '{kind}' (expected one of: {', '.join(KINDS)})")


def load_records(source: str, kind: str = "paired", max_field_chars: int = MAX_FIELD_CHARS,
                 columns: str = "") -> list:  # fmt: skip
    """Load `source` as canonical records of `kind` ('paired', 'unpaired' or 'prompt').

    Sources: :mod:`prefopt.data.sources`; formats, kinds, the size limit `max_field_chars` and
    error messages: this module's docstring; other tools' formats and the `columns` renaming
    (``"question:prompt,answer:completion"``): :mod:`prefopt.data.foreign`.
    """
    from prefopt.data.foreign import convert, foreign_format, parse_columns, rename

    _check_kind(kind)
    if source.startswith("builtin:"):
        raise PrefoptError(
            f"{source}: built-in data sets are made by their tasks; load them with prefopt.tasks.load_dataset"
        )
    mapping = parse_columns(columns)
    numbered, name = read_numbered_rows(source)
    if not numbered:
        raise PrefoptError(f"{name}: the dataset is empty (no rows)")
    numbered = rename(numbered, mapping, name)
    foreign = foreign_format(_columns([values for _, values in numbered]))
    if foreign:
        numbered = [(row, convert(foreign, values, name, row)) for row, values in numbered]
    fmt = detect_format(_columns([values for _, values in numbered]), name)
    records = [_record(fmt, _Row(name, row, values, max_field_chars)) for row, values in numbered]
    return as_kind(records, kind, name)


def _record(fmt: str, row: _Row):
    if fmt == "paired":
        return _pair(row, implicit=False)
    if fmt == "paired-implicit":
        return _pair(row, implicit=True)
    if fmt == "unpaired":
        return _unpaired(row)
    if fmt == "demonstrations":
        return _unpaired(row, labelled=False)
    if fmt == "text":
        return _text(row)
    return PromptRecord(prompt=tuple(row.prompt()), row=row.row, raw=_all_strings(row, ("prompt",)))
