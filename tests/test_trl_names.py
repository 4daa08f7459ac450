"""What a user coming from trl types: its option names, --key value flags, epochs, --version, the Python API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import run_cli, write_learnable_pairs

import prefopt
from prefopt.algorithms.dpo import DPO
from prefopt.api import data_source
from prefopt.cli import RUN_SWITCH_FLAGS, RUN_VALUE_FLAGS
from prefopt.errors import PrefoptError
from prefopt.training.aliases import ALIASES, flags_to_options
from prefopt.training.config import RunConfig, split_options, steps_for_epochs


@pytest.mark.parametrize(("given", "expected"), [
    ({"learning_rate": 1e-5}, {"lr": 1e-5}),
    ({"max_steps": 7}, {"steps": 7}),
    ({"num_train_epochs": 2}, {"epochs": 2.0}),
    ({"per_device_train_batch_size": 4}, {"batch_size": 4}),
    ({"gradient_accumulation_steps": 2}, {"grad_accum": 2}),
    ({"lr_scheduler_type": "linear"}, {"schedule": "linear"}),
    ({"warmup_ratio": 0.05}, {"warmup_ratio": 0.05}),
    ({"bf16": True}, {"precision": "bf16"}),
    ({"bf16": "false"}, {"precision": "fp32"}),
    ({"save_steps": 5, "eval_steps": 3}, {"save_every": 5, "eval_every": 3}),
    ({"model_name_or_path": "m"}, {"model": "m"}),
])  # fmt: skip
def test_trl_option_names_are_read_as_prefopts(given, expected, capsys):
    run, _ = split_options(given, DPO.Config, "options")
    for name, value in expected.items():
        assert getattr(run, name) == value
    if set(given) - set(expected):  # a renamed option says what it was read as, in one line
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "read as" in err and "(prefopt's names)" in err


def test_per_device_batch_size_is_multiplied_by_the_processes():
    run, _ = split_options({"per_device_train_batch_size": 4}, DPO.Config, "options", processes=2)
    assert run.batch_size == 8  # prefopt's batch_size is the global batch


def test_an_option_given_under_both_names_is_an_error():
    with pytest.raises(PrefoptError, match="'learning_rate' and 'lr' set the same option"):
        split_options({"learning_rate": 1e-5, "lr": 1e-4}, DPO.Config, "options")


@pytest.mark.parametrize(("name", "hint"), [("fp16", "bf16 or fp32"), ("logging_steps", "metrics.jsonl"),
                                            ("warmup_steps", "warmup_ratio")])  # fmt: skip
def test_a_trl_name_without_counterpart_gets_a_hint(name, hint):
    with pytest.raises(PrefoptError, match=rf"unknown option '{name}' \(a Hugging Face name\): .*{hint}"):
        split_options({name: 1}, DPO.Config, "options")


def test_max_completion_length_is_an_online_algorithms_max_new_tokens():
    from prefopt.algorithms.grpo import GRPO

    _, config = split_options({"max_completion_length": 12}, GRPO.Config, "options")
    assert config.max_new_tokens == 12
    with pytest.raises(PrefoptError, match="unknown option 'max_completion_length'"):  # DPO samples nothing
        split_options({"max_completion_length": 12}, DPO.Config, "options")


def test_every_alias_targets_a_real_option():
    from prefopt.algorithms.grpo import GRPO
    from prefopt.training.config import field_types

    known = set(field_types(RunConfig)) | set(field_types(GRPO.Config))
    assert {target for target, _ in ALIASES.values()} <= known


@pytest.mark.parametrize(("tokens", "expected"), [
    (["--learning_rate", "1e-5", "steps=3"], ["learning_rate=1e-5", "steps=3"]),
    (["--learning-rate=1e-5"], ["learning_rate=1e-5"]),
    (["--bf16", "--algo", "dpo"], ["bf16=true", "--algo", "dpo"]),
    (["--output_dir", "out", "--output-dir", "o2"], ["output_dir=out", "--output-dir", "o2"]),
    (["--model", "--weird-name", "--fsdp", "--beta", "-0.5"], ["--model", "--weird-name", "--fsdp", "beta=-0.5"]),
])  # fmt: skip
def test_flags_that_are_not_prefopts_become_key_value_options(tokens, expected):
    assert flags_to_options(tokens, RUN_VALUE_FLAGS, RUN_SWITCH_FLAGS) == expected


def test_steps_from_epochs_count_whole_batches():
    run = RunConfig(epochs=1.5, steps=60)
    assert steps_for_epochs(run, examples=50, per_step=8).steps == math.ceil(1.5 * 6)  # 6 whole batches a pass
    assert steps_for_epochs(run, examples=5, per_step=8).steps == 2  # fewer than a batch: one (short) batch a pass
    assert steps_for_epochs(RunConfig(steps=60), 50, 8).steps == 60  # epochs 0: steps as given
    with pytest.raises(PrefoptError, match="epochs"):
        RunConfig(epochs=-1)


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"prefopt {prefopt.__version__}"


def test_cli_reads_trl_flags_and_names_them_in_errors(capsys):
    assert run_cli(["run", "--algo", "dpo", "--learning_rate", "abc"]) == 2
    err = capsys.readouterr().err
    assert "option 'lr'" in err and err.count("prefopt: error:") == 1


def test_python_api_surface():
    assert "dpo" in prefopt.list_algorithms() and "grpo" in prefopt.list_algorithms()
    with pytest.raises(prefopt.PrefoptError, match="unknown algorithm 'nope'"):
        prefopt.run(algo="nope", data="x.jsonl")
    with pytest.raises(prefopt.PrefoptError, match="unknown option 'lrr'; did you mean 'lr'"):
        prefopt.run(algo="dpo", data="x.jsonl", lrr=1)


def test_in_memory_data_becomes_one_content_addressed_file(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path))
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d", "chosen": "e", "rejected": "f"}]
    path = data_source(rows)
    assert [json.loads(line) for line in Path(path).read_text().splitlines()] == rows
    assert data_source(datasets.Dataset.from_list(rows)) == path  # the same rows, the same file
    assert data_source(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})) == path
    assert data_source(tmp_path / "x.jsonl") == str(tmp_path / "x.jsonl")
    with pytest.raises(PrefoptError, match="data row 2: expected a dict"):
        data_source([rows[0], "text"])
    with pytest.raises(PrefoptError, match="data row 1: not representable as JSON"):
        data_source([{"prompt": object()}])
    with pytest.raises(PrefoptError, match="without a 'train' split"):
        data_source(datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}))


@pytest.mark.e2e
def test_python_api_trains_from_a_list_of_dicts_for_whole_epochs(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))
    rows = [json.loads(line) for line in write_learnable_pairs(tmp_path / "p.jsonl", 20).read_text().splitlines()]
    summary = prefopt.run(algo="dpo", data=rows, model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                          num_train_epochs=2, per_device_train_batch_size=4, eval_size=4, max_length=64,
                          precision="fp32", progress=False, lora_r=4, lora_alpha=8)  # fmt: skip
    assert summary["steps"] == 2 * (16 // 4)  # 16 training pairs after 4 held out: 4 batches a pass
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("policy", ["truncate", "drop", "error"])
def test_a_few_prompts_longer_than_max_length_no_longer_stop_the_run(tmp_path, tiny_model_dir, policy, capsys):
    rows = [{"prompt": f"Short question {i}?", "chosen": "yes", "rejected": "no"} for i in range(14)]
    rows[3]["prompt"] = rows[9]["prompt"] = "word " * 120  # far beyond max_length=48 tokens
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"algo": "dpo", "data": str(data), "model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"),
               "steps": 1, "batch_size": 2, "eval_size": 0, "max_length": 48, "precision": "fp32",
               "progress": False, "lora_r": 4, "lora_alpha": 8, "long_prompts": policy}  # fmt: skip
    if policy == "error":
        with pytest.raises(PrefoptError, match=r"d\.jsonl row 4 field 'prompt': prompt is \d+ tokens, longer than "
                                               r"max_length=48 \(2 such rows"):  # fmt: skip
            prefopt.run(**options)
        return
    summary = prefopt.run(**options)
    assert summary["truncation"]["long_prompts"] == 2
    assert summary["train_examples"] == (14 if policy == "truncate" else 12)
    assert summary["truncation"]["dropped_prompts"] == (0 if policy == "truncate" else 2)
    assert "2 of 14 prompts in" in capsys.readouterr().err
