"""The chat_template option (TRL's raw-string semantics for plain-string data by default), `text` data for SFT,
and the output options that mean nothing alone (save_dtype without merge, hub options without push_to_hub)."""

from __future__ import annotations

import copy
import json

import pytest
from tokenizers.processors import TemplateProcessing

import prefopt
from prefopt.bench.suite import Cell, cell_options, load_suite
from prefopt.cli import main as cli_main
from prefopt.data import load_records, render_prompt, tokenize_pairs, tokenize_prompts, tokenize_unpaired
from prefopt.errors import PrefoptError
from prefopt.training import chat_template

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def _pair_ids(records, tokenizer):
    pairs, _ = tokenize_pairs(records, tokenizer, max_length=64, max_prompt_length=48)
    return pairs[0]


@pytest.fixture
def raw_and_chat(tmp_path):
    """One plain-string pair (TRL's standard format) and one conversational pair."""
    raw = _jsonl(tmp_path / "raw.jsonl", [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}])
    chat = _jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": "The sky is"}],
                                             "chosen": " blue.", "rejected": " green."}])  # fmt: skip
    return load_records(raw), load_records(chat)


def test_auto_keeps_plain_strings_raw_and_templates_message_lists(raw_and_chat, tiny_tokenizer):
    raw, chat = raw_and_chat
    assert raw[0].raw and not chat[0].raw
    eos = tiny_tokenizer.eos_token_id
    pair = _pair_ids(chat_template.apply_to_records(raw, "auto"), tiny_tokenizer)
    assert pair.prompt_ids == _ids(tiny_tokenizer, "The sky is")  # as TRL: the string itself, no template
    assert pair.chosen_ids == _ids(tiny_tokenizer, " blue.") + [eos]
    assert pair.rejected_ids == _ids(tiny_tokenizer, " green.") + [eos]
    templated = _pair_ids(chat_template.apply_to_records(chat, "auto"), tiny_tokenizer)
    assert templated.prompt_ids == render_prompt(tiny_tokenizer, chat[0].prompt)
    assert templated.prompt_ids != pair.prompt_ids  # the ChatML template adds its markers


def test_model_wraps_plain_strings_in_the_models_template(raw_and_chat, tiny_tokenizer):
    raw, chat = raw_and_chat
    wrapped = chat_template.apply_to_records(raw, "model")
    assert not wrapped[0].raw
    assert _pair_ids(wrapped, tiny_tokenizer).prompt_ids == render_prompt(tiny_tokenizer, chat[0].prompt)


def test_none_drops_the_template_and_a_file_replaces_it(raw_and_chat, tiny_tokenizer, tmp_path):
    raw, chat = raw_and_chat
    plain = copy.deepcopy(tiny_tokenizer)
    chat_template.apply_to_tokenizer(plain, "none")
    assert plain.chat_template is None
    assert _pair_ids(chat, plain).prompt_ids == _ids(plain, "User: The sky is\nAssistant: ")
    assert _pair_ids(chat_template.apply_to_records(raw, "none"), plain).prompt_ids == _ids(plain, "The sky is")

    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    own = copy.deepcopy(tiny_tokenizer)
    chat_template.check_option(str(path))
    chat_template.apply_to_tokenizer(own, str(path))
    for records in (chat, chat_template.apply_to_records(raw, str(path))):  # every row through the file's template
        assert _pair_ids(records, own).prompt_ids == _ids(own, "<user>The sky is\n<assistant>")


def test_text_rows_are_language_modelling_demonstrations(tmp_path, tiny_tokenizer):
    source = _jsonl(tmp_path / "lm.jsonl", [{"text": "Paris is the capital of France."}, {"text": "Two and two."}])
    records = load_records(source, kind="demonstrations")
    assert [(r.prompt, r.completion, r.label, r.raw) for r in records] == [
        ((), "Paris is the capital of France.", True, True), ((), "Two and two.", True, True)]  # fmt: skip
    assert chat_template.apply_to_records(records, "model") == records  # no prompt to template
    with pytest.raises(PrefoptError, match=r"lm\.jsonl holds language-modelling text .*needs paired data"):
        load_records(source, kind="paired")
    with pytest.raises(PrefoptError, match=r"lm\.jsonl holds language-modelling text only"):
        load_records(source, kind="prompt")


def test_text_trains_on_the_tokens_trl_does(tmp_path, tiny_tokenizer):
    """TRL's SFT tokenises text + eos with the tokenizer's own special tokens; the first token has no context, so
    it is the prompt: the special prefix where the tokenizer adds one (a Llama BOS), else the text's first token."""
    from trl.data_utils import _tokenize

    text = "Paris is the capital of France."
    records = load_records(_jsonl(tmp_path / "lm.jsonl", [{"text": text}]), kind="demonstrations")
    trl_ids = _tokenize(tiny_tokenizer, text + tiny_tokenizer.eos_token)["input_ids"]
    (ours,), _ = tokenize_unpaired(records, tiny_tokenizer, max_length=64, max_prompt_length=32)
    assert ours.prompt_ids + ours.completion_ids == trl_ids
    assert ours.prompt_ids == trl_ids[:1]  # the tiny tokenizer adds no BOS

    with_bos = copy.deepcopy(tiny_tokenizer)
    with_bos._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[
        ("<|im_start|>", with_bos.bos_token_id)])  # fmt: skip
    trl_ids = _tokenize(with_bos, text + with_bos.eos_token)["input_ids"]
    (ours,), _ = tokenize_unpaired(records, with_bos, max_length=64, max_prompt_length=32)
    assert ours.prompt_ids == [with_bos.bos_token_id] and ours.prompt_ids + ours.completion_ids == trl_ids


def test_plain_strings_train_on_the_tokens_trl_does(raw_and_chat, tiny_tokenizer):
    from trl.data_utils import maybe_apply_chat_template

    raw, _ = raw_and_chat
    example = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    rendered = maybe_apply_chat_template(example, tiny_tokenizer)
    assert rendered == example  # trl leaves the standard format as it is
    pair = _pair_ids(raw, tiny_tokenizer)
    assert pair.prompt_ids == _ids(tiny_tokenizer, rendered["prompt"])
    assert pair.chosen_ids == _ids(tiny_tokenizer, rendered["chosen"]) + [tiny_tokenizer.eos_token_id]


def test_raw_prompts_for_generation(tmp_path, tiny_tokenizer):
    records = load_records(_jsonl(tmp_path / "p.jsonl", [{"prompt": "Once upon"}]), kind="prompt")
    prompts, _ = tokenize_prompts(records, tiny_tokenizer, max_length=32, max_prompt_length=16)
    assert prompts[0].prompt_ids == _ids(tiny_tokenizer, "Once upon")


def test_the_notice_says_what_was_applied(raw_and_chat, tiny_tokenizer, capsys):
    raw, chat = raw_and_chat
    line = chat_template.notice(raw + chat, "auto", tiny_tokenizer, "d.jsonl")
    assert line.startswith("1 of 2 rows in d.jsonl are plain strings: used as raw text")
    assert chat_template.notice(chat, "auto", tiny_tokenizer, "d.jsonl") is None  # nothing surprising to say
    line = chat_template.notice(raw, "model", tiny_tokenizer, "d.jsonl")
    assert line.startswith("1 of 1 rows in d.jsonl are plain strings: wrapped in the model's chat template")
    line = chat_template.notice(raw + chat, "none", tiny_tokenizer, "d.jsonl")
    assert "no chat template (1 conversational rows as 'User:'/'Assistant:' lines, 1 rows of plain strings" in line
    chat_template.say(line)
    assert capsys.readouterr().err == f"prefopt: {line}\n"
    chat_template.say(line, is_main=False)  # other processes of a distributed run stay quiet
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("options", "message"), [
    ({"chat_template": "missing.jinja"}, (r"option 'chat_template': expected auto, model, none or a template file, "
                                          r"got 'missing\.jinja' \(no such file\)")),
    ({"save_dtype": "bf16"}, r"option 'save_dtype': sets the dtype of the merged model, which only merge=true"),
    ({"save_dtype": "bf16", "merge": True, "adapter": "full"}, r"option 'save_dtype'"),
    ({"hub_model_id": "me/x"}, r"option 'hub_model_id': given without push_to_hub=true"),
    ({"hub_private": True}, r"option 'hub_private': given without push_to_hub=true"),
])  # fmt: skip
def test_options_that_cannot_apply_are_refused_before_anything_runs(tmp_path, options, message):
    with pytest.raises(PrefoptError, match=message):
        prefopt.run(algo="dpo", data="x.jsonl", output_dir=str(tmp_path / "out"), **options)
    assert not (tmp_path / "out").exists()


def test_a_template_file_that_does_not_render_is_one_line_and_exit_2(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }")  # unclosed tag
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "chosen": "yes", "rejected": "no"} for i in range(8)])
    code = cli_main(["run", "--algo", "dpo", f"data={data}", f"model={tiny_model_dir}", f"chat_template={bad}",
                     f"output_dir={tmp_path / 'out'}", "steps=1", "eval_size=2", "progress=false"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.jinja: the chat template does not render a user turn" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_sft_on_text_and_a_template_file_saved_with_the_model(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    data = _jsonl(tmp_path / "lm.jsonl", [{"text": f"Fact {i}: the sky is blue."} for i in range(12)])
    summary = prefopt.run(algo="sft", data=data, model=str(tiny_model_dir), output_dir=str(tmp_path / "lm"),
                          steps=2, batch_size=4, eval_size=2, max_length=32, precision="fp32", progress=False)
    assert summary["steps"] == 2 and summary["train_examples"] == 10
    chat = _jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": f"Q{i}?"}], "completion": "A."}
                                            for i in range(12)])  # fmt: skip
    summary = prefopt.run(algo="sft", data=chat, model=str(tiny_model_dir), output_dir=str(tmp_path / "chat"),
                          chat_template=str(path), steps=1, batch_size=4, eval_size=2, max_length=32,
                          precision="fp32", progress=False)  # fmt: skip
    saved = json.loads((tmp_path / "chat" / "adapter" / "tokenizer_config.json").read_text())
    written = saved.get("chat_template") or (tmp_path / "chat" / "adapter" / "chat_template.jinja").read_text()
    assert written == TEMPLATE  # the model ships with the template it was trained with
    assert "every row through the chat template of" in capsys.readouterr().err


def test_bench_cells_train_with_the_models_template(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nversion: 1\ntasks: [qa]\nseeds: [0]\nalgorithms: {dpo: {}, sft: {chat_template: none}}\n")
    suite = load_suite(path)
    assert cell_options(suite, Cell("qa", "dpo", 0), tmp_path, "p.jsonl")["chat_template"] == "model"
    assert cell_options(suite, Cell("qa", "sft", 0), tmp_path, "p.jsonl")["chat_template"] == "none"
