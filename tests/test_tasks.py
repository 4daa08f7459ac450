"""The built-in qa task: determinism, the gold rule, pair invariants, tokenisation."""

from __future__ import annotations

import pytest

from prefopt.data import PreferenceRecord, PromptRecord, UnpairedRecord, load_records, tokenize_pairs
from prefopt.errors import PrefoptError
from prefopt.tasks import (
    FILLERS,
    _mentions,
    addition,
    backwards,
    builtin_task_names,
    capital,
    first_letter,
    generate_qa,
    gold_score,
    load_builtin,
    multiplication,
    parse_question,
    unit_fact,
)


@pytest.fixture(scope="module")
def qa():
    return load_builtin("qa")


def question_of(record: PreferenceRecord) -> str:
    return record.prompt[-1]["content"]


def test_task_names_and_unknown_name():
    assert builtin_task_names() == ["qa"]
    with pytest.raises(PrefoptError, match=r"unknown built-in dataset 'builtin:nope' \(available: builtin:qa\)"):
        load_records("builtin:nope")


def test_deterministic_under_seed():
    assert load_builtin("qa", n=300, seed=1) == load_builtin("qa", n=300, seed=1)
    assert load_builtin("qa", n=300, seed=1) != load_builtin("qa", n=300, seed=2)
    assert generate_qa(100, seed=5) == generate_qa(300, seed=5)[:100]  # n only adds rows at the end


def test_default_dataset_shape(qa):
    assert len(qa) == 2000 and [r.row for r in qa] == list(range(1, 2001))
    assert all(isinstance(r, PreferenceRecord) and len(r.prompt) == 1 and r.prompt[0]["role"] == "user" for r in qa)
    assert len({question_of(r) for r in qa}) > 300  # many distinct questions, not a handful repeated


@pytest.mark.parametrize(
    ("question", "response", "score"),
    [
        (addition(17, 25), "17 + 25 = 42.", 1.0),
        (addition(17, 25), "42", 1.0),  # shorter than the concise form: no penalty
        (addition(17, 25), "17 + 25 = 43.", 0.0),
        (addition(17, 25), "17 + 25 = 420.", -0.002),  # whole numbers only; one extra character
        (addition(17, 25), "17 + 25 = 42. Well, that is an interesting question.", 1.0 - 0.002 * 39),
        (addition(17, 25), "It is 42 or maybe 43.", 0.0 - 0.002 * 8),  # a distractor next to the answer: wrong
        (addition(17, 25), "42 " + "blah " * 500, 0.5),  # the length penalty is capped at 0.5
        (multiplication(6, 7), "6 times 7 is 42.", 1.0),
        (multiplication(6, 7), "6 times 7 is 48.", 0.0),
        ("What is the capital of Australia?", "canberra.", 1.0),  # case-insensitive, parsed from text
        ("What is the capital of Australia?", "Canberra, not Sydney.", 0.0),
        (unit_fact("How many meters are in a kilometer?"), "A kilometer has 1,000 meters.", 1.0 - 0.002),
        (first_letter("garden"), "The first letter of 'garden' is g.", 1.0),
        (first_letter("garden"), "The first letter of 'garden' is n.", 0.0),
        (backwards("stop"), "Spelled backwards, 'stop' is 'pots'.", 1.0),
        (backwards("stop"), "Spelled backwards, 'stop' is 'ptos'.", 0.0),
        ("How many legs does a spider have?", "Eight legs.", 0.0),  # digits only: the rule is simple
    ],
)
def test_gold_rule_hand_written(question, response, score):
    assert gold_score(question, response) == pytest.approx(score)


def test_distractors_never_include_operands_or_answer():
    for a in range(2, 61):
        for b in range(2, 61):
            q = addition(a, b)
            assert q.distractors and not set(q.distractors) & {str(a), str(b), q.answer}


def test_chosen_beats_rejected_and_pair_mix(qa):
    kinds = {"correctness": 0, "verbosity": 0}
    for r in qa:
        chosen, rejected = gold_score(question_of(r), r.chosen), gold_score(question_of(r), r.rejected)
        assert chosen > rejected, r
        assert chosen >= 0.5  # the chosen side is always right
        kinds["verbosity" if rejected >= 0.5 else "correctness"] += 1
    assert 0.4 < kinds["correctness"] / len(qa) < 0.6


def test_fillers_never_mention_an_answer(qa):
    questions = {parse_question(question_of(r)) for r in qa}
    for q in questions:
        for filler in FILLERS:
            assert not any(_mentions(filler, c) for c in (q.answer, *q.distractors)), (filler, q)


def test_not_a_builtin_question():
    with pytest.raises(PrefoptError, match="not a question of the built-in qa task"):
        parse_question("What is love?")
    with pytest.raises(PrefoptError):
        capital_question = "What is the capital of Atlantis?"
        parse_question(capital_question)
    assert capital("France").answer == "Paris"


def test_tokenizes_without_truncation(qa, tiny_tokenizer):
    pairs, stats = tokenize_pairs(qa, tiny_tokenizer, max_length=256, max_prompt_length=128, source="builtin:qa")
    assert (stats.rows, stats.truncated_prompts, stats.truncated_responses) == (2000, 0, 0)
    assert [p.index for p in pairs] == list(range(2000))
    assert all(p.chosen_ids[-1] == tiny_tokenizer.eos_token_id for p in pairs)


def test_kinds(qa):
    unpaired = load_records("builtin:qa", kind="unpaired")
    assert len(unpaired) == 4000 and isinstance(unpaired[0], UnpairedRecord)
    assert (unpaired[0].completion, unpaired[0].label, unpaired[1].completion, unpaired[1].label) == (qa[0].chosen, True, qa[0].rejected, False)
    prompts = load_builtin("qa", kind="prompt")
    assert isinstance(prompts[0], PromptRecord) and len(prompts) == len({question_of(r) for r in qa})
