"""Every input format -> one canonical record type; chat template; truncation; collation.

- :mod:`prefopt.data.records`: the record types (pairs, unpaired examples, prompts) and data kinds.
- :mod:`prefopt.data.sources`: files, folders and hub datasets -> numbered rows.
- :mod:`prefopt.data.formats`: rows -> records (column detection, validation, one-line errors), kinds.
- :mod:`prefopt.data.tokenize`: records -> token ids under the truncation policy.
- :mod:`prefopt.data.batching`: token ids -> padded batches, and the batch order.
"""

from __future__ import annotations

from prefopt.data.batching import bucketed_batches, collate_pairs, collate_unpaired
from prefopt.data.formats import as_kind, detect_format, load_records, split_pairs, unique_prompts
from prefopt.data.records import (
    KINDS,
    Message,
    PreferenceRecord,
    PromptRecord,
    UnpairedRecord,
    last_user_message,
)
from prefopt.data.sources import read_rows
from prefopt.data.tokenize import (
    TokenizedPair,
    TokenizedPrompt,
    TokenizedUnpaired,
    TruncationStats,
    encode_response,
    render_prompt,
    render_prompt_text,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_unpaired,
)

__all__ = [
    "KINDS",
    "Message",
    "PreferenceRecord",
    "PromptRecord",
    "TokenizedPair",
    "TokenizedPrompt",
    "TokenizedUnpaired",
    "TruncationStats",
    "UnpairedRecord",
    "as_kind",
    "bucketed_batches",
    "collate_pairs",
    "collate_unpaired",
    "detect_format",
    "encode_response",
    "last_user_message",
    "load_records",
    "read_rows",
    "render_prompt",
    "render_prompt_text",
    "split_pairs",
    "tokenize_pairs",
    "tokenize_prompts",
    "tokenize_unpaired",
    "unique_prompts",
]
