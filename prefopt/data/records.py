"""The canonical record types every input format becomes, and the data kinds a method may ask for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prefopt.errors import PrefoptError

Message = dict[str, str]  # {"role": ..., "content": ...}

# What a method may ask load_records for (see prefopt.data.formats.as_kind).
KINDS = ("paired", "unpaired", "demonstrations", "prompt", "native")


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair: the conversation so far and two assistant replies."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    row: int  # 1-based row in the source
    raw: bool = False  # plain strings in the source (TRL's standard format): see raw_prompt_text


@dataclass(frozen=True)
class UnpairedRecord:
    """One reply judged on its own (KTO-style): desirable when label is True."""

    prompt: tuple[Message, ...]  # () for language-modelling text (a `text` column): the completion is all of it
    completion: str
    label: bool
    row: int
    raw: bool = False


@dataclass(frozen=True)
class PromptRecord:
    """A conversation waiting for a reply (online methods, evaluation)."""

    prompt: tuple[Message, ...]
    row: int
    raw: bool = False


def raw_prompt_text(record) -> str:
    """The prompt of a raw (plain-string) record as the model sees it: the string itself, "" for text data."""
    return "".join(m["content"] for m in record.prompt)


def last_user_message(prompt: str | Sequence[Message]) -> str:
    """The text of a conversation's final user turn: what a gold rule grades a reply against.

    A bare string is taken as that text. One message dict where a conversation
    belongs is a TypeError (a common slip: one conversation passed as a list of them).
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        raise TypeError(
            "a prompt is a list of messages or a string, got a single message dict; pass one prompt per response"
        )
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise PrefoptError("the prompt has no user message to grade against")
    return users[-1]
