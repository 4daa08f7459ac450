"""Other tools' data formats (prefopt.data.foreign): each read into the tokens trl trains on for the same rows.

Every format is checked two ways: its records equal those of the same rows written in prefopt's own
conversational layout, and the tokens prefopt trains on equal trl's maybe_apply_chat_template rendering of the
conversational example (prompt exactly; the completion up to the newline ChatML puts after <|im_end|>, which
prefopt ends with the eos token instead).
"""

from __future__ import annotations

import json

import pytest
from tiny import make_tokenizer

from prefopt.data import load_records
from prefopt.data.foreign import parse_columns
from prefopt.data.tokenize import tokenize_pairs, tokenize_unpaired
from prefopt.errors import PrefoptError

trl_utils = pytest.importorskip("trl.data_utils")


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


CASES = {
    # name: (rows in that format, the same rows in prefopt's conversational layout, kind)
    "messages": (
        [{"messages": [_user("Hi there"), _assistant("Hello!")]},
         {"messages": [{"role": "system", "content": "Be brief."}, _user("2+2?"), _assistant("4")]}],
        [{"prompt": [_user("Hi there")], "completion": [_assistant("Hello!")]},
         {"prompt": [{"role": "system", "content": "Be brief."}, _user("2+2?")], "completion": [_assistant("4")]}],
        "demonstrations"),
    "alpaca": (
        [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
         {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be kind."}],
        [{"prompt": [_user("Add the numbers.\n\n2 and 3")], "completion": [_assistant("5")]},
         {"prompt": [{"role": "system", "content": "Be kind."}, _user("Say hi.")], "completion": [_assistant("Hi!")]}],
        "demonstrations"),
    "alpaca-ranking": (
        [{"instruction": "Capital of France?", "input": "", "chosen": "Paris.", "rejected": "Rome."}],
        [{"prompt": [_user("Capital of France?")], "chosen": [_assistant("Paris.")],
          "rejected": [_assistant("Rome.")]}],
        "paired"),
    "sharegpt": (
        [{"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."},
                            {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "Red."}]}],
        [{"prompt": [_user("Name a colour."), _assistant("Blue."), _user("Another?")],
          "completion": [_assistant("Red.")]}],
        "demonstrations"),
    "sharegpt-ranking": (
        [{"conversations": [{"from": "system", "value": "Be exact."}, {"from": "human", "value": "3*3?"}],
          "chosen": {"from": "gpt", "value": "9"}, "rejected": {"from": "gpt", "value": "6"}}],
        [{"prompt": [{"role": "system", "content": "Be exact."}, _user("3*3?")], "chosen": [_assistant("9")],
          "rejected": [_assistant("6")]}],
        "paired"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_a_format_reads_as_the_same_rows_in_prefopts_layout(tmp_path, name):
    rows, canonical, kind = CASES[name]
    got = load_records(_write(tmp_path / "f.jsonl", rows), kind)
    want = load_records(_write(tmp_path / "c.jsonl", canonical), kind)
    assert got == want


@pytest.mark.parametrize("name", list(CASES))
def test_a_format_trains_on_the_tokens_trl_renders(tmp_path, name):
    rows, canonical, kind = CASES[name]
    tok = make_tokenizer()
    records = load_records(_write(tmp_path / "f.jsonl", rows), kind)
    if kind == "paired":
        tokens, _ = tokenize_pairs(records, tok, 512, 256)
        sides = [("chosen", "chosen_ids"), ("rejected", "rejected_ids")]
    else:
        tokens, _ = tokenize_unpaired(records, tok, 512, 256)
        sides = [("completion", "completion_ids")]
    for example, ours in zip(canonical, tokens):
        for field, attr in sides:
            rendered = trl_utils.maybe_apply_chat_template({"prompt": example["prompt"], "completion": example[field]},
                                                           tok)  # fmt: skip
            assert ours.prompt_ids == tok(rendered["prompt"], add_special_tokens=False).input_ids
            content = example[field][-1]["content"]
            assert rendered["completion"].startswith(content + tok.eos_token)  # trl: content, <|im_end|>, "\n"
            assert getattr(ours, attr) == tok(content, add_special_tokens=False).input_ids + [tok.eos_token_id]


def test_columns_maps_custom_keys_onto_prefopts(tmp_path):
    rows = [{"question": "Q1?", "response_j": "good", "response_k": "bad", "qid": 1}]
    path = _write(tmp_path / "se.jsonl", rows)
    (pair,) = load_records(path, "paired", columns="question:prompt,response_j:chosen,response_k:rejected")
    assert pair.prompt == (_user("Q1?"),) and (pair.chosen, pair.rejected) == ("good", "bad")
    with pytest.raises(PrefoptError, match=r"se\.jsonl: no known columns .* columns=question:prompt,"
                                           r"response_j:chosen,response_k:rejected"):  # fmt: skip
        load_records(path, "paired")  # the hint is the mapping this file needs
    with pytest.raises(PrefoptError, match="option 'columns' maps 'answer', which no row has"):
        load_records(path, "paired", columns="answer:chosen")


@pytest.mark.parametrize(("spec", "message"), [
    ("question", "expected SOURCE:TARGET"),
    ("a:nope", "'nope' is not a column prefopt reads"),
    ("a:prompt,a:chosen", "'a' is mapped twice"),
    ("a:prompt,b:prompt", "two columns are mapped to 'prompt'"),
])  # fmt: skip
def test_columns_option_errors(spec, message):
    with pytest.raises(PrefoptError, match=message):
        parse_columns(spec)


@pytest.mark.parametrize(("row", "message"), [
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]}, "turn 2 comes from 'bot'"),
    ({"conversations": [{"from": "gpt", "value": "only"}]}, "one message only"),
    ({"conversations": [{"role": "user", "content": "hi"}]}, "turn 1 is not an object with 'from' and 'value'"),
    ({"instruction": 3, "output": "x"}, "field 'instruction': expected a non-empty string"),
    ({"messages": "text"}, "field 'messages': expected a non-empty list"),
])  # fmt: skip
def test_bad_foreign_rows_name_the_file_row_and_field(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [row])
    with pytest.raises(PrefoptError, match=rf"bad\.jsonl row 1 .*{message}"):
        load_records(path, "demonstrations")


def test_sft_reads_messages_data_end_to_end_through_the_loader(tmp_path):
    from prefopt.tasks import load_dataset

    path = _write(tmp_path / "chat.jsonl", CASES["messages"][0])
    records = load_dataset(path, "native")
    assert [r.completion for r in records] == ["Hello!", "4"] and all(r.label for r in records)


@pytest.mark.e2e
def test_eval_data_replaces_the_random_split_and_columns_apply_to_both(tmp_path, tiny_model_dir):
    import prefopt

    def rows(n, tag):
        return [{"q": f"{tag} question {i}?", "good": "yes", "bad": "no"} for i in range(n)]

    summary = prefopt.run(algo="dpo", data=_write(tmp_path / "train.jsonl", rows(12, "train")),
                          eval_data=_write(tmp_path / "eval.jsonl", rows(5, "eval")),
                          columns="q:prompt,good:chosen,bad:rejected", model=str(tiny_model_dir),
                          output_dir=str(tmp_path / "run"), steps=2, batch_size=4, max_length=48, precision="fp32",
                          progress=False, lora_r=4, lora_alpha=8)  # fmt: skip
    assert summary["train_examples"] == 12 and summary["eval_pairs"] == 5  # every train row kept, all 5 held out
