"""Capability retained: the packaged tasks, and lm-eval scoring them as we think it does."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval not installed: capability evaluation is skipped")

from prefopt.errors import PrefoptError
from prefopt.evaluation.capability import BUILTIN_TASKS, capability, data_path, task_config
from prefopt.evaluation.capability.make_tasks import arith_records, world_records


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in data_path(name).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_packaged_task_files(name):
    path = data_path(name)
    assert path.is_file() and path.stat().st_size < 20_000
    records = load(name)
    assert 50 <= len(records) <= 80
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


def test_arith_labels_are_the_true_answers():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "times": lambda a, b: a * b}
    for r in load("prefopt_arith"):
        a, op, b = re.fullmatch(r"What is (\d+) (\+|-|times) (\d+)\?", r["question"]).groups()
        assert r["choices"][r["label"]] == str(ops[op](int(a), int(b)))


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
