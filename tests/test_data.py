"""Loading every format into canonical records, errors, truncation, collation, batching."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from tiny import make_tokenizer

from prefopt.data import (
    PreferenceRecord,
    PromptRecord,
    TokenizedPair,
    UnpairedRecord,
    bucketed_batches,
    collate_pairs,
    collate_unpaired,
    detect_format,
    encode_response,
    load_records,
    read_rows,
    render_prompt,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_unpaired,
)
from prefopt.errors import PrefoptError
from prefopt.tasks import load_dataset

USER = lambda text: {"role": "user", "content": text}
BOT = lambda text: {"role": "assistant", "content": text}

STANDARD = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5.", "extra": 1},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def expected_standard(rows=STANDARD):
    return [PreferenceRecord((USER(r["prompt"]),), r["chosen"], r["rejected"], i, raw=True) for i, r in enumerate(rows, 1)]


# ---------------------------------------------------------------- sources


def test_jsonl_standard(tmp_path):
    assert load_records(write_jsonl(tmp_path / "data.jsonl", STANDARD)) == expected_standard()


def test_json_list_and_json_lines(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(STANDARD, indent=2))
    as_lines = write_jsonl(tmp_path / "lines.json", STANDARD)
    assert load_records(str(as_list)) == expected_standard()
    assert load_records(as_lines) == expected_standard()


def test_jsonl_row_is_line_number(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(STANDARD[0]) + "\n\n" + json.dumps(STANDARD[1]) + "\n")
    assert [r.row for r in load_records(str(path))] == [1, 3]


def test_parquet_standard_and_conversational(tmp_path):
    pd.DataFrame(STANDARD).to_parquet(tmp_path / "s.parquet")
    assert load_records(str(tmp_path / "s.parquet")) == expected_standard()
    conv = [{"prompt": [USER("Hi?")], "chosen": [BOT("Hello.")], "rejected": [BOT("Go away.")]}]
    pd.DataFrame(conv).to_parquet(tmp_path / "c.parquet")
    assert load_records(str(tmp_path / "c.parquet")) == [PreferenceRecord((USER("Hi?"),), "Hello.", "Go away.", 1)]


def test_csv_standard(tmp_path):
    pd.DataFrame(STANDARD).to_csv(tmp_path / "data.csv", index=False)
    assert load_records(str(tmp_path / "data.csv")) == expected_standard()


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(STANDARD)
    ds.save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert load_records(str(tmp_path / "ds")) == expected_standard()
    assert load_records(str(tmp_path / "dd")) == expected_standard()


def test_datasetdict_without_train_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(STANDARD)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(PrefoptError, match=r"dd: dataset has no 'train' split \(splits: test\)"):
        load_records(str(tmp_path / "dd"))


def test_hub_name_offline_is_one_line_error():
    with pytest.raises(PrefoptError, match=r"could not load 'nobody/no-such-prefs:test'") as info:
        load_records("nobody/no-such-prefs:test")
    assert "\n" not in str(info.value)


def test_read_rows_returns_display_name(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", STANDARD)
    rows, name = read_rows(source)
    assert name == source and rows == STANDARD


def test_builtin_source_delegates_to_tasks():
    records = load_dataset("builtin:qa")
    assert len(records) == 2000 and isinstance(records[0], PreferenceRecord)


# ---------------------------------------------------------------- formats


def test_conversational_trl_format(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, USER("2+2?")], "chosen": [BOT("4")], "rejected": [BOT("5")]}]
    (record,) = load_records(write_jsonl(tmp_path / "c.jsonl", rows))
    assert record == PreferenceRecord(({"role": "system", "content": "Be brief."}, USER("2+2?")), "4", "5", 1)


def test_conversational_response_lists_carry_the_prompt(tmp_path):
    # UltraFeedback style: chosen repeats the prompt turn -> it replaces the prompt, not duplicated.
    repeat = {"prompt": "2+2?", "chosen": [USER("2+2?"), BOT("4")], "rejected": [USER("2+2?"), BOT("5")]}
    # Multi-turn continuation: leading messages that do not start with the prompt are appended.
    extend = {"prompt": "Hi", "chosen": [BOT("Hello"), USER("2+2?"), BOT("4")], "rejected": [BOT("Hello"), USER("2+2?"), BOT("5")]}
    first, second = load_records(write_jsonl(tmp_path / "c.jsonl", [repeat, extend]))
    assert first.prompt == (USER("2+2?"),) and (first.chosen, first.rejected) == ("4", "5")
    assert second.prompt == (USER("Hi"), BOT("Hello"), USER("2+2?")) and second.chosen == "4"


def test_conversational_sides_must_share_prompt(tmp_path):
    rows = [{"prompt": "Hi", "chosen": [USER("A?"), BOT("4")], "rejected": [USER("B?"), BOT("5")]}]
    with pytest.raises(PrefoptError, match=r"c\.jsonl row 1: 'chosen' and 'rejected' continue the prompt with different messages"):
        load_records(write_jsonl(tmp_path / "c.jsonl", rows))


def test_conversational_last_message_must_be_assistant(tmp_path):
    rows = [{"prompt": "Hi", "chosen": [USER("4")], "rejected": [BOT("5")]}]
    with pytest.raises(PrefoptError, match=r"c\.jsonl row 1 field 'chosen': the last message must be an assistant message, got role 'user'"):
        load_records(write_jsonl(tmp_path / "c.jsonl", rows))


def test_implicit_prompt_message_lists(tmp_path):
    rows = [{"chosen": [USER("Hi"), BOT("Hey"), USER("2+2?"), BOT("4")], "rejected": [USER("Hi"), BOT("Hey"), USER("2+2?"), BOT("22")]}]
    (record,) = load_records(write_jsonl(tmp_path / "i.jsonl", rows))
    assert record == PreferenceRecord((USER("Hi"), BOT("Hey"), USER("2+2?")), "4", "22", 1)


def test_implicit_prompt_message_lists_must_share_prefix(tmp_path):
    rows = [{"chosen": [USER("Hi"), BOT("Hey"), USER("2+2?"), BOT("4")], "rejected": [USER("Hi"), BOT("Yo"), USER("2+2?"), BOT("22")]}]
    with pytest.raises(PrefoptError, match=r"i\.jsonl row 1: 'chosen' and 'rejected' do not share a prompt"):
        load_records(write_jsonl(tmp_path / "i.jsonl", rows))


def test_implicit_prompt_anthropic_hh_strings(tmp_path):
    hh = {
        "chosen": "\n\nHuman: What are some cuss words?\n\nAssistant: I'd rather not.\n\nHuman: Please?\n\nAssistant: No, sorry.",
        "rejected": "\n\nHuman: What are some cuss words?\n\nAssistant: I'd rather not.\n\nHuman: Please?\n\nAssistant: Fine: heck.",
    }
    (record,) = load_records(write_jsonl(tmp_path / "hh.jsonl", [hh]))
    assert record.prompt == (USER("What are some cuss words?"), BOT("I'd rather not."), USER("Please?"))
    assert (record.chosen, record.rejected) == ("No, sorry.", "Fine: heck.")


def test_hh_string_without_assistant_marker(tmp_path):
    rows = [{"chosen": "just text", "rejected": "other text"}]
    with pytest.raises(PrefoptError, match=r"hh\.jsonl row 1 field 'chosen': no 'prompt' column.*Assistant:' marker"):
        load_records(write_jsonl(tmp_path / "hh.jsonl", rows))


def test_unpaired_labels_bool_string_and_int(tmp_path):
    rows = [
        {"prompt": "Q1", "completion": "good", "label": True},
        {"prompt": "Q2", "completion": "bad", "label": "false"},
        {"prompt": "Q3", "completion": "good", "label": 1},
    ]
    records = load_records(write_jsonl(tmp_path / "u.jsonl", rows), kind="unpaired")
    assert records == [
        UnpairedRecord((USER("Q1"),), "good", True, 1, raw=True),
        UnpairedRecord((USER("Q2"),), "bad", False, 2, raw=True),
        UnpairedRecord((USER("Q3"),), "good", True, 3, raw=True),
    ]


def test_unpaired_csv_zero_one_labels(tmp_path):
    pd.DataFrame({"prompt": ["Q1", "Q2"], "completion": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "u.csv", index=False)
    assert [r.label for r in load_records(str(tmp_path / "u.csv"), kind="unpaired")] == [False, True]


def test_unpaired_bad_label(tmp_path):
    rows = [{"prompt": "Q1", "completion": "a", "label": True}, {"prompt": "Q2", "completion": "b", "label": "yes"}]
    with pytest.raises(PrefoptError, match=r"u\.jsonl row 2 field 'label': expected a boolean \(true/false or 1/0\), got str 'yes'"):
        load_records(write_jsonl(tmp_path / "u.jsonl", rows), kind="unpaired")


def test_prompt_only_strings_and_messages(tmp_path):
    rows = [{"prompt": "Q1"}, {"prompt": [USER("Q2")]}, {"prompt": "Q1"}]
    records = load_records(write_jsonl(tmp_path / "p.jsonl", rows), kind="prompt")
    # deduplicated, order kept; a plain string is raw text (TRL's standard format), a message list is not
    assert records == [PromptRecord((USER("Q1"),), 1, raw=True), PromptRecord((USER("Q2"),), 2)]


def test_paired_as_unpaired_and_as_prompt(tmp_path):
    rows = STANDARD + [{"prompt": "What is 2 + 2?", "chosen": "Four.", "rejected": "Five."}]
    source = write_jsonl(tmp_path / "data.jsonl", rows)
    unpaired = load_records(source, kind="unpaired")
    assert [(r.completion, r.label, r.row) for r in unpaired[:4]] == [("4.", True, 1), ("5.", False, 1), ("Paris.", True, 2), ("Lyon.", False, 2)]
    assert len(unpaired) == 6
    prompts = load_records(source, kind="prompt")
    assert [(p.prompt[0]["content"], p.row) for p in prompts] == [("What is 2 + 2?", 1), ("Capital of France?", 2)]


def test_unpaired_as_paired_is_an_error(tmp_path):
    source = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "Q", "completion": "a", "label": True}])
    with pytest.raises(PrefoptError, match=r"u\.jsonl holds unpaired data .*needs paired data"):
        load_records(source, kind="paired")
    assert load_records(source, kind="prompt") == [PromptRecord((USER("Q"),), 1, raw=True)]


def test_prompt_only_as_paired_is_an_error(tmp_path):
    with pytest.raises(PrefoptError, match=r"p\.jsonl holds prompts only"):
        load_records(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q"}]))


def test_detect_format_rules():
    assert detect_format(["prompt", "chosen", "rejected", "score"]) == "paired"
    assert detect_format(["chosen", "rejected"]) == "paired-implicit"
    assert detect_format(["prompt", "completion", "label"]) == "unpaired"
    assert detect_format(["prompt", "id"]) == "prompt"
    assert detect_format(["prompt_id", "chosen", "rejected"]) == "paired-implicit"  # not mistaken for 'prompt'
    with pytest.raises(PrefoptError, match=r"missing column 'prompt' .*did you mean 'Prompt'"):
        detect_format(["Prompt", "chosen", "rejected"])
    with pytest.raises(PrefoptError, match=r"missing column 'prompt' .*did you mean 'promt'"):
        detect_format(["promt", "chosen", "rejected"])
    with pytest.raises(PrefoptError, match=r"no known columns \(columns: question, answer\)"):
        detect_format(["question", "answer"])


# ---------------------------------------------------------------- bad input


def test_nonexistent_file():
    with pytest.raises(PrefoptError, match=r"^data file 'x\.jsonl' does not exist$"):
        load_records("x.jsonl")


def test_unsupported_extension(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(PrefoptError, match=r"data\.txt': unsupported file type '\.txt'"):
        load_records(str(tmp_path / "data.txt"))


def test_misspelled_column_suggests(tmp_path):
    rows = [{"prompt": "Q", "chosen": "a", "rejcted": "b"}]
    with pytest.raises(
        PrefoptError, match=r"data\.jsonl: missing column 'rejected' \(columns: prompt, chosen, rejcted; did you mean 'rejcted'\?\)$"
    ):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


def test_column_missing_in_one_row(tmp_path):
    rows = [STANDARD[0], {"prompt": "Q", "chosen": "a"}]
    with pytest.raises(PrefoptError, match=r"data\.jsonl row 2 field 'rejected': missing column 'rejected'$"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


def test_column_misspelled_in_one_row_suggests_the_name(tmp_path):
    rows = [STANDARD[0], {"prompt": "Q", "chosen": "a", "rejcted": "b"}]
    with pytest.raises(PrefoptError, match=r"row 2 field 'rejected': missing column 'rejected'; did you mean 'rejcted'\?"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


@pytest.mark.parametrize("blank", ["", "   \n\t"])
def test_empty_string(tmp_path, blank):
    rows = STANDARD + [{"prompt": "Q", "chosen": blank, "rejected": "b"}]
    with pytest.raises(PrefoptError, match=r"data\.jsonl row 3 field 'chosen': empty string$"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


def test_empty_completion(tmp_path):
    rows = [{"prompt": "Q", "completion": " ", "label": True}]
    with pytest.raises(PrefoptError, match=r"u\.jsonl row 1 field 'completion': empty string$"):
        load_records(write_jsonl(tmp_path / "u.jsonl", rows), kind="unpaired")


def test_empty_csv_cell_is_named(tmp_path):
    (tmp_path / "data.csv").write_text("prompt,chosen,rejected\nQ,a,b\nQ,,b\n")
    with pytest.raises(PrefoptError, match=r"data\.csv row 2 field 'chosen': (missing value|empty string)"):
        load_records(str(tmp_path / "data.csv"))


def test_wrong_type(tmp_path):
    rows = [STANDARD[0], {"prompt": "Q", "chosen": 7, "rejected": "b"}]
    with pytest.raises(PrefoptError, match=r"data\.jsonl row 2 field 'chosen': expected a string or a list of messages, got int$"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ([{"content": "hi"}], "message 1 has no 'role'"),
        ([USER("hi"), {"role": "user"}], "message 2 has no 'content'"),
        ([{"role": "user", "content": ["hi"]}], "message 1 'content' must be a string, got list"),
        (["hi"], "message 1 is not an object with 'role' and 'content' \\(got str\\)"),
        ([], "empty list of messages"),
    ],
)
def test_malformed_messages(tmp_path, prompt, problem):
    rows = [{"prompt": prompt, "chosen": "a", "rejected": "b"}]
    with pytest.raises(PrefoptError, match=rf"data\.jsonl row 1 field 'prompt': {problem}$"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


def test_identical_chosen_and_rejected(tmp_path):
    rows = STANDARD * 2 + [{"prompt": "Q", "chosen": "same", "rejected": "same"}]
    with pytest.raises(PrefoptError, match=r"data\.jsonl row 5: 'chosen' and 'rejected' are identical$"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


def test_invalid_json_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in STANDARD * 1) + "\n" + json.dumps(STANDARD[0]) + '\n{"prompt": "Q", "chosen": \n')
    with pytest.raises(PrefoptError, match=r"data\.jsonl row 4: invalid JSON \(.+\)$"):
        load_records(str(path))


def test_json_row_not_an_object(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([STANDARD[0], ["a", "b"]]))
    with pytest.raises(PrefoptError, match=r"data\.json row 2: expected a JSON object, got list"):
        load_records(str(path))


@pytest.mark.parametrize(("filename", "content"), [("data.jsonl", ""), ("data.jsonl", "\n \n"), ("data.json", "[]")])
def test_empty_dataset(tmp_path, filename, content):
    (tmp_path / filename).write_text(content)
    with pytest.raises(PrefoptError, match=rf"{filename.replace('.', '[.]')}: the dataset is empty"):
        load_records(str(tmp_path / filename))


# ---------------------------------------------------------------- bytes that are not UTF-8 JSON, and size


def _lines(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_not_utf8_names_row_and_byte(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(_lines(STANDARD) + b'{"prompt": "caf\xff", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(
        PrefoptError, match=r"/data\.jsonl row 3: not valid UTF-8 text \(byte 0xff at offset 15 of the line\); save it as UTF-8$"
    ):
        load_records(str(path))


def test_not_utf8_in_a_json_list_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[\n{"prompt": "Q", "chosen": "a", "rejected": "b"},\n{"prompt": "\xe9t\xe9"}]')
    with pytest.raises(PrefoptError, match=r"/data\.json line 3: not valid UTF-8 text \(byte 0xe9 at offset 12 of the line\)"):
        load_records(str(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_with_byte_order_mark_is_refused(tmp_path, suffix, encoding):
    path = tmp_path / f"data{suffix}"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in STANDARD).encode(encoding))
    with pytest.raises(PrefoptError, match=rf"/data\{suffix}: UTF-16 or UTF-32 text .*; save it as UTF-8$"):
        load_records(str(path))


def test_utf16_without_byte_order_mark_is_refused(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in STANDARD).encode("utf-16-le"))
    with pytest.raises(PrefoptError, match=r"/data\.jsonl row 1: holds NUL bytes \(UTF-16 text\?\), not JSON text"):
        load_records(str(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_utf8_byte_order_mark_is_skipped(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(STANDARD).encode() if suffix == ".json" else _lines(STANDARD)))
    assert load_records(str(path)) == expected_standard()


def test_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    """JSON lines end at \\n only: U+2028 and U+0085 may stand unescaped inside a JSON string."""
    rows = [{"prompt": "a\u2028b\x85c", "chosen": "x", "rejected": "y"}]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    (record,) = load_records(str(path))
    assert record.prompt == (USER("a\u2028b\x85c"),)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_nested_too_deeply(tmp_path, suffix):
    deep = "[" * 200_000 + "]" * 200_000
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps(STANDARD[0]) + "\n" + '{"prompt": ' + deep + "}\n")
        expected = r"/data\.jsonl row 2: JSON nested too deeply$"
    else:
        path.write_text("[" + json.dumps(STANDARD[0]) + ", " + deep + "]")
        expected = r"/data\.json: JSON nested too deeply$"
    with pytest.raises(PrefoptError, match=expected):
        load_records(str(path))


def test_integer_past_the_digit_limit_is_invalid_json(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b", "id": ' + "9" * 5000 + "}\n")
    with pytest.raises(PrefoptError, match=r"/data\.jsonl row 1: invalid JSON \(Exceeds the limit"):
        load_records(str(path))


@pytest.mark.parametrize("field", ["prompt", "chosen"])
def test_unpaired_surrogate_is_refused_before_the_tokenizer(tmp_path, field):
    """JSON can spell "\\ud800"; the tokenizer would raise a TypeError on it."""
    rows = [STANDARD[0], {**STANDARD[1], field: "bad \ud800 text"}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # ensure_ascii writes the \ud800 escape
    with pytest.raises(PrefoptError, match=rf"/data\.jsonl row 2 field '{field}': text is not valid Unicode "
                                           r"\(unpaired surrogate '\\ud800' at character 4\)$"):
        load_records(str(path))
    messages = [{"prompt": [USER("ok"), USER("\udfff")], "chosen": "a", "rejected": "b"}]
    with pytest.raises(PrefoptError, match=r"row 1 field 'prompt': message 2 content is not valid Unicode"):
        load_records(write_jsonl(tmp_path / "m.jsonl", messages))


def test_field_over_the_size_limit_is_refused_before_tokenising(tmp_path, monkeypatch):
    """A 5 MB prompt (5x the default limit) is refused while loading: nothing is tokenised, and memory
    stays near the file's size (a 50 MB prompt: ~0.4 s and ~150 MB more than the interpreter's baseline)."""
    import time

    import prefopt.data.tokenize as tokenize_module

    monkeypatch.setattr(tokenize_module, "_encode_texts", lambda *a: pytest.fail("tokenised"))
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(STANDARD[0]) + "\n" + json.dumps({**STANDARD[1], "chosen": "word " * 1_000_000}) + "\n")
    start = time.perf_counter()
    with pytest.raises(
        PrefoptError,
        match=r"/big\.jsonl row 2 field 'chosen': 5,000,000 characters of text, more than the 1,000,000 one field "
        r"may hold \(a wrong column\?\)$",
    ):
        load_records(str(path))
    assert time.perf_counter() - start < 10  # ~0.05 s; only a pathologically slow machine comes near


def test_size_limit_counts_a_message_list_together(tmp_path):
    rows = [{"prompt": [USER("x" * 40), BOT("y" * 40), USER("z" * 40)], "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    assert len(load_records(path, max_field_chars=137)) == 1  # 3 x 40 characters of content, 17 of roles
    with pytest.raises(PrefoptError, match=r"row 1 field 'prompt': 137 characters of text, more than the 100 one"):
        load_records(path, max_field_chars=100)
    exact = write_jsonl(tmp_path / "exact.jsonl", [{"prompt": "p" * 100, "chosen": "a", "rejected": "b"}])
    assert len(load_records(exact, max_field_chars=100)) == 1
    with pytest.raises(PrefoptError, match=r"field 'prompt': 100 characters of text, more than the 99 one"):
        load_records(exact, max_field_chars=99)


def test_values_quoted_in_errors_are_cut_short(tmp_path):
    rows = [{"prompt": "Q", "completion": "a", "label": "maybe" * 100_000}]
    with pytest.raises(PrefoptError, match=r"field 'label': expected a boolean .*got str 'maybemaybe.*\.\.\.$") as info:
        load_records(write_jsonl(tmp_path / "u.jsonl", rows), kind="unpaired")
    assert len(str(info.value)) < 200
    wide = [{f"column_{i}_" + "x" * 1000: 1 for i in range(500)}]
    with pytest.raises(PrefoptError, match=r"no known columns \(columns: column_0_x+\.\.\., .*\(480 more\)\)") as info:
        load_records(write_jsonl(tmp_path / "w.jsonl", wide))
    assert len(str(info.value)) < 2000


def test_first_error_is_reported(tmp_path):
    rows = [STANDARD[0], {"prompt": "Q", "chosen": "", "rejected": "b"}, {"prompt": 3, "chosen": "a", "rejected": "b"}]
    with pytest.raises(PrefoptError, match=r"row 2 field 'chosen'"):
        load_records(write_jsonl(tmp_path / "data.jsonl", rows))


def test_unknown_kind(tmp_path):
    with pytest.raises(PrefoptError, match=r"unknown data kind 'pairs'"):
        load_records(write_jsonl(tmp_path / "data.jsonl", STANDARD), kind="pairs")


# ---------------------------------------------------------------- tokenisation


def test_render_prompt_uses_chat_template(tiny_tokenizer):
    ids = render_prompt(tiny_tokenizer, [USER("hi")])
    assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_render_prompt_fallback_without_template():
    tok = make_tokenizer()
    tok.chat_template = None
    ids = render_prompt(tok, [{"role": "system", "content": "Be nice."}, USER("hi"), BOT("yo"), USER("2+2?")])
    assert tok.decode(ids) == "System: Be nice.\nUser: hi\nAssistant: yo\nUser: 2+2?\nAssistant: "


def test_encode_response_appends_eos(tiny_tokenizer):
    ids = encode_response(tiny_tokenizer, "The answer is 19.")
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids[:-1]) == "The answer is 19."


def _records(tokenizer):
    """Three pairs with known token lengths under the tiny tokenizer."""
    long_question = "What is 12 plus 7? " * 6
    return [
        PreferenceRecord((USER("hi"),), "Yes.", "No.", 1),
        PreferenceRecord((USER(long_question),), "19.", "The answer is wrong, are you sure? " * 4, 2),
        PreferenceRecord((USER("ok"),), "good " * 30, "bad " * 30, 3),
    ]


def test_truncation_policy_keeps_prompt_end_and_response_start(tiny_tokenizer):
    tok = tiny_tokenizer
    records = _records(tok)
    prompts = [render_prompt(tok, r.prompt) for r in records]
    chosen = [encode_response(tok, r.chosen) for r in records]
    rejected = [encode_response(tok, r.rejected) for r in records]
    max_prompt_length = 20
    max_length = len(prompts[1]) + 5  # the long prompt still fits max_length (no error)
    assert len(prompts[0]) < max_prompt_length < len(prompts[1])

    pairs, stats = tokenize_pairs(records, tok, max_length=max_length, max_prompt_length=max_prompt_length, source="d.jsonl")

    assert [p.index for p in pairs] == [0, 1, 2]
    assert pairs[0].prompt_ids == prompts[0] and pairs[0].chosen_ids == chosen[0] and pairs[0].rejected_ids == rejected[0]
    assert pairs[1].prompt_ids == prompts[1][-max_prompt_length:]  # the end: the question and assistant header
    assert tok.decode(pairs[1].prompt_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    room = max_length - max_prompt_length
    assert pairs[1].chosen_ids == chosen[1]  # short: untouched, eos kept
    assert pairs[1].rejected_ids == rejected[1][:room]  # the start
    room2 = max_length - len(prompts[2])
    assert pairs[2].chosen_ids == chosen[2][:room2] and pairs[2].rejected_ids == rejected[2][:room2]
    for p in pairs:
        assert len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= max_length
    assert stats.rows == 3 and stats.truncated_prompts == 1 and stats.truncated_responses == 2


def test_a_prompt_longer_than_max_length_is_kept_truncated_dropped_or_an_error(tiny_tokenizer):
    from prefopt.data.tokenize import apply_long_prompts

    records = _records(tiny_tokenizer)
    n = len(render_prompt(tiny_tokenizer, records[1].prompt))
    assert n > 30
    kept, long = apply_long_prompts(records, tiny_tokenizer, 30, "truncate", "d.jsonl")
    assert (kept, long) == (records, 1)
    pairs, stats = tokenize_pairs(kept, tiny_tokenizer, max_length=30, max_prompt_length=20, source="d.jsonl")
    full = render_prompt(tiny_tokenizer, records[1].prompt)
    assert pairs[1].prompt_ids == full[-20:] and stats.truncated_prompts >= 1  # its end, like any long prompt
    kept, long = apply_long_prompts(records, tiny_tokenizer, 30, "drop", "d.jsonl")
    assert kept == [records[0], records[2]] and long == 1
    with pytest.raises(PrefoptError, match=rf"^d\.jsonl row 2 field 'prompt': prompt is {n} tokens, longer than "
                                           r"max_length=30 \(1 such rows; long_prompts=truncate or drop\)$"):  # fmt: skip
        apply_long_prompts(records, tiny_tokenizer, 30, "error", "d.jsonl")


def test_no_truncation_counts_when_everything_fits(tiny_tokenizer):
    _, stats = tokenize_pairs(_records(tiny_tokenizer), tiny_tokenizer, max_length=1024, max_prompt_length=512)
    assert (stats.rows, stats.truncated_prompts, stats.truncated_responses) == (3, 0, 0)


def test_chat_template_rejection_names_the_row():
    tok = make_tokenizer()
    tok.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x"
    records = [PreferenceRecord(({"role": "system", "content": "s"}, USER("q")), "a", "b", 7)]
    with pytest.raises(PrefoptError, match=r"d\.jsonl row 7 field 'prompt': the chat template rejected it \(System role not supported\)"):
        tokenize_pairs(records, tok, 64, 32, source="d.jsonl")


def test_tokenize_unpaired_and_prompts_share_the_policy(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = (USER("What is 12 plus 7? " * 6),)
    unpaired = [UnpairedRecord(long_prompt, "good " * 30, True, 1)]
    prompt_ids = render_prompt(tok, long_prompt)
    completion = encode_response(tok, "good " * 30)
    max_length = len(prompt_ids) + 4  # fits, so no error; longer than max_prompt_length
    (ex,), stats = tokenize_unpaired(unpaired, tok, max_length=max_length, max_prompt_length=16)
    assert ex.prompt_ids == prompt_ids[-16:] and ex.completion_ids == completion[: max_length - 16] and ex.label is True
    assert (stats.truncated_prompts, stats.truncated_responses) == (1, 1)
    (p,), stats = tokenize_prompts([PromptRecord(long_prompt, 1)], tok, max_length=max_length, max_prompt_length=16)
    assert p.prompt_ids == prompt_ids[-16:] and stats.truncated_prompts == 1


# ---------------------------------------------------------------- collation


def test_collate_pairs_exact_tensors():
    examples = [
        TokenizedPair(index=5, prompt_ids=[10, 11], chosen_ids=[20, 2], rejected_ids=[30, 31, 2]),
        TokenizedPair(index=9, prompt_ids=[12], chosen_ids=[21, 22, 23, 2], rejected_ids=[2]),
    ]
    batch = collate_pairs(examples, pad_id=0)
    assert torch.equal(
        batch["input_ids"],
        torch.tensor(
            [
                [10, 11, 20, 2, 0],  # prompt 0 + chosen 0
                [12, 21, 22, 23, 2],  # prompt 1 + chosen 1
                [10, 11, 30, 31, 2],  # prompt 0 + rejected 0
                [12, 2, 0, 0, 0],  # prompt 1 + rejected 1
            ]
        ),
    )
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    assert torch.equal(batch["loss_mask"], torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]))
    assert torch.equal(batch["index"], torch.tensor([5, 9]))
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_unpaired():
    from prefopt.data import TokenizedUnpaired

    batch = collate_unpaired([TokenizedUnpaired(3, [10], [20, 2], True), TokenizedUnpaired(4, [11, 12], [2], False)], pad_id=0)
    assert torch.equal(batch["input_ids"], torch.tensor([[10, 20, 2], [11, 12, 2]]))
    assert torch.equal(batch["loss_mask"], torch.tensor([[0, 1, 1], [0, 0, 1]]))
    assert batch["label"].tolist() == [True, False] and batch["index"].tolist() == [3, 4]


def test_collated_batch_feeds_sequence_logps(tiny_tokenizer, tiny_model):
    """The mask convention matches logprobs: response tokens (with eos) only are scored."""
    from prefopt.core.logprobs import forward_logps

    records = _records(tiny_tokenizer)
    pairs, _ = tokenize_pairs(records, tiny_tokenizer, 256, 128)
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        seq = forward_logps(tiny_model, batch)
    lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    assert seq.tokens.tolist() == lengths and bool((seq.sum < 0).all())


# ---------------------------------------------------------------- batch order


def test_bucketed_batches_deterministic_and_covering():
    lengths = [(i * 37) % 101 for i in range(1003)]
    first = bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
    again = bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
    other = bucketed_batches(lengths, 8, torch.Generator().manual_seed(4))
    assert first == again and first != other
    assert sorted(i for b in first for i in b) == list(range(1003))  # each index exactly once
    assert sum(len(b) < 8 for b in first) == 1 and all(len(b) <= 8 for b in first)  # 1003 = 125 * 8 + 3: one short batch


def test_bucketed_batches_groups_similar_lengths():
    lengths = list(range(400))  # one chunk of 8 * 50: batches are consecutive runs of the sorted lengths
    batches = bucketed_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) == 7 for b in batches)
    assert [min(b) for b in batches] != sorted(min(b) for b in batches)  # the batch order is shuffled


def test_bucketed_batches_advances_generator():
    gen = torch.Generator().manual_seed(0)
    assert bucketed_batches(list(range(64)), 4, gen) != bucketed_batches(list(range(64)), 4, gen)  # a new epoch order
