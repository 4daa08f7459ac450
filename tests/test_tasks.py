"""Built-in tasks: the qa dataset (determinism, gold rule, pairs, tokenisation), the task framework
(qa, constraints, tone, custom tasks) and the gold judges."""

from __future__ import annotations

import json

import pytest

from prefopt.bench.custom_task import resolve_task
from prefopt.data import PreferenceRecord, PromptRecord, UnpairedRecord, tokenize_pairs
from prefopt.errors import PrefoptError
from prefopt.judges import GoldJudge, make_judge
from prefopt.tasks import (
    FILLERS,
    Task,
    addition,
    backwards,
    builtin_task_names,
    capital,
    first_letter,
    generate_qa,
    get_task,
    gold_score,
    hash_split,
    load_builtin,
    load_dataset,
    multiplication,
    parse_question,
    task_names,
    tone,
    unit_fact,
)
from prefopt.tasks import constraints as ct
from prefopt.tasks import qa as qa_module
from prefopt.tasks.constraints import Check


@pytest.fixture(scope="module")
def qa():
    return load_builtin("qa")


def question_of(record: PreferenceRecord) -> str:
    return record.prompt[-1]["content"]


def test_task_names_and_unknown_name():
    assert builtin_task_names() == ["constraints", "qa", "tone"]
    available = r"\(available: builtin:constraints, builtin:qa, builtin:tone\)"
    with pytest.raises(PrefoptError, match=r"unknown built-in dataset 'builtin:nope' " + available):
        load_dataset("builtin:nope")


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
        # a reply that names the subject: right 1, near miss (mentions a distractor) 0, each minus 0.002 per
        # character beyond the concise form (capped at 0.5); anything else -0.5
        (addition(17, 25), "17 + 25 = 42.", 1.0),
        (addition(17, 25), "25 + 17 is 42", 1.0),  # shorter than the concise form: no penalty
        (addition(17, 25), "42", -0.5),  # right, but does not say what it answers (no operand): a constant could
        (addition(17, 25), "17 + 25 = 43.", 0.0),
        (addition(17, 25), "17 + 25 = 420.", -0.5),  # whole numbers only: 420 is neither right nor a near miss
        (addition(17, 25), "17 + 25 = 50.", -0.5),  # a far-off answer counts as no answer
        (addition(17, 25), "17 + 25 = 43. Hope this helps you out.", 0.0 - 0.002 * 25),  # near miss, 25 extra chars
        (addition(17, 25), "", -0.5),  # no answer: the minimum, not 0
        (addition(17, 25), "What is 17 + 25?", -0.5),  # an echo names only the operands: no answer
        (addition(17, 25), "17 + 25 = 42. Well, that is an interesting question.", 1.0 - 0.002 * 39),
        (addition(17, 25), "17 + 25 is 42 or maybe 43.", -0.5),  # two candidate numbers: a guess, the minimum
        (capital("Australia"), "Australia: Canberra or maybe Sydney.", 0.0),  # a near miss next to the answer: wrong
        (addition(17, 25), "17 25 61 58 44 42", -0.5),  # a list of numbers holding the answer: a guess, the minimum
        (addition(17, 25), "17 + 25 = 42 " + "blah " * 500, 0.5),  # the length penalty is capped at 0.5
        (multiplication(6, 7), "6 times 7 is 42.", 1.0),
        (multiplication(6, 7), "6 times 7 is 48.", 0.0),
        ("What is the capital of Australia?", "australia's capital is canberra.", 1.0),  # case-insensitive; "'s"
        ("What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney.", 0.0 - 0.002 * 12),
        ("What is the capital of Australia?", "Australia: Sydney.", 0.0),  # the near miss
        ("What is the capital of Australia?", "Canberra.", -0.5),  # does not name Australia
        ("What is the capital of Mexico?", "Mexico City.", 1.0),
        (unit_fact("How many meters are in a kilometer?"), "A kilometer has 1,000 meters.", 1.0 - 0.002),
        (first_letter("garden"), "The first letter of 'garden' is g.", 1.0),
        (first_letter("garden"), "The first letter of 'garden' is n.", 0.0),
        (backwards("stop"), "Spelled backwards, 'stop' is 'pots'.", 1.0),
        (backwards("stop"), "Spelled backwards, 'stop' is 'ptos'.", 0.0),
        ("How many legs does a spider have?", "Eight legs.", -0.5),  # digits only: no number, no answer
        ("What is 20 minus 10?", "20 minus 10 is 10.", 1.0),  # an operand that is the answer: named once more
        ("What is 'stop' spelled backwards?", "pots", -0.5),  # does not name 'stop'
        ("What is 'stop' spelled backwards?", "'stop' reversed is 'post'", -0.5),  # neither right nor a near miss
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
            assert not any(qa_module._count(filler, c) for c in (q.answer, *q.distractors)), (filler, q)


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
    unpaired = load_dataset("builtin:qa", kind="unpaired")
    assert len(unpaired) == 4000 and isinstance(unpaired[0], UnpairedRecord)
    assert (unpaired[0].completion, unpaired[0].label, unpaired[1].completion, unpaired[1].label) == (
        qa[0].chosen,
        True,
        qa[0].rejected,
        False,
    )
    prompts = load_builtin("qa", kind="prompt")
    assert isinstance(prompts[0], PromptRecord) and len(prompts) == len({question_of(r) for r in qa})


# ================================================================ the task framework

TASKS = ["constraints", "qa", "tone"]


def test_task_names_and_unknown_task():
    assert task_names() == TASKS
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.description and "\n" not in task.description
    with pytest.raises(PrefoptError, match=r"unknown task 'nope' \(available: constraints, qa, tone; or a dict"):
        get_task("nope")
    with pytest.raises(PrefoptError, match="a task is a name"):
        get_task(3)


@pytest.mark.parametrize("name", TASKS)
def test_splits_deterministic_disjoint_and_prefixes(name):
    task = get_task(name)
    train, heldout = task.available("train"), task.available("heldout")
    assert heldout >= 300 and train >= 4 * heldout * 0.7  # a few hundred each, about 20% heldout
    all_train, all_heldout = task.prompts("train", train), task.prompts("heldout", heldout)
    assert len(set(all_train)) == train and len(set(all_heldout)) == heldout  # distinct texts
    assert not set(all_train) & set(all_heldout)
    assert all(hash_split(t) == "train" for t in all_train) and all(hash_split(t) == "heldout" for t in all_heldout)
    assert get_task(name).prompts("heldout", 300) == all_heldout[:300]  # deterministic; n only adds at the end
    assert task.prompts("train", 50) == all_train[:50]
    assert all(isinstance(t, str) and t.strip() for t in all_train[:50])


@pytest.mark.parametrize("name", TASKS)
def test_prompt_count_errors(name):
    task = get_task(name)
    with pytest.raises(PrefoptError, match=rf"task '{name}': the number of prompts must be at least 1, got 0"):
        task.prompts("train", 0)
    n = task.available("heldout")
    with pytest.raises(PrefoptError, match=rf"task '{name}': the heldout split has {n} prompts, asked for {n + 1}"):
        task.prompts("heldout", n + 1)
    with pytest.raises(PrefoptError, match=rf"task '{name}': unknown split 'test' \(expected train or heldout\)"):
        task.prompts("test", 1)


def test_gold_scores_checks_lengths_and_reads_message_lists():
    task = get_task("qa")
    assert task.gold_scores(
        ["What is 6 times 7?", [{"role": "user", "content": "What is 6 times 7?"}]], ["6 times 7 is 42", "6 x 7 = 48"]
    ) == [
        1.0,
        0.0,
    ]
    with pytest.raises(PrefoptError, match="task 'qa': gold_scores got 2 prompts and 1 responses"):
        task.gold_scores(["What is 6 times 7?"] * 2, ["42"])


# ---------------------------------------------------------------- qa as a task


def test_qa_task_gold_is_the_qa_rule():
    task = get_task("qa")
    assert task.gold("What is 17 + 25?", "17 + 25 = 42.") == 1.0
    assert task.gold("What is 17 + 25?", "17 + 25 = 43.") == 0.0
    assert task.gold("What is 17 + 25?", "17 + 25 = 42. Well, that is an interesting question.") == pytest.approx(
        1.0 - 0.002 * 39
    )
    assert task.gold("What is 17 + 25?", "I am not sure.") == task.gold_range[0] == -0.5  # no answer: the minimum
    assert all(parse_question(t) for t in task.prompts("heldout", 300))  # every prompt is a qa question
    with pytest.raises(PrefoptError, match="not a question of the built-in qa task"):
        task.gold("Tell me a joke", "No.")


# ---------------------------------------------------------------- constraints

DESCRIBE = "Describe the ocean in at most 8 words."
TWENTY_WORDS = (  # 20 words about music
    "Music is sound arranged in time: melody, rhythm and harmony that people sing or play on instruments to share "
    "feelings."
)
NINETEEN_WORDS = TWENTY_WORDS.removesuffix(" feelings.")
LIBRARY = "Write a sentence about a library. Start your answer with the word 'Today'."


@pytest.mark.parametrize(
    ("prompt", "response", "score"),
    [
        (DESCRIBE, "The ocean is vast, blue and deep.", 1.0),  # 7 words
        (DESCRIBE, "The ocean is a vast body of salty water covering most of Earth.", 0.0),  # 13 words
        (DESCRIBE, "", 0.0),  # no word fails every check
        (DESCRIBE, "...", 0.0),
        # off task: 0 however many checks would pass vacuously
        (DESCRIBE, "YES", 0.0),  # 1 <= 1 word <= 8, but not about the ocean
        (DESCRIBE, "Ocean blue", 0.0),  # about the ocean, but under 3 words: not a description
        (DESCRIBE, DESCRIBE, 0.0),  # an echo: no word that is not in the prompt
        (DESCRIBE, "Ocean, dogs, moon, coffee and snow.", 0.0),  # 4 other topics' words (at most 3): a keyword list
        ("Write one sentence about dogs that includes the word 'happy'.", "Dogs are HAPPY animals.", 1.0),
        ("Write one sentence about dogs that includes the word 'happy'.", "Dogs are unhappy.", 0.0),  # whole word
        ("Name three fruits, separated by commas.", "apple, banana, cherry", 1.0),
        ("Name three fruits, separated by commas.", "Apple, banana, and cherry.", 1.0),
        ("Name three fruits, separated by commas.", "apple, banana", 0.0),
        ("Name three fruits, separated by commas.", "Thank you, sorry, please.", 0.0),  # 3 parts, no fruit
        ("Name three fruits, separated by commas.", "apple, apple, banana", 0.0),  # 2 different fruits only
        ("Name three fruits, separated by commas.", "Sure, here they are: apple, banana, cherry", 0.0),  # 4 parts
        ("Name three fruits, separated by commas.", "apple, banana, cherry,", 0.0),  # an empty part
        ("Answer in lowercase letters only: what is your favourite season?", "summer is best.", 1.0),
        ("Answer in lowercase letters only: what is your favourite season?", "Summer is best.", 0.0),
        ("Reply with exactly one word: what colour is the sky?", "Blue.", 1.0),
        ("Reply with exactly one word: what colour is the sky?", "It is blue.", 0.0),
        ("Reply with exactly one word: what colour is the sky?", "Green.", 0.0),  # not an accepted answer
        ("Reply with exactly one word: what colour is the sky?", "Yes.", 0.0),
        ("What do cows drink? Reply in lowercase letters only.", "water, or maybe honey", 0.0),  # names 2 answers
        ("What colour is grass? Answer with exactly one word.", "Green!", 1.0),
        ("Start your answer with 'Yes' or 'No': is ice cold?", "Yes, ice is cold.", 1.0),
        ("Start your answer with 'Yes' or 'No': is ice cold?", "Yes, it is.", 0.0),  # says nothing of ice or cold
        ("Start your answer with 'Yes' or 'No': is ice cold?", "Yes.", 0.0),
        ("Start your answer with 'Yes' or 'No': is ice cold?", "No, ice is not cold.", 0.0),  # the wrong answer
        ("Start your answer with 'Yes' or 'No': is ice cold?", "Of course, yes.", 0.0),
        ("Write a short sentence about cats without using the word 'the'.", "Cats nap there all day.", 1.0),
        ("Write a short sentence about cats without using the word 'the'.", "The cat naps.", 0.0),
        ("Explain music in at least 20 words.", TWENTY_WORDS, 1.0),
        ("Explain music in at least 20 words.", NINETEEN_WORDS, 0.0),
        ("Explain music in at least 20 words.", " ".join(["music"] * 20), 0.0),  # only prompt words: an echo
        ("Answer in capital letters only: what do bees make?", "HONEY!", 1.0),
        ("Answer in capital letters only: what do bees make?", "Honey", 0.0),
        ("Ask a question about snow. End your answer with a question mark.", "Why is snow white?  ", 1.0),
        ("Ask a question about snow. End your answer with a question mark.", "Snow is white.", 0.0),
        ("Write a sentence about books. Wrap your entire answer in double quotes.", '"Books are great."', 1.0),
        ("Write a sentence about books. Wrap your entire answer in double quotes.", "Books are great.", 0.0),
        ("Write a sentence about books. Wrap your entire answer in double quotes.", '""', 0.0),  # no word
        ("Describe the moon without using any commas.", "The moon is bright.", 1.0),
        ("Describe the moon without using any commas.", "The moon, bright and round.", 0.0),
        (LIBRARY, "today I read at the library.", 1.0),
        (LIBRARY, "today I read.", 0.0),  # off topic: no word of "a library"
        ("Write a sentence about a library. Start your answer with the word 'Today'.", "Yesterday I read.", 0.0),
        # two checks: the fraction passed
        ("Describe the ocean in at most 8 words. Include the word 'happy'.", "A happy blue ocean.", 1.0),
        ("Describe the ocean in at most 8 words. Include the word 'happy'.", "A blue ocean.", 0.5),
        (
            "Describe the ocean in at most 8 words. Include the word 'happy'.",
            "An endless happy ocean of water stretching far beyond the horizon.",  # 11 words
            0.5,
        ),
        ("Describe the ocean in at most 8 words. Include the word 'happy'.", TWENTY_WORDS, 0.0),  # not the ocean
        ("Name two drinks, separated by commas. Use lowercase letters only.", "tea, coffee", 1.0),
        ("Name two drinks, separated by commas. Use lowercase letters only.", "Tea, coffee", 0.5),
        ("Name two drinks, separated by commas. Use lowercase letters only.", "tea and coffee", 0.5),
        (
            "Write one sentence about snow that includes the word 'warm'. Use capital letters only.",
            "SNOW IS NEVER WARM.",
            1.0,
        ),
        ("Is ice hot? Start your answer with 'Yes' or 'No'. Use at most 5 words.", "No, ice is very cold.", 1.0),
        ("Is ice hot? Start your answer with 'Yes' or 'No'. Use at most 5 words.", "Ice is cold, so no.", 0.5),
    ],
)
def test_constraints_gold_hand_written(prompt, response, score):
    assert prompt in _constraints_texts()  # the generator really makes this prompt
    assert get_task("constraints").gold(prompt, response) == pytest.approx(score)


def _constraints_texts() -> set[str]:
    return {text for text, _ in ct.generate_prompts()}


def test_every_constraints_prompt_parses_back():
    pool = ct.generate_prompts()
    assert len(pool) == len(_constraints_texts()) > 2000
    for text, checks in pool:
        assert ct.parse_constraints(text) == checks, text
        assert 1 <= len(checks) <= 2 and len({c.kind for c in checks}) == len(checks)
    first = get_task("constraints").prompts("train", 200)
    two = sum(len(ct.parse_constraints(t)) == 2 for t in first)
    assert 0.3 < two / 200 < 0.7  # a mix of one- and two-check prompts
    assert len({ct.parse_constraints(t)[0].kind for t in first}) == 13  # every family early on


def test_parse_constraints():
    assert ct.parse_constraints("Name four birds, separated by commas. Use at most 12 words.") == (
        Check("list", 4),
        Check("max_words", 12),
    )
    with pytest.raises(PrefoptError, match="not a prompt of the built-in constraints task"):
        ct.parse_constraints("Tell me a joke.")


# ---------------------------------------------------------------- tone

COMPLAINT = "Reply to a customer who writes: 'My order arrived broken. I want my money back.'"
NOTE = "Write a short note to a neighbour about your dog barking at night."
FILLER_77 = " ".join(["word"] * 77)


@pytest.mark.parametrize(
    ("prompt", "response", "score"),
    [
        # COMPLAINT's content words: order, arrived, broken, money ("want", "back" are stopwords)
        (COMPLAINT, "Thanks, and sorry that your order arrived broken. We are happy to help.", 1.0),  # 4 polite: clip
        (COMPLAINT, "Sorry your order arrived broken.", 1 / 3),  # 5 words, 3 of them from the prompt (<= 2/3)
        (COMPLAINT, "We will look into your broken order.", 0.0),  # on topic, neither polite nor rude
        (COMPLAINT, "Whatever. Your broken order is your fault.", -2 / 3),
        (COMPLAINT, "Stupid question. No way. Deal with it, shut up, too bad. Your order is not broken.", -1.0),  # clip
        (COMPLAINT, "Thanks for the note about the order, but it is your own fault.", 0.0),  # 1 - 1
        (COMPLAINT, "THANK you for reporting the broken order", 1 / 3),  # case-insensitive
        (COMPLAINT, "I am thankful, not unhelpful, about the broken order.", 0.0),  # whole words only
        (COMPLAINT, "I am not happy to help with the broken order.", 2 / 3),  # negation is ignored
        (COMPLAINT, "Don’t care about your broken order.", -1 / 3),  # curly apostrophe
        (COMPLAINT, "Your broken order is your\n  fault.", -1 / 3),  # any whitespace inside a phrase
        (NOTE, "Sorry, my dog barks at night; I will keep him in.", 1 / 3),  # "barks" ~ "barking"
        # off topic: -1 (the rudest tone), whatever the politeness
        (COMPLAINT, "Thank you for letting us know, and sorry for the trouble. We are happy to help.", -1.0),  # generic
        (COMPLAINT, "Thank you, sorry, please.", -1.0),  # lexicon words only, and under 5 words
        (COMPLAINT, "Sorry, broken order.", -1.0),  # under 5 words
        (COMPLAINT, "", -1.0),
        (COMPLAINT, COMPLAINT, -1.0),  # an echo: every word is a prompt word
        (NOTE, "Sorry your order arrived broken, thank you.", -1.0),  # about another prompt's problem
        # the rambling penalty: 0.01 per whitespace token beyond 60, at most 0.5
        (COMPLAINT, "Sorry your order arrived broken, thank you, please. " + FILLER_77, 1.0 - 0.01 * 25),  # 85 tokens
        (COMPLAINT, "Sorry your order arrived broken. " + " ".join(["word"] * 55), 1 / 3),  # 60 tokens: no penalty
        (COMPLAINT, " ".join(["word"] * 500), -1.5),  # off topic and capped penalty: the lowest score
        (COMPLAINT, "Whatever, stupid, idiot, your broken order. " + " ".join(["word"] * 200), -1.5),
    ],
)
def test_tone_gold_hand_written(prompt, response, score):
    task = get_task("tone")
    assert task.gold(prompt, response) == pytest.approx(score)
    assert task.gold_range[0] <= score <= task.gold_range[1]


def test_tone_prompts():
    texts = tone.generate_prompts()
    assert COMPLAINT in texts and "Write a short note to a neighbour about your dog barking at night." in texts
    first = get_task("tone").prompts("train", 100)
    complaints = sum("customer" in t for t in first)
    assert 30 < complaints < 70  # complaints and notes interleaved


# ---------------------------------------------------------------- gold judges


def test_gold_judges_for_every_builtin_task():
    reply = "Sorry your order arrived broken; happy to help."  # on topic, 3 polite words
    assert GoldJudge("tone").score([[{"role": "user", "content": COMPLAINT}]], [reply]) == [1.0]
    judge = make_judge("gold:constraints")
    assert judge.score([DESCRIBE, DESCRIBE], ["Blue, endless ocean.", TWENTY_WORDS]) == [1.0, 0.0]
    assert judge.compare([DESCRIBE], ["Blue, endless ocean."], [TWENTY_WORDS]) == [1.0]
    with pytest.raises(
        PrefoptError, match="gold:constraints judge, prompt 1: not a prompt of the built-in constraints"
    ):
        judge.score(["Tell me a joke."], ["No."])
    with pytest.raises(PrefoptError, match=r"unknown gold task 'math' \(available: constraints, qa, tone\)"):
        make_judge("gold:math")


# ---------------------------------------------------------------- builtin:<task> data for prompt-only tasks


@pytest.mark.parametrize("name", ["constraints", "tone"])
def test_builtin_prompt_only_tasks(name):
    task = get_task(name)
    records = load_dataset(f"builtin:{name}", kind="prompt")
    assert all(isinstance(r, PromptRecord) and len(r.prompt) == 1 and r.prompt[0]["role"] == "user" for r in records)
    n = min(2000, task.available("train"))  # load_builtin's default n, capped by the split
    assert [r.prompt[0]["content"] for r in records] == task.prompts("train", n)
    assert [r.row for r in records] == list(range(1, len(records) + 1))
    five = load_builtin(name, kind="prompt", n=5)
    assert [r.prompt[0]["content"] for r in five] == task.prompts("train", 5)
    assert load_builtin(name, kind="native", n=5) == five
    for kind in ("paired", "unpaired", "demonstrations"):
        with pytest.raises(PrefoptError, match=rf"builtin:{name} has no ready-made pairs or completions .*'{kind}'"):
            load_dataset(f"builtin:{name}", kind=kind)
    with pytest.raises(PrefoptError, match="unknown data kind 'bogus'"):
        load_builtin(name, kind="bogus")


# ---------------------------------------------------------------- custom tasks

GOLD_MODULE = """
NOT_CALLABLE = 3


def length(prompt, response):
    return len(response) - len(prompt)


def text(prompt, response):
    return "high"
"""


@pytest.fixture
def custom(tmp_path, monkeypatch):
    """(write a prompts file, spec) with a gold module importable as prefopt_test_gold."""
    (tmp_path / "prefopt_test_gold.py").write_text(GOLD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(lines: list[str], name: str = "prompts.jsonl") -> dict:
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return {"name": "mytask", "prompts": str(path), "gold": "prefopt_test_gold:length"}

    return write


def test_custom_task(custom):
    rows = [json.dumps({"prompt": f"Say {i}."}) for i in range(60)]
    rows += ["", json.dumps({"prompt": "Pinned.", "split": "heldout"}), json.dumps({"prompt": "Say 0."})]  # a repeat
    spec = custom(rows)
    task = resolve_task({**spec, "description": "my own task"})
    assert (task.name, task.description) == ("mytask", "my own task")
    texts = [f"Say {i}." for i in range(60)]
    expected_train = [t for t in texts if hash_split(t) == "train"]
    expected_heldout = [t for t in texts if hash_split(t) == "heldout"] + ["Pinned."]
    assert task.prompts("train", task.available("train")) == expected_train
    assert task.prompts("heldout", task.available("heldout")) == expected_heldout
    assert 1 < len(expected_heldout) < 30
    assert task.gold("Hi", "Hello") == 3.0
    assert task.gold_scores(["Hi", "Hey"], ["Hello", "Yo"]) == [3.0, -1.0]
    with pytest.raises(PrefoptError, match="the heldout split has"):
        task.prompts("heldout", 100)
    bad = resolve_task({**spec, "gold": "prefopt_test_gold:text"})
    with pytest.raises(
        PrefoptError, match=r"custom task 'mytask': gold function prefopt_test_gold:text returned 'high'"
    ):
        bad.gold("Hi", "Hello")


def test_custom_task_with_a_judge_as_gold(custom):
    spec = custom(
        ['{"prompt": "What is 6 times 7?", "split": "train"}', '{"prompt": "Tell me a joke", "split": "heldout"}']
    )
    task = resolve_task({**spec, "gold": "gold:qa"})
    assert task.gold_scores(["What is 6 times 7?"] * 2, ["6 times 7 is 42", "6 x 7 = 48"]) == [1.0, 0.0]
    assert task.gold("What is 6 times 7?", "6 times 7 is 42.") == 1.0
    assert isinstance(task.judge(), GoldJudge)
    assert task.prompts("heldout", 1) == ["Tell me a joke"]


@pytest.mark.parametrize(
    ("lines", "overrides", "message"),
    [
        (
            None,
            {"prompts": "nowhere/prompts.jsonl"},
            r"custom task 'mytask': prompts file nowhere/prompts.jsonl not found",
        ),
        (['{"prompt": "a"}', "{oops"], {}, r"prompts.jsonl row 2: not valid JSON"),
        (['["a"]'], {}, r"prompts.jsonl row 1: expected a JSON object with a 'prompt' field, got list"),
        (['{"prompt": "a"}', "", '{"text": "b"}'], {}, r"prompts.jsonl row 3 field 'prompt': missing"),
        (['{"prompt": ""}'], {}, r"prompts.jsonl row 1 field 'prompt': must be a non-empty string, got ''"),
        (['{"prompt": " \\n "}'], {}, r"prompts.jsonl row 1 field 'prompt': must be a non-empty string"),
        (['{"prompt": 7}'], {}, r"prompts.jsonl row 1 field 'prompt': must be a non-empty string, got 7"),
        (['{"prompt": "a", "split": "test"}'], {}, r"row 1 field 'split': must be 'train' or 'heldout', got 'test'"),
        (
            ['{"prompt": "a", "split": "train"}', '{"prompt": "a", "split": "heldout"}'],
            {},
            r"row 2 field 'split': this prompt appeared earlier in the train split",
        ),
        ([""], {}, r"custom task 'mytask': prompts file .*prompts.jsonl has no prompts"),
        (None, {"gold": "prefopt_test_gold.length"}, r"field 'gold': expected 'package.module:function' or a judge"),
        (None, {"gold": "no_such_module_xyz:fn"}, r"field 'gold': cannot import 'no_such_module_xyz' \(ModuleNotFound"),
        (None, {"gold": "prefopt_test_gold:missing"}, r"field 'gold': 'prefopt_test_gold' has no attribute 'missing'"),
        (None, {"gold": "prefopt_test_gold:NOT_CALLABLE"}, r"'prefopt_test_gold:NOT_CALLABLE' is not callable"),
        (None, {"gold": ""}, r"custom task 'mytask': 'gold' must be a non-empty string"),
        (None, {"prompts": None}, r"custom task 'mytask': 'prompts' must be a non-empty string"),
        (None, {"name": ""}, r"custom task: 'name' must be a non-empty string"),
        (None, {"name": "qa"}, r"custom task 'qa': the name is taken by a built-in task"),
        (None, {"extra": 1}, r"custom task 'mytask': unknown key\(s\) 'extra'"),
    ],
)
def test_custom_task_errors(custom, lines, overrides, message):
    spec = {**custom(lines if lines is not None else ['{"prompt": "a"}']), **overrides}
    with pytest.raises(PrefoptError, match=message) as info:
        resolve_task(spec)
    assert "\n" not in str(info.value)
