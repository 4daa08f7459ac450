"""The run option ``chat_template``: which template turns the data's prompts into the text the model sees.

- ``auto`` (default, as TRL): conversational rows (message lists) go through the model's chat template; rows of
  plain strings (TRL's standard format, ``{"prompt": "The sky is", "chosen": " blue."}``) are used as raw text,
  prompt and response concatenated as they are; ``text`` rows are raw text too.
- ``model``: every row through the model's chat template, a plain-string prompt as one user turn.
- ``none``: no template: plain strings as raw text, message lists as ``User: ...`` / ``Assistant: ...`` lines.
- a path to a Jinja chat-template file: that template for every row (plain strings as one user turn); it
  replaces the model's, and is saved with the run's tokenizer so the trained model is used the way it was trained.

One line on stderr says what was applied (:func:`notice`), so a user never has to guess.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from prefopt.errors import PrefoptError, first_line

MODES = ("auto", "model", "none")  # or a template file
MAX_TEMPLATE_BYTES = 1_000_000  # a chat template is a few kB; the cap keeps a wrong path from being read whole
_PROBE = [{"role": "user", "content": "Hi"}]


def check_option(value: str) -> None:
    """The option's value, checked before anything is written: a mode, or a readable template file."""
    if value in MODES:
        return
    path = Path(value)
    if not path.is_file():
        raise PrefoptError(f"option 'chat_template': expected {', '.join(MODES)} or a template file, got {value!r} "
                           "(no such file)")  # fmt: skip
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise PrefoptError(f"{value}: {path.stat().st_size:,} bytes, more than a chat template "
                           f"({MAX_TEMPLATE_BYTES:,} at most; option 'chat_template')")  # fmt: skip


def apply_to_tokenizer(tokenizer, value: str) -> None:
    """Set the tokenizer's template as the option says (a file's template is checked by rendering one turn)."""
    if value == "none":
        tokenizer.chat_template = None
        return
    if value in MODES:
        return
    try:
        text = Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrefoptError(f"{value}: cannot read the chat template ({first_line(e)}; option 'chat_template')") from None
    tokenizer.chat_template = text
    try:
        tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja syntax or runtime errors of a user's template
        raise PrefoptError(f"{value}: the chat template does not render a user turn ({first_line(e)}; "
                           "option 'chat_template')") from None  # fmt: skip


def apply_to_records(records: list, value: str) -> list:
    """The records with their raw marks as the option says: only ``auto`` and ``none`` keep plain strings raw
    (language-modelling ``text`` rows, which have no prompt to template, stay raw under every mode)."""
    if value in ("auto", "none"):
        return records
    return [dataclasses.replace(r, raw=False) if getattr(r, "raw", False) and r.prompt else r for r in records]


def say(line: str | None, is_main: bool = True) -> None:
    """Print a :func:`notice` line on stderr (once the data has passed every check: an error stays one line)."""
    if line and is_main:
        print(f"prefopt: {line}", file=sys.stderr)


def notice(records: list, value: str, tokenizer, source: str) -> str | None:
    """One line: what was done with the rows of plain strings (counted in `records` as loaded, before
    :func:`apply_to_records`) and which template the others went through; None for conversational data
    through the model's own template."""
    if not records:
        return None
    raw = sum(1 for r in records if getattr(r, "raw", False))
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if value == "none" or (value in MODES and not has_template):
        line = f"{source}: no chat template ({len(records) - raw} conversational rows as 'User:'/'Assistant:' lines"
        line += f", {raw} rows of plain strings as raw text)" if raw else ")"
    elif value not in MODES:
        line = f"{source}: every row through the chat template of {value}"
    elif not raw:
        return None
    elif value == "auto":
        line = (f"{raw} of {len(records)} rows in {source} are plain strings: used as raw text, no chat template "
                "(TRL's standard format; chat_template=model wraps them in the model's template)")  # fmt: skip
    else:
        line = (f"{raw} of {len(records)} rows in {source} are plain strings: wrapped in the model's chat template "
                "as one user turn (chat_template=model)")  # fmt: skip
    return line
