"""Capability retained: the packaged tasks, and lm-eval scoring them as we think it does."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval not installed: capability evaluation is skipped")

from prefopt.errors import PrefoptError
from prefopt.evaluation.capability import (
    BUILTIN_TASKS,
    builtin_items,
    capability,
    check_uncontaminated,
    contamination,
    data_path,
    paired_accuracy_delta,
    task_config,
)
from prefopt.evaluation.capability.contamination import tokens
from prefopt.evaluation.capability.make_tasks import arith_records, world_records
from prefopt.tasks import CAPITALS, LEGS, UNIT_FACTS, get_task


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in data_path(name).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_packaged_task_files(name):
    path = data_path(name)
    assert path.is_file() and path.stat().st_size < 60_000
    records = load(name)
    assert len(records) >= 200
    assert len({r["question"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {"question", "choices", "label"}
        assert isinstance(r["question"], str) and r["question"].endswith("?")
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4  # distinct, so exactly one is correct
        assert all(isinstance(c, str) and c.strip() == c and c for c in r["choices"])
        assert isinstance(r["label"], int) and 0 <= r["label"] < 4
    assert len({r["label"] for r in records}) == 4  # the correct answer is not always in one slot


def test_packaged_files_are_what_make_tasks_generates():
    assert load("prefopt_arith") == arith_records()
    assert load("prefopt_world") == world_records()


ARITH_FORMS = {
    r"What is (\d+) times (\d+) plus (\d+)\?": lambda a, b, c: a * b + c,
    r"What is (\d+) times (\d+) minus (\d+)\?": lambda a, b, c: a * b - c,
    r"What is (\d+) plus (\d+) plus (\d+)\?": lambda a, b, c: a + b + c,
    r"What is (\d+) divided by (\d+)\?": lambda a, b: a // b if a % b == 0 else None,
    r"What is half of (\d+)\?": lambda a: a // 2 if a % 2 == 0 else None,
    r"What is the sum of (\d+) and (\d+)\?": lambda a, b: a + b,
}


def test_arith_labels_are_the_true_answers():
    forms = []
    for r in load("prefopt_arith"):
        (pattern, f), groups = next((form, m.groups()) for form in ARITH_FORMS.items()
                                    if (m := re.fullmatch(form[0], r["question"])))  # fmt: skip
        forms.append(pattern)
        assert r["choices"][r["label"]] == str(f(*map(int, groups)))
    assert {pattern: forms.count(pattern) for pattern in ARITH_FORMS} == dict.fromkeys(ARITH_FORMS, 50)


# ---------------------------------------------------------------- contamination and the paired delta


def test_item_counts():
    counts = {name: len(load(name)) for name in BUILTIN_TASKS}
    assert counts == {"prefopt_arith": 300, "prefopt_world": 294}
    assert sum(counts.values()) >= 500
    assert builtin_items() == {name: load(name) for name in BUILTIN_TASKS}


def _prompts(task: str) -> dict[str, list[str]]:
    t = get_task(task)
    return {f"{task} {split}": t.prompts(split, t.available(split)) for split in ("train", "heldout")}


@pytest.mark.parametrize("task", ["qa", "constraints", "tone"])
def test_items_share_no_ngram_with_task_prompts(task):
    prompts = _prompts(task)
    assert all(len(p) > 300 for p in prompts.values())
    for name in BUILTIN_TASKS:
        assert contamination(load(name), [p for texts in prompts.values() for p in texts]) == []
    check_uncontaminated(builtin_items(), prompts)  # no error


def test_world_facts_are_disjoint_from_qa_lists():
    questions = " ".join(r["question"] for r in load("prefopt_world"))
    for country, capital, _ in CAPITALS:
        assert f"capital of {country}?" not in questions and capital not in questions
    for _, animal, _, _ in LEGS:
        assert f" {animal} have" not in questions
    for question, *_ in UNIT_FACTS:
        assert question not in questions


def test_tokens():
    assert tokens("What is 17 + 25?") == ["what", "is", "17", "25"]
    assert tokens("  Don't  STOP, now!  ") == ["don't", "stop", "now"]


def test_contamination_finds_planted_overlaps():
    prompts = ["Tell me a story about a dragon.",
               "Please explain why the quick brown fox jumps over the lazy dog today.",
               "What is the capital of France?"]  # fmt: skip
    items = [
        {"question": "What is 96 divided by 8?"},
        {"question": "Can you say why the quick brown fox jumps over the lazy dog?"},  # an 8-gram of prompt 1
        "what is the CAPITAL of France",  # a short item (6 tokens) whole inside prompt 2
        "What is the capital of Ghana?",
        "the quick brown fox jumps over the lazy",  # exactly 8 tokens
    ]
    assert contamination(items, prompts) == [
        (1, 1, "why the quick brown fox jumps over the"),  # the item's first shared 8-gram
        (2, 2, "what is the capital of france"),
        (4, 1, "the quick brown fox jumps over the lazy"),
    ]
    assert contamination(items, prompts, n=20) == [  # every item is now short: the whole-item rule
        (2, 2, "what is the capital of france"),
        (4, 1, "the quick brown fox jumps over the lazy"),
    ]
    assert contamination(items[:1] + items[3:4], prompts) == []
    assert contamination(items, []) == []
    with pytest.raises(PrefoptError, match="n must be a positive"):
        contamination(items, prompts, n=0)


def test_old_world_items_were_contaminated():
    """The first version's first 20 world items: 15 were qa prompts verbatim; the check finds them."""
    old = ["What is the capital of France?", "What is the capital of Japan?", "How many legs does a spider have?",
           "How many minutes are in an hour?", "What is the opposite of hot?"]  # fmt: skip
    hits = contamination(old, [p for texts in _prompts("qa").values() for p in texts])
    assert [i for i, _, _ in hits] == [0, 1, 2, 3]


def test_check_uncontaminated_names_item_and_prompt():
    prompts = {"qa train": ["Tell me a joke.", "What is the capital of France?"], "qa heldout": ["Say hi."]}
    items = {"prefopt_world": [{"question": "What is the capital of Ghana?"},
                               {"question": "What is the capital of France?"}]}  # fmt: skip
    with pytest.raises(PrefoptError) as info:
        check_uncontaminated(items, prompts)
    message = str(info.value)
    assert "'prefopt_world' item 1 'What is the capital of France?' is contaminated: " in message
    assert "capability task" not in message
    assert "'qa train' prompt 1 'What is the capital of France?'" in message
    assert "\n" not in message
    with pytest.raises(PrefoptError, match=r"^item 0 .* prompt 0"):
        check_uncontaminated(["What is the capital of France?"], ["What is the capital of France?"])
    check_uncontaminated(["What is the capital of Ghana?"], ["What is the capital of France?"])


def test_paired_accuracy_delta_by_hand():
    before = [True, True, False, False, True, False, True, True, False, True]
    after = [True, False, True, True, True, True, True, True, False, True]
    # d = [0, -1, 1, 1, 0, 1, 0, 0, 0, 0]: mean 0.2; squares about the mean:
    # six 0s: 6 * 0.04 = 0.24, one -1: 1.44, three 1s: 3 * 0.64 = 1.92; sum 3.6, sd = sqrt(3.6 / 9) = sqrt(0.4),
    # se = sd / sqrt(10) = sqrt(0.04) = 0.2, so the interval is 0.2 +/- 1.96 * 0.2 = (-0.192, 0.592)
    se = math.sqrt(3.6 / 9) / math.sqrt(10)
    delta, low, high = paired_accuracy_delta(before, after)
    assert delta == pytest.approx(0.2)
    assert (low, high) == (pytest.approx(0.2 - 1.959964 * se), pytest.approx(0.2 + 1.959964 * se))
    assert se == pytest.approx(0.2)
    assert (low, high) == (pytest.approx(-0.19199, abs=1e-5), pytest.approx(0.59199, abs=1e-5))
    assert paired_accuracy_delta([1, 0], [1, 0]) == (0.0, 0.0, 0.0)  # nothing changed: a zero-width interval
    one = paired_accuracy_delta([False], [True])
    assert one[0] == 1.0 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(PrefoptError, match="3 results before and 2 after"):
        paired_accuracy_delta([1, 1, 1], [1, 1])


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_lm_eval_renders_our_prompt(name, tmp_path):
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_defaults=False).load([task_config(name, str(tmp_path))])["tasks"][name]
    docs, records = list(task.test_docs()), load(name)
    assert len(docs) == len(records)
    for doc, r in zip(docs[:5], records):
        assert task.doc_to_text(doc) == f"Question: {r['question']}\nAnswer:"
        assert task.doc_to_choice(doc) == r["choices"] and task.doc_to_target(doc) == r["label"]
    assert task.config.target_delimiter == " " and task.OUTPUT_TYPE == "multiple_choice"


def reference_accuracy(model, tokenizer, records: list[dict]) -> float:
    """Independent lm-eval ``acc``: argmax over choices of sum log p(" " + choice | prompt)."""
    correct = 0
    with torch.no_grad():
        for r in records:
            context = f"Question: {r['question']}\nAnswer:"
            n_context = len(tokenizer(context).input_ids)
            scores = []
            for choice in r["choices"]:
                ids = tokenizer(context + " " + choice).input_ids
                logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
                scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids))))
            correct += max(range(len(scores)), key=scores.__getitem__) == r["label"]
    return correct / len(records)


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "limit"), [("prefopt_arith", 12), ("prefopt_world", None)])
def test_matches_independent_loglikelihood_scoring(tiny_model, tiny_tokenizer, name, limit):
    records = load(name)[:limit]
    expected = reference_accuracy(tiny_model, tiny_tokenizer, records)
    got = capability(tiny_model, tiny_tokenizer, [name], limit=limit)
    assert got == {name: expected}
    assert type(got[name]) is float


@pytest.mark.e2e
def test_both_builtin_tasks_and_state_restored(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model.train()
    tiny_model.model.layers[0].eval()  # a mixed state comes back as it was
    rng = torch.random.get_rng_state()
    scores = capability(tiny_model, tiny_tokenizer, batch_size=4)
    assert list(scores) == list(BUILTIN_TASKS)
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in scores.values())
    assert tiny_model.training and not tiny_model.model.layers[0].training and tiny_model.model.layers[1].training
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


@pytest.mark.e2e
def test_peft_lora_model(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = capability(tiny_model, tiny_tokenizer, ["prefopt_world"], limit=20)
    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    got = capability(peft_model, tiny_tokenizer, ["prefopt_world"], limit=20)
    assert got == base  # LoRA's B starts at zero: the wrapped model scores exactly like the base
    assert peft_model.training
    assert all(p.grad is None for p in peft_model.parameters())


@pytest.mark.e2e
def test_unknown_task_is_one_line_error(tiny_model, tiny_tokenizer):
    with pytest.raises(PrefoptError, match="unknown capability task 'no_such_task_xyz'") as info:
        capability(tiny_model, tiny_tokenizer, ["prefopt_arith", "no_such_task_xyz"])
    assert "\n" not in str(info.value)


def test_lm_eval_missing(tiny_model, tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(PrefoptError, match=r"needs lm-eval: pip install 'prefopt\[bench\]'"):
        capability(tiny_model, tiny_tokenizer)


@pytest.mark.e2e
def test_per_item(tiny_model, tiny_tokenizer):
    limit = 12
    accuracy = capability(tiny_model, tiny_tokenizer, ["prefopt_arith"], limit=limit)
    items = capability(tiny_model, tiny_tokenizer, ["prefopt_arith"], limit=limit, per_item=True)
    assert list(items) == ["prefopt_arith"]
    correct = items["prefopt_arith"]
    assert len(correct) == limit and all(type(c) is bool for c in correct)
    assert sum(correct) / len(correct) == accuracy["prefopt_arith"]
    # in document order: item i is the i-th record, scored like the independent reference
    records = load("prefopt_arith")[:limit]
    assert correct == [reference_accuracy(tiny_model, tiny_tokenizer, [r]) == 1.0 for r in records]
    delta, _, _ = paired_accuracy_delta(correct, correct)
    assert delta == 0.0
