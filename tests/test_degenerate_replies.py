"""Degenerate replies must not beat the starting model on the built-in tasks' gold rules, while a good reply can
still reach the maximum.

The battery (empty, whitespace, an echo of the prompt, YES/NO, 300-token fillers, every word of the task's own
vocabulary alone and repeated, all of them together, and the best constant reply a beam search over the task's
vocabulary finds) lives in benchmarks/degenerate_replies.py, which also prints it as a table for docs/benchmark.md;
the search itself is prefopt.tasks.degenerate (tests/test_degenerate_search.py).

To see the battery fail on another revision's gold rules (e.g. the rules before this check existed):
``PREFOPT_DEGENERATE_REV=<rev> pytest tests/test_degenerate_replies.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from prefopt.tasks import get_task
from prefopt.tasks.degenerate import search_constant

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "degenerate_replies.py"

# The bundled starting model's sampled (T=1) mean gold on held-out prompts under these rules: results/tasks/headroom.md
# (64 prompts x 16 samples, 48 new tokens). A degenerate reply must stay MARGIN below it: about 3 standard errors of
# the difference (the starting mean's SE over 64 prompts is ~0.02-0.04, a constant reply's over 256 prompts ~0.01).
STARTING_SAMPLED_MEAN = {"constraints": 0.129, "qa": -0.398, "tone": -0.389}
MARGIN = 0.05
HELDOUT = 256  # prompts the battery is scored on
SEARCH_PROMPTS = 96  # prompts the constant search optimises on (kept small so each task takes a few seconds)


@pytest.fixture(scope="module")
def degenerate():
    spec = importlib.util.spec_from_file_location("degenerate_replies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["constraints", "qa", "tone"])
def test_degenerate_replies_score_well_below_the_starting_model(degenerate, name):
    rev = os.environ.get("PREFOPT_DEGENERATE_REV")
    gold = degenerate.gold_of_revision(name, rev) if rev else get_task(name).gold
    prompts = get_task(name).prompts("heldout", HELDOUT)
    rows = degenerate.battery(name, gold, prompts, search_prompts=SEARCH_PROMPTS, pool_size=16)
    labels = [label for label, _, _ in rows]
    assert labels[-1] == "searched best constant" and len(rows) == 12
    threshold = STARTING_SAMPLED_MEAN[name] - MARGIN
    too_high = [(label, reply, round(value, 3)) for label, reply, value in rows if value > threshold]
    assert not too_high, f"{name}: degenerate replies above {threshold:.3f}: {too_high}"


def test_search_finds_the_known_hacks_of_a_naive_rule():
    """The search is strong enough to find a constant that games a lexicon-only rule (the old tone rule: polite
    words count wherever they are): three distinct polite words saturate it."""
    polite = {"thank", "sorry", "please"}

    def naive(prompt, response):
        return min(1.0, len(polite & set(response.lower().split())) / 3)

    prompts = get_task("tone").prompts("heldout", 32)
    reply, value = search_constant(naive, prompts, ["ok", "we", "thank", "sorry", "please"], pool_size=5)
    assert value == 1.0 and polite <= set(reply.split())


# ---------------------------------------------------------------- headroom: ideal and decent replies

IDEAL = {
    "qa": [
        ("What is 17 + 25?", "17 + 25 = 42."),
        ("What is 6 times 7?", "6 x 7 = 42"),
        ("What is the capital of Australia?", "The capital of Australia is Canberra."),
        ("How many legs does a spider have?", "A spider has 8 legs."),
        ("What is 'stop' spelled backwards?", "'stop' is 'pots'"),
    ],
    "constraints": [
        ("Describe the ocean in at most 8 words.", "The ocean is vast, blue and deep."),
        ("Name three fruits, separated by commas.", "apple, banana, cherry"),
        ("Answer in capital letters only: what do bees make?", "HONEY"),
        ("Start your answer with 'Yes' or 'No': is ice cold?", "Yes, ice is cold."),
        ("Reply with exactly one word: what colour is the sky?", "Blue."),
        ("Explain music in at least 20 words.",
         ("Music is sound arranged in time: melody, rhythm and harmony that people sing or play on instruments to "
         "share feelings and stories.")),
        ("Write a sentence about books. Wrap your entire answer in double quotes.", '"Books open doors to new worlds."'),
    ],
    "tone": [
        ("Reply to a customer who writes: 'My order arrived broken. I want my money back.'",
         ("We are so sorry your order arrived broken. Thank you for telling us; we will refund your money today. "
         "Please keep the item.")),
        ("Write a short note to a neighbour about your dog barking at night.",
         ("Hi, I am sorry about my dog barking at night. I will keep him inside after dark. Thank you for your "
         "patience, and please tell me if it happens again.")),
    ],
}  # fmt: skip

DECENT = {  # right in substance, imperfect in form: strictly between the minimum and the maximum
    "qa": [("What is 17 + 25?", "Well, that is an interesting question. 17 + 25 = 42. Hope this helps you out.")],
    "constraints": [
        ("Describe the ocean in at most 8 words. Include the word 'happy'.", "The ocean is blue and calm."),
        ("Name two drinks, separated by commas. Use lowercase letters only.", "Tea, coffee"),
    ],
    "tone": [
        ("Reply to a customer who writes: 'My order arrived broken. I want my money back.'",
         "Sorry your order arrived broken. We will refund the money."),
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", ["constraints", "qa", "tone"])
def test_ideal_replies_score_the_maximum(name):
    task = get_task(name)
    for prompt, reply in IDEAL[name]:
        assert task.gold(prompt, reply) == pytest.approx(task.gold_range[1]), (prompt, reply)


@pytest.mark.parametrize("name", ["constraints", "qa", "tone"])
def test_decent_replies_score_in_between(name):
    task = get_task(name)
    low, high = task.gold_range
    for prompt, reply in DECENT[name]:
        assert low < task.gold(prompt, reply) < high, (prompt, reply)
