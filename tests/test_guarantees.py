"""What a run promises: one writer per folder, finite outputs, resume only of the same run, no code
run from a run folder, one-line errors for damaged folders. Each test failed before its guarantee existed."""

import json
import os
import pickle
import shutil
import stat

import pytest
import torch
from helpers import interrupt_on_call, read_metrics, run_cli, tiny_run_args, write_learnable_pairs

from prefopt.io import atomic_write_json
from prefopt.training import offline
from prefopt.training.checkpoint import checkpoints
from prefopt.training.lifecycle import RunFolder, default_output_dir

pytestmark = pytest.mark.e2e


@pytest.fixture
def pairs(tmp_path):
    return write_learnable_pairs(tmp_path / "pairs.jsonl", n=24)


def dpo(model_dir, pairs, out, *options):
    return run_cli(tiny_run_args(model_dir, pairs, out, "eval_size=4", *options) + ["--algo", "dpo"])


def without_seconds(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def interrupted(monkeypatch, model_dir, pairs, out, at_call, *options):
    """A run stopped by Ctrl-C at the `at_call`-th training step (its checkpoints kept)."""
    undo = interrupt_on_call(monkeypatch, offline.Trainer, "train_step", at_call)
    assert dpo(model_dir, pairs, out, *options) == 130
    undo()


# ---------------------------------------------------------------- one writer per folder


def test_a_folder_in_use_by_another_run_is_refused(tiny_model_dir, pairs, tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunFolder(out, resume=False)
    holder.create()  # another run holds the folder (a second open file description conflicts like a process)
    assert dpo(tiny_model_dir, pairs, out, "steps=1") == 2
    err = capsys.readouterr().err
    assert f"is in use by another prefopt run (pid {os.getpid()})" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the other run's folder is untouched


def test_default_folder_names_differ_between_processes_started_in_the_same_second():
    assert default_output_dir("dpo").name.endswith(f"-{os.getpid()}")


def test_output_dir_that_is_a_file_is_one_line(tiny_model_dir, pairs, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a folder")
    assert dpo(tiny_model_dir, pairs, target, "steps=1") == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


# ---------------------------------------------------------------- finite outputs


def test_a_diverging_run_stops_with_one_line_naming_the_step(tiny_model_dir, pairs, tmp_path, capsys):
    out = tmp_path / "run"
    assert dpo(tiny_model_dir, pairs, out, "steps=4", "adapter=full", "lr=1e30", "max_grad_norm=0") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model-loading progress bars
    assert err.startswith("prefopt: error: step ") and "training diverged" in err
    assert not out.exists()  # no checkpoint: nothing worth keeping, nothing that looks finished


def test_summary_and_metrics_are_strict_json(tmp_path):
    atomic_write_json(tmp_path / "s.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=pytest.fail) == {"a": None, "b": [None, 1.5]}
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.create()
    folder.log({"step": 1, "kl_se": float("nan")})
    assert json.loads(folder.metrics.read_text(), parse_constant=pytest.fail) == {"step": 1, "kl_se": None}


def test_a_failure_that_is_not_a_prefopt_error_leaves_no_folder_blocking_the_rerun(
        tiny_model_dir, pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def broken(self, ids):
        raise RuntimeError("a bug")

    monkeypatch.setattr(offline.Trainer, "train_step", broken)
    with pytest.raises(RuntimeError):
        dpo(tiny_model_dir, pairs, out, "steps=2")
    assert not out.exists()
    monkeypatch.undo()
    assert dpo(tiny_model_dir, pairs, out, "steps=1") == 0


# ---------------------------------------------------------------- resume: only the same run, no code


@pytest.mark.parametrize(("edit", "named"), [
    (lambda c: c.update(algo="robust-dpo"), "the algorithm changed"),  # the same option names as dpo
    (lambda c: c.update(lr=1e-3), "option 'lr' was 0.01"),
    (lambda c: c.update(steps=6), "option 'steps'"),
    (lambda c: c.update(lora_r=4), "option 'lora_r'"),
    (lambda c: c.update(seed=1), "option 'seed'"),
])
def test_resume_refuses_a_changed_run(tiny_model_dir, pairs, tmp_path, monkeypatch, capsys, edit, named):
    out = tmp_path / "run"
    interrupted(monkeypatch, tiny_model_dir, pairs, out, 3, "steps=4", "save_every=1", "lr=1e-2")
    config = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    edit(config)
    (out / "config.yaml").write_text(__import__("yaml").safe_dump(config))
    capsys.readouterr()
    assert run_cli(["run", "--resume", out]) == 2
    err = capsys.readouterr().err
    assert named in err and "a resumed run must continue the same run" in err
    assert not (out / "summary.json").exists()


def test_resume_refuses_changed_data(tiny_model_dir, pairs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(monkeypatch, tiny_model_dir, pairs, out, 3, "steps=4", "save_every=1")
    pairs.write_text(pairs.read_text().replace('"yes"', '"yes!"'))
    capsys.readouterr()
    assert run_cli(["run", "--resume", out]) == 2
    assert "the data (or its tokenisation) changed" in capsys.readouterr().err


class Planted:
    """A pickle that creates a file when unpickled: code planted in someone else's run folder."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_runs_code_planted_in_a_checkpoint(tiny_model_dir, pairs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(monkeypatch, tiny_model_dir, pairs, out, 2, "steps=3", "save_every=1")
    marker = tmp_path / "pwned"
    (only,) = checkpoints(out)
    with (only / "optim.pt").open("wb") as f:
        pickle.dump({"optimizer": Planted(str(marker))}, f)
    capsys.readouterr()
    assert run_cli(["run", "--resume", out]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not marker.exists()


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(
        tiny_model_dir, pairs, tmp_path, monkeypatch, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    common = ("steps=4", "save_every=1", "lr=1e-2")
    assert dpo(tiny_model_dir, pairs, straight, *common) == 0
    interrupted(monkeypatch, tiny_model_dir, pairs, broken, 4, *common)
    older, newest = checkpoints(broken)  # the two newest are kept
    assert (older.name, newest.name) == ("step-000002", "step-000003")
    data = (newest / "trainable.pt").read_bytes()
    (newest / "trainable.pt").write_bytes(data[: len(data) // 2])  # a write cut short by a power loss
    with (broken / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 0.6')  # and a torn last line
    capsys.readouterr()
    assert run_cli(["run", "--resume", broken]) == 0
    assert "resuming from step-000002 instead" in capsys.readouterr().err
    assert without_seconds(read_metrics(broken)) == without_seconds(read_metrics(straight))


def test_a_full_disk_at_checkpoint_time_is_one_line(tiny_model_dir, pairs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if "step-000002" in str(path) or ".step-000002" in str(path):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert dpo(tiny_model_dir, pairs, out, "steps=4", "save_every=1") == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "last good checkpoint:" in err and "step-000001" in err
    assert [p.name for p in checkpoints(out)] == ["step-000001"]  # kept, resumable


# ---------------------------------------------------------------- a finished folder


def test_finished_folders_have_usual_modes_and_no_leftovers(tiny_model_dir, pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted(monkeypatch, tiny_model_dir, pairs, out, 2, "steps=3", "save_every=1")
    (out / ".adapter.leftover").mkdir()  # a temp folder of a write a kill interrupted
    (out / "checkpoints" / ".step-000009.x").mkdir()
    assert run_cli(["run", "--resume", out]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    mode = stat.S_IMODE((out / "adapter").stat().st_mode)
    assert mode == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_model_folder_that_needs_its_own_code_is_refused(tiny_model_dir, tmp_path, pairs, capsys):
    model = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model)  # a working tokenizer and weights; only the config asks for code
    (model / "config.json").write_text(json.dumps({
        "model_type": "my-own-arch", "architectures": ["MyModel"],
        "auto_map": {"AutoConfig": "my_code.MyConfig", "AutoModelForCausalLM": "my_code.MyModel"},
    }))
    (model / "my_code.py").write_text("raise SystemExit('planted code ran')\n")
    assert dpo(model, pairs, tmp_path / "run", "steps=1") == 2
    err = capsys.readouterr().err
    assert err.startswith("prefopt: error: ") and len(err.strip().splitlines()) == 1 and "never runs code" in err
    assert not (tmp_path / "run").exists()


def test_the_optional_divergence_check_stops_a_collapsed_run(tiny_model_dir, pairs, tmp_path, capsys):
    """lr=1e3 saturates the tiny policy: the loss stays near ln 2 while the gradient vanishes (a dead model
    that would otherwise finish with exit 0, as the run without the check shows)."""
    collapsing = ("steps=6", "lr=1e3", "max_grad_norm=0")
    assert dpo(tiny_model_dir, pairs, tmp_path / "unchecked", *collapsing) == 0
    capsys.readouterr()
    assert dpo(tiny_model_dir, pairs, tmp_path / "checked", *collapsing, "divergence_factor=100") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("prefopt: error: step ") and "the run diverged" in err
