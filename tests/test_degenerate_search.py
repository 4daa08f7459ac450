"""The best-constant-reply search (prefopt.tasks.degenerate): finds what a toy rule rewards, deterministic, works
for a custom task without a built-in vocabulary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefopt.errors import PrefoptError
from prefopt.tasks import get_task
from prefopt.tasks.degenerate import (
    FUNCTION_WORDS,
    best_constant_reply,
    custom_vocabulary,
    search_constant,
    search_vocabulary,
    topical_words,
)

THINGS = ["apples", "pears", "plums", "figs", "kiwis", "limes"]
PROMPTS = [f"Tell me about {thing}." for thing in THINGS]
REPLIES = ["I like banana bread.", "A banana is yellow.", "Sure, here you go."]


class Toy:
    """Rewards the word banana (+1) and a mention of the prompt's fruit (+0.5); costs 0.1 per word."""

    name = "toy"

    def gold(self, prompt: str, response: str) -> float:
        words = response.lower().split()
        thing = prompt.split()[-1].rstrip(".")
        return ("banana" in words) + 0.5 * (thing in words) - 0.1 * len(words)


def test_vocabularies():
    # "tell", "me", "about" are in every prompt (more than a third): only the fruit is topical
    assert topical_words(PROMPTS) == THINGS
    vocab = custom_vocabulary(PROMPTS, REPLIES)
    assert vocab[: len(THINGS)] == THINGS
    assert vocab[len(THINGS) : len(THINGS) + 2] == ["banana", "i"]  # in two replies, then first-seen order
    assert vocab[-len(FUNCTION_WORDS) :] != list(FUNCTION_WORDS)  # "a", "you" came from the replies already
    assert set(FUNCTION_WORDS) <= set(vocab) and len(vocab) == len(set(vocab))
    assert custom_vocabulary(PROMPTS) == THINGS + list(FUNCTION_WORDS)


def test_finds_the_banana():
    reply, value = best_constant_reply(Toy(), PROMPTS, REPLIES)
    # "banana" alone: 1 - 0.1 on every prompt. Adding a fruit gains 0.5 on one prompt in six (0.083) and costs 0.1;
    # the padded form "banana ok ok ok ok ok" costs 0.6.
    assert reply == "banana"
    assert value == pytest.approx(0.9)
    # without the replies the word is not in the vocabulary: the best is one fruit, 0.5 / 6 - 0.1 on average
    reply, value = best_constant_reply(Toy(), PROMPTS)
    assert reply == "apples" and value == pytest.approx(0.5 / 6 - 0.1)


def test_search_prompts_limits_the_prompts():
    # on the first three prompts each fruit is in a third of them (topical), and a fruit gains 0.5 / 3 for 0.1:
    # all three fruits score 0.5 - 0.3 on every prompt
    assert best_constant_reply(Toy(), PROMPTS, search_prompts=3) == ("apples pears plums", pytest.approx(0.2))
    # on one prompt every word is in all of them: only the function words are left, the best costs 0.1
    assert best_constant_reply(Toy(), PROMPTS, search_prompts=1) == ("the", pytest.approx(-0.1))
    with pytest.raises(PrefoptError, match="search_prompts must be a positive integer"):
        best_constant_reply(Toy(), PROMPTS, search_prompts=0)
    with pytest.raises(PrefoptError, match="no prompts"):
        best_constant_reply(Toy(), [])


def test_deterministic():
    tone = get_task("tone")
    prompts = tone.prompts("heldout", 16)
    first = best_constant_reply(tone, prompts)
    assert best_constant_reply(tone, prompts) == first
    # a built-in task searches its own vocabulary
    assert first == search_constant(tone.gold, prompts, search_vocabulary("tone", prompts))
    assert best_constant_reply(Toy(), PROMPTS, REPLIES) == best_constant_reply(Toy(), PROMPTS, REPLIES)


def test_vocabulary_does_not_depend_on_the_hash_seed():
    """Word counts tie often; ties keep first-seen order, never a set's (hash-seeded) order."""
    code = textwrap.dedent("""
        from prefopt.tasks import get_task
        from prefopt.tasks.degenerate import custom_vocabulary, search_vocabulary
        prompts = get_task("constraints").prompts("heldout", 48)
        print(search_vocabulary("constraints", prompts), custom_vocabulary(prompts, prompts[:8]))
    """)
    root = Path(__file__).resolve().parents[1]
    outputs = [
        subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    ]  # fmt: skip
    assert outputs[0] == outputs[1] and outputs[0].strip()


def test_custom_task(tmp_path, monkeypatch):
    from prefopt.bench.custom_task import custom_task

    (tmp_path / "toy_gold.py").write_text(
        "def gold(prompt, response):\n"
        "    words = response.lower().split()\n"
        "    return ('please' in words) + ('thanks' in words) - 0.05 * len(words)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"prompt": f"Write to {who} about the {what}.", "split": "heldout"}
            for who in ("Ann", "Bob", "Cy") for what in ("party", "rent", "noise")]  # fmt: skip
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = custom_task({"name": "letters", "prompts": str(tmp_path / "prompts.jsonl"), "gold": "toy_gold:gold"})
    prompts = task.prompts("heldout", 9)
    replies = ["Dear Ann, please come. Thanks!", "Thanks, please be quiet.", "Hello."]
    reply, value = best_constant_reply(task, prompts, replies)
    assert sorted(reply.split()) == ["please", "thanks"] and value == pytest.approx(2 - 0.1)
    assert best_constant_reply(task, prompts, replies) == (reply, value)
