"""The held-out split every run makes of its data, before anything else is done with it, and the rows it keeps."""

from __future__ import annotations

import sys

import torch

from prefopt.data.tokenize import apply_long_prompts
from prefopt.errors import PrefoptError
from prefopt.tasks import load_dataset
from prefopt.training import chat_template

EVAL_SPLIT_SEED = 12345  # fixed, so every seed of a sweep is judged on the same held-out pairs


def split_records(records: list, eval_size: int, source: str) -> tuple[list, list]:
    """A fixed random held-out split of the source rows (independent of the run's seed).

    The split is made on the rows as the file holds them, before pairs are
    turned into unpaired examples or demonstrations, so every algorithm is
    judged on the same held-out rows.
    """
    n = len(records)
    if n - eval_size < 1:
        raise PrefoptError(f"{source}: only {n} rows, not enough for eval_size={eval_size} held-out rows plus training")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SPLIT_SEED)).tolist()
    held = set(perm[:eval_size])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def load_split(run, tokenizer, kind: str) -> tuple[list, list, str | None]:
    """The run's data as (training records, held-out records, the chat-template notice to say once every check
    passed): loaded as `kind`, the run's chat_template applied to the tokenizer and to both record lists, and the
    held-out rows from eval_data or else the fixed split of the data."""
    chat_template.apply_to_tokenizer(tokenizer, run.chat_template)
    records = load_dataset(run.data, kind, run.columns)
    notice = chat_template.notice(records, run.chat_template, tokenizer, run.data)
    records = chat_template.apply_to_records(records, run.chat_template)
    if run.eval_data:  # the user's own held-out rows instead of a random split
        held = load_dataset(run.eval_data, kind, run.columns)
        return records, chat_template.apply_to_records(held, run.chat_template), notice
    return *split_records(records, run.eval_size, run.data), notice


def long_prompts(records: list, tokenizer, run, source: str, is_main: bool = True) -> tuple[list, int]:
    """apply_long_prompts under the run's long_prompts, with a one-line notice of what it did."""
    kept, long = apply_long_prompts(records, tokenizer, run.max_length, run.long_prompts, source)
    if long and is_main:
        budget = min(run.max_prompt_length, run.max_length - 1)
        done = "left out" if run.long_prompts == "drop" else f"cut to their last {budget} tokens"
        print(f"prefopt: {long} of {len(records)} prompts in {source} are longer than max_length={run.max_length} "
              f"tokens: {done} (long_prompts=truncate|drop|error)", file=sys.stderr)  # fmt: skip
    return kept, long
