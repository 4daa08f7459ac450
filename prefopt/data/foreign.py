"""Other tools' data formats, turned into prefopt's columns before a row is read (:mod:`prefopt.data.formats`).

Recognised from the columns (when the data has none of prefopt's own ``prompt``/``chosen``/``rejected``/
``completion`` layouts):

- ``messages`` (TRL's conversational language-modelling format, OpenAI ``role``/``content``): the last message,
  which must be the assistant's, is the completion; the ones before it the prompt.
- ``instruction`` (+ ``input``, ``system``) + ``output`` (Alpaca, LLaMA-Factory's supervised format): the prompt is
  the instruction, then a blank line and the input when there is one (a ``system`` text goes first as a system
  message); the output is the completion.
- ``instruction`` (+ ``input``, ``system``) + ``chosen`` + ``rejected`` (LLaMA-Factory's Alpaca ranking format):
  the same prompt, and the two answers as a pair.
- ``conversations`` of ``{"from", "value"}`` turns (ShareGPT; roles human/user, gpt/assistant, system): for
  demonstrations the last turn (gpt) is the completion; with ``chosen`` and ``rejected`` turns beside it
  (LLaMA-Factory's ShareGPT ranking format) every turn is the prompt and the two ``value``s the pair.

``columns=`` renames columns first (``columns=question:prompt,response_j:chosen,response_k:rejected``), so any
other layout can be mapped onto prefopt's or one of these.
"""

from __future__ import annotations

from typing import Any

from prefopt.data.sources import type_name
from prefopt.errors import PrefoptError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
OWN = ("prompt", "chosen", "rejected", "completion", "label")  # prefopt's columns
TARGETS = (*OWN, "messages", "instruction", "input", "system", "output", "conversations")  # what columns= may name


def parse_columns(spec: str) -> dict[str, str]:
    """``"a:prompt,b:chosen"`` -> {"a": "prompt", "b": "chosen"}; one-line errors naming the option."""
    mapping: dict[str, str] = {}
    if not spec or not spec.strip():
        return mapping
    for part in spec.split(","):
        source, sep, target = (s.strip() for s in part.partition(":"))
        if not sep or not source or not target:
            raise PrefoptError(f"option 'columns': expected SOURCE:TARGET pairs separated by commas, got {part!r}")
        if target not in TARGETS:
            raise PrefoptError(f"option 'columns': '{target}' is not a column prefopt reads ({', '.join(TARGETS)})")
        if source in mapping:
            raise PrefoptError(f"option 'columns': '{source}' is mapped twice")
        if target in mapping.values():
            raise PrefoptError(f"option 'columns': two columns are mapped to '{target}'")
        mapping[source] = target
    return mapping


def rename(numbered: list[tuple[int, dict]], mapping: dict[str, str], name: str) -> list[tuple[int, dict]]:
    """Rows with the mapped columns renamed (a row without a mapped column keeps its other columns, so that an
    optional one such as input may be absent; a mapping no row has is an error)."""
    if not mapping:
        return numbered
    seen = {key for _, values in numbered for key in values}
    missing = [s for s in mapping if s not in seen]
    if missing:
        raise PrefoptError(f"{name}: option 'columns' maps '{missing[0]}', which no row has (columns: "
                           f"{', '.join(sorted(map(str, seen))[:20])})")  # fmt: skip
    out = []
    for row, values in numbered:
        renamed = {mapping.get(k, k): v for k, v in values.items() if k not in mapping.values() or k in mapping}
        out.append((row, renamed))
    return out


def foreign_format(columns: list[str]) -> str | None:
    """The foreign format of these columns, or None (prefopt's own layouts come first)."""
    has = set(columns)
    if has & {"prompt", "completion"} or ({"chosen", "rejected"} <= has and not has & {"instruction", "conversations"}):
        return None
    if "conversations" in has:
        return "sharegpt-ranking" if {"chosen", "rejected"} <= has else "sharegpt"
    if "instruction" in has:
        if {"chosen", "rejected"} <= has:
            return "alpaca-ranking"
        if "output" in has:
            return "alpaca"
    if "messages" in has:
        return "messages"
    return None


def convert(fmt: str, values: dict, name: str, row: int) -> dict:
    """One row of a foreign format as prefopt's columns (message lists keep the chat turns)."""
    where = f"{name} row {row}"
    if fmt == "messages":
        msgs = _list(values, "messages", where)
        return {"prompt": msgs[:-1] or _no_prompt(where, "messages"), "completion": msgs[-1:]}
    if fmt in ("alpaca", "alpaca-ranking"):
        prompt = _alpaca_prompt(values, where)
        if fmt == "alpaca":
            return {"prompt": prompt, "completion": values.get("output")}
        return {"prompt": prompt, "chosen": values.get("chosen"), "rejected": values.get("rejected")}
    turns = _sharegpt(values, "conversations", where)
    if fmt == "sharegpt":
        return {"prompt": turns[:-1] or _no_prompt(where, "conversations"), "completion": turns[-1:]}
    chosen, rejected = (_sharegpt_turn(values.get(k), k, where) for k in ("chosen", "rejected"))
    return {"prompt": turns, "chosen": chosen, "rejected": rejected}


def _no_prompt(where: str, field: str):
    raise PrefoptError(f"{where} field '{field}': one message only; nothing before the reply to serve as the prompt")


def _list(values: dict, field: str, where: str) -> list:
    value = values.get(field)
    if not isinstance(value, list) or not value:
        raise PrefoptError(f"{where} field '{field}': expected a non-empty list, got {type_name(value)}")
    return value


def _alpaca_prompt(values: dict, where: str) -> list[dict]:
    instruction = values.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise PrefoptError(f"{where} field 'instruction': expected a non-empty string, got {type_name(instruction)}")
    extra = values.get("input")
    if extra is not None and not isinstance(extra, str):
        raise PrefoptError(f"{where} field 'input': expected a string, got {type_name(extra)}")
    text = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    system = values.get("system")
    lead = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return [*lead, {"role": "user", "content": text}]


def _sharegpt(values: dict, field: str, where: str) -> list[dict]:
    return [_role_turn(turn, f"{field}", where, i) for i, turn in enumerate(_list(values, field, where), start=1)]


def _role_turn(turn: Any, field: str, where: str, i: int) -> dict:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise PrefoptError(f"{where} field '{field}': turn {i} is not an object with 'from' and 'value'")
    role = SHAREGPT_ROLES.get(str(turn["from"]).strip().lower())
    if role is None:
        raise PrefoptError(f"{where} field '{field}': turn {i} comes from {str(turn['from'])[:40]!r} "
                           f"(expected one of: {', '.join(SHAREGPT_ROLES)})")  # fmt: skip
    return {"role": role, "content": turn["value"]}


def _sharegpt_turn(value: Any, field: str, where: str) -> str:
    """A ranking row's chosen / rejected turn: its value (a plain string is taken as it is)."""
    if isinstance(value, str):
        return value
    turn = _role_turn(value, field, where, 1)
    if turn["role"] != "assistant":
        raise PrefoptError(f"{where} field '{field}': expected a gpt (assistant) turn, got {turn['role']}")
    return turn["content"]
