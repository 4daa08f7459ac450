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
        ([GOOD, {**GOOD, "prompt": "word " * 200}], ["row 2", "field 'prompt'", "max_length=64"]),
    ],
    ids=["misspelled-column", "empty-string", "wrong-type", "chosen-equals-rejected", "prompt-too-long"],
)
def test_bad_rows(tiny_model_dir, tmp_path, capsys, rows, fragments):
    data = write_rows(tmp_path / "bad.jsonl", rows + [GOOD] * 20)
    out = tmp_path / "out"
    expect_error(capsys, tiny_run_args(tiny_model_dir, data, out, "steps=1"), out, "bad.jsonl", *fragments)


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
