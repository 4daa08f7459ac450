"""Is a capability item something preference training saw? n-gram overlap with the prompts.

Texts are compared as whitespace tokens, lowercased, with punctuation stripped
from each token (a token that is only punctuation, such as "+", disappears).
An item overlaps a prompt when they share a run of ``n`` consecutive tokens
(default 8). An item shorter than ``n`` tokens overlaps a prompt that contains
its whole token sequence (the rule of GPT-3's contamination study for short
test items): otherwise a verbatim copy of a short training question, "What is
the capital of France?" (6 tokens), could never be found by an 8-gram check.

Items are question strings or records with a ``"question"`` field (the
packaged ``{"question", "choices", "label"}`` lines): the question is what a
prompt could have copied.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence

from prefopt.errors import PrefoptError

N_DEFAULT = 8
_STRIP = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014"


def tokens(text: str) -> list[str]:
    """Whitespace tokens, lowercased, punctuation stripped from each end; empty ones dropped."""
    out = []
    for raw in text.lower().split():
        token = raw.strip(_STRIP)
        if token:
            out.append(token)
    return out


def _item_text(item) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("question"), str):
        return item["question"]
    raise PrefoptError(f"contamination: an item is a string or a record with a 'question' string, got {item!r:.80}")


def _grams(toks: list[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i : i + size]) for i in range(len(toks) - size + 1)]


def contamination(items: Sequence, prompts: Sequence[str], n: int = N_DEFAULT) -> list[tuple[int, int, str]]:
    """(item_index, prompt_index, shared_ngram) for every item that overlaps some prompt; [] when clean.

    One tuple per overlapping item, in item order: its first n-gram (in item
    order) found in any prompt, with the lowest index of a prompt containing it;
    shared_ngram is that n-gram's tokens joined by spaces. An item shorter than
    n tokens is one gram of its own length (see the module docstring).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PrefoptError(f"contamination: n must be a positive number of tokens, got {n!r}")
    item_tokens = [tokens(_item_text(item)) for item in items]
    prompt_tokens = [tokens(p) for p in prompts]
    indexes: dict[int, dict[tuple[str, ...], int]] = {}  # gram size -> gram -> first prompt containing it

    def index(size: int) -> dict[tuple[str, ...], int]:
        if size not in indexes:
            found: dict[tuple[str, ...], int] = {}
            for j, toks in enumerate(prompt_tokens):
                for gram in _grams(toks, size):
                    found.setdefault(gram, j)
            indexes[size] = found
        return indexes[size]

    out = []
    for i, toks in enumerate(item_tokens):
        if not toks:
            continue
        size = min(n, len(toks))
        grams = index(size)
        for gram in _grams(toks, size):
            if gram in grams:
                out.append((i, grams[gram], " ".join(gram)))
                break
    return out


def _named(group, what: str) -> list[tuple[str, list]]:
    """[(name, list)] from a Mapping name -> sequence, or one unnamed sequence."""
    if isinstance(group, Mapping):
        return [(str(name), list(values)) for name, values in group.items()]
    if isinstance(group, (str, bytes)):
        raise PrefoptError(f"check_uncontaminated: {what} must be a list (or a dict of lists), not one string")
    return [("", list(group))]


def check_uncontaminated(items, prompts, n: int = N_DEFAULT) -> None:
    """Raise PrefoptError naming the first item that shares an n-gram with a prompt; None when all are clean.

    items: items to check (strings or ``{"question": ...}`` records), or a
    dict ``{name: items}`` (e.g. ``{"prefopt_world": [...], "sycophancy
    probes": [...]}``); prompts: training and held-out prompt texts,
    or a dict ``{source name: prompts}`` (e.g. ``{"qa train": [...], "qa
    heldout": [...]}``). The names appear in the message with the indices.
    """
    item_groups, prompt_groups = _named(items, "items"), _named(prompts, "prompts")
    flat_prompts = [(name, j, text) for name, texts in prompt_groups for j, text in enumerate(texts)]
    for item_name, group in item_groups:
        hits = contamination(group, [text for _, _, text in flat_prompts], n)
        if hits:
            i, k, gram = hits[0]
            prompt_name, j, prompt = flat_prompts[k]
            where = f"'{item_name}' item {i}" if item_name else f"item {i}"
            source = f"'{prompt_name}' prompt {j}" if prompt_name else f"prompt {j}"
            raise PrefoptError(
                f"{where} {_item_text(group[i])!r} is contaminated: it shares {gram!r} (n={n}) "
                f"with {source} {prompt!r} ({len(hits)} item(s) overlap in all)"
            )


def load_items(path) -> list[dict]:
    """The records of a capability jsonl file (one JSON object per non-empty line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
