"""Bad input: one clear line naming file / row / field, exit 2, no finished-looking output."""

import json
import os
import subprocess
import sys

import pytest
from helpers import run_cli, tiny_run_args, write_learnable_pairs


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"prompt": "Say yes.", "chosen": "yes", "rejected": "no"}


def expect_error(capsys, args, out, *fragments):
    code = run_cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("prefopt: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert not (out / "summary.json").exists()
    assert not out.exists() or not any(out.iterdir())
    return err[0]


@pytest.mark.parametrize(
    "rows, fragments",
    [
        ([{"prompt": "a", "chosen": "b", "rejcted": "c"}], ["missing column 'rejected'", "did you mean 'rejcted'"]),
        ([GOOD, {**GOOD, "chosen": "  "}], ["row 2", "field 'chosen'", "empty"]),
        ([GOOD, {**GOOD, "chosen": 7}], ["row 2", "field 'chosen'", "int"]),
        ([GOOD, GOOD, {**GOOD, "rejected": "yes"}], ["row 3", "identical"]),
    ],
    ids=["misspelled-column", "empty-string", "wrong-type", "chosen-equals-rejected"],
)
def test_bad_rows(tiny_model_dir, tmp_path, capsys, rows, fragments):
    data = write_rows(tmp_path / "bad.jsonl", rows + [GOOD] * 20)
    out = tmp_path / "out"
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "steps=1"), out, "bad.jsonl", *fragments)


def test_a_prompt_longer_than_max_length_with_long_prompts_error(tiny_model_dir, tmp_path, capsys):
    data = write_rows(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "prompt": "word " * 200}] + [GOOD] * 20)
    out = tmp_path / "out"
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "steps=1", "long_prompts=error"), out,
                 "bad.jsonl", "row 2", "field 'prompt'", "max_length=64", "long_prompts=truncate or drop")


@pytest.mark.parametrize(
    "option, message",
    [
        ("steps=0", "option 'steps': must be >= 1, got 0"),
        ("batch_size=0", "option 'batch_size': must be >= 1, got 0"),
        ("batch_size=-2", "option 'batch_size': must be >= 1, got -2"),
        ("grad_accum=0", "option 'grad_accum': must be >= 1, got 0"),
        ("eval_size=-1", "option 'eval_size': must be >= 0, got -1"),
        ("eval_every=-1", "option 'eval_every': must be >= 0, got -1"),
        ("save_every=-1", "option 'save_every': must be >= 0, got -1"),
        ("warmup_ratio=-5", "option 'warmup_ratio': must be in [0, 1], got -5.0"),
        ("lr=inf", "option 'lr': must be a finite number, got inf"),
        ("lr=-0.001", "option 'lr': must be >= 0, got -0.001"),
        ("weight_decay=-1", "option 'weight_decay': must be >= 0, got -1.0"),
        ("max_grad_norm=.inf", "option 'max_grad_norm': must be a finite number, got inf"),
        ("max_length=1", "option 'max_length': must be >= 2, got 1"),
        ("max_prompt_length=0", "option 'max_prompt_length': must be >= 1, got 0"),
        ("lora_r=0", "option 'lora_r': must be >= 1, got 0"),
        ("lora_alpha=0", "option 'lora_alpha': must be >= 1, got 0"),
        ("lora_dropout=1.0", "option 'lora_dropout': must be in [0, 1), got 1.0"),
        ("seed=-1", "option 'seed': must be in [0, 4294967295], got -1"),
    ],
)
def test_out_of_range_option_is_refused_before_anything_is_written(tiny_model_dir, tmp_path, capsys, option, message):
    out = tmp_path / "out"
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    args = tiny_run_args(tiny_model_dir, data, out, "steps=1", option)  # steps=1: quick to fail without the check
    assert expect_error(capsys, args, out) == f"prefopt: error: {message}"
    assert not out.exists()


def test_out_of_range_option_in_a_config_file_creates_no_default_run_folder(tiny_model_dir, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("steps: 0\n")
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    code = run_cli(["run", "--config", config, "--model", tiny_model_dir, "--data", data])
    assert code == 2
    assert capsys.readouterr().err.strip() == "prefopt: error: option 'steps': must be >= 1, got 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "d.jsonl"]  # no runs/ folder


def test_config_file_not_utf8(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_bytes(b"steps: 1\n# r\xe9sum\xe9\n")
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    args = tiny_run_args(tiny_model_dir, data, out) + ["--config", config]
    expect_error(capsys, args, out, "c.yaml' line 2", "not valid UTF-8", "byte 0xe9")


@pytest.mark.parametrize(
    "content, fragments",
    [
        (json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff"}\n', ["bad.jsonl row 2", "not valid UTF-8", "0xff"]),
        ((json.dumps(GOOD) + "\n").encode("utf-16"), ["bad.jsonl", "UTF-16", "save it as UTF-8"]),
        ((json.dumps(GOOD) + "\n").encode("utf-16-le"), ["bad.jsonl row 1", "NUL bytes", "save it as UTF-8"]),
        (b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n", ["bad.jsonl row 1", "JSON nested too deeply"]),
        (json.dumps({**GOOD, "prompt": "\ud800"}).encode() + b"\n",
         ["bad.jsonl row 1", "field 'prompt'", "not valid Unicode"]),
    ],
    ids=["not-utf8", "utf16-bom", "utf16-no-bom", "nested-200k", "unpaired-surrogate"],
)
def test_undecodable_data_file(tiny_model_dir, tmp_path, capsys, content, fragments):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content)
    out = tmp_path / "out"
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "steps=1"), out, *fragments)


def test_oversized_field_is_refused_before_tokenising(tiny_model_dir, tmp_path, capsys):
    """A 5 MB prompt: refused while the rows are read (in well under a second), not after tokenising it
    (which took ~10 s and ~1 GB, and then reported the prompt's token count)."""
    data = write_rows(tmp_path / "big.jsonl", [GOOD] * 10 + [{**GOOD, "prompt": "word " * 1_000_000}] + [GOOD] * 10)
    out = tmp_path / "out"
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "steps=1"), out,
                 "big.jsonl row 11 field 'prompt'", "5,000,000 characters", "1,000,000")


def test_nonexistent_data_file(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, tiny_run_args(tiny_model_dir, tmp_path / "nope.jsonl", out), out, "nope.jsonl", "does not exist")


def test_unknown_algorithm(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out) + ["--algo", "dop"], out, "unknown algorithm 'dop'", "'dpo'")


def test_unwritable_output_folder(tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out), out, "cannot be created", "a-file")


def test_unknown_and_mistyped_options(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "bta=0.2"), out, "unknown option 'bta'", "'beta'")
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "steps=many"), out, "option 'steps'", "int")


def test_nonexistent_model_folder(tmp_path, capsys):
    out = tmp_path / "out"
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    expect_error(capsys, tiny_run_args(tmp_path / "no-model", data, out), out, "no-model", "does not exist")


@pytest.mark.e2e
def test_finished_run_is_not_overwritten(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    data = write_learnable_pairs(tmp_path / "d.jsonl")
    assert run_cli(tiny_run_args(tiny_model_dir, data, out, "steps=1")) == 0
    before = (out / "summary.json").read_text()
    assert run_cli(tiny_run_args(tiny_model_dir, data, out, "steps=1")) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_console_script_exit_status(tmp_path):
    """The installed `prefopt` command itself exits 2 with one line on stderr."""
    exe = os.path.join(os.path.dirname(sys.executable), "prefopt")
    proc = subprocess.run([exe, "run", "--algo", "nosuch"], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "prefopt: error: unknown algorithm 'nosuch' (see: prefopt list)"
