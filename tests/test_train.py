"""End to end through `prefopt run` on a tiny in-process model."""

import json
import math

import pytest
from helpers import interrupt_on_call, read_metrics, run_cli, tiny_run_args, write_learnable_pairs
from safetensors.torch import load_file
from torch.testing import assert_close

from prefopt.training import offline as train_module
from prefopt.training.lifecycle import lr_factor


@pytest.fixture
def pairs(tmp_path):
    return write_learnable_pairs(tmp_path / "pairs.jsonl")


@pytest.mark.e2e
def test_dpo_learns_a_trivial_preference(tiny_model_dir, pairs, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(tiny_run_args(tiny_model_dir, pairs, out, "steps=20", "lr=1e-2", "beta=0.5"))
    assert code == 0, capsys.readouterr().err
    rows = [r for r in read_metrics(out) if "loss" in r]
    # LoRA starts as a no-op, so policy == reference and the first loss is exactly ln 2.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[-1]["loss"] < 0.3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_before"]["eval_accuracy"] == 0.5  # all ties before training
    assert summary["eval_after"]["eval_accuracy"] > 0.9
    assert 0 < summary["peak_rss_mb_training"] <= summary["peak_rss_mb"]  # the run's peak includes the export
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "config.yaml").read_text().startswith("algo: dpo")
    assert not (out / "checkpoints").exists()
    assert "held-out preference accuracy: 0.500 ->" in capsys.readouterr().out


@pytest.mark.e2e
def test_resume_continues_exactly(tiny_model_dir, pairs, tmp_path, monkeypatch):
    common = ("steps=6", "save_every=3", "lr=5e-3", "lora_dropout=0.1", "batch_size=2", "grad_accum=2")
    straight = tmp_path / "straight"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, straight, *common)) == 0

    broken = tmp_path / "broken"
    undo = interrupt_on_call(monkeypatch, train_module.Trainer, "train_step", 5)
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, broken, *common)) == 130
    assert not (broken / "summary.json").exists()
    assert (broken / "checkpoints" / "step-000003").is_dir()
    undo()

    assert run_cli(["run", "--resume", broken]) == 0
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(broken / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert_close(a[key], b[key], rtol=0, atol=0)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(read_metrics(straight)) == strip(read_metrics(broken))


@pytest.mark.e2e
def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, pairs, tmp_path):
    """8 pairs x 1 micro-batch and 2 pairs x 4 micro-batches: same loss, gradient norm and weights."""
    big, small = tmp_path / "big", tmp_path / "small"
    common = ("steps=2", "lr=1e-2", "adapter=full", "eval_size=0")
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, big, *common, "batch_size=8", "grad_accum=1")) == 0
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, small, *common, "batch_size=2", "grad_accum=4")) == 0
    for rb, rs in zip(read_metrics(big), read_metrics(small)):
        assert rb["loss"] == pytest.approx(rs["loss"], abs=1e-5)
        assert rb["grad_norm"] == pytest.approx(rs["grad_norm"], abs=1e-5)
    wb = load_file(big / "model" / "model.safetensors")
    ws = load_file(small / "model" / "model.safetensors")
    for key in wb:
        assert_close(wb[key], ws[key], rtol=0, atol=1e-5)


@pytest.mark.e2e
def test_reference_modes_agree(tiny_model_dir, pairs, tmp_path):
    """Precomputed reference (cached on disk) gives the same training as adapter-disabled."""
    rows = {}
    for mode in ("adapter", "precomputed", "precomputed"):
        out = tmp_path / f"ref-{mode}-{len(rows)}"
        assert run_cli(tiny_run_args(tiny_model_dir, pairs, out, "steps=3", "lr=1e-2", f"reference={mode}")) == 0
        rows[out.name] = [r["loss"] for r in read_metrics(out) if "loss" in r]
        assert json.loads((out / "summary.json").read_text())["reference"] == mode
    first, *rest = rows.values()
    for other in rest:
        assert other == pytest.approx(first, abs=1e-6)


@pytest.mark.e2e
def test_full_finetune_with_frozen_copy_and_merge(tiny_model_dir, pairs, tmp_path):
    full = tmp_path / "full"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, full, "steps=2", "adapter=full", "lr=1e-3")) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["reference"] == "copy" and (full / "model" / "config.json").exists()

    merged = tmp_path / "merged"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, merged, "steps=2", "merge=true", "lr=1e-2")) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged / "merged")
    assert model.config.num_hidden_layers == 2


def test_lr_schedule_shapes():
    # 10 steps, 2 warm-up: 1/3, 2/3, then cosine from 1 down towards 0
    assert lr_factor(0, 10, 2, "cosine") == pytest.approx(1 / 3)
    assert lr_factor(1, 10, 2, "cosine") == pytest.approx(2 / 3)
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 10, 2, "constant") == 1.0


@pytest.mark.e2e
def test_bf16_autocast_path_runs(tiny_model_dir, pairs, tmp_path):
    from prefopt.core.models import pick_device, resolve_precision

    if resolve_precision("auto", pick_device()) != "bf16":
        pytest.skip("no bf16 support on this CPU")
    out = tmp_path / "bf16"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, out, "steps=2", "precision=bf16")) == 0
    assert json.loads((out / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.e2e
def test_held_out_evaluation_every_step(tiny_model_dir, pairs, tmp_path):
    """eval_every=1: the evaluated rows carry eval_* metrics; the summary's last-10 training means do not."""
    out = tmp_path / "run"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, out, "steps=3", "eval_every=1")) == 0
    rows = read_metrics(out)
    assert [("loss" in r, "eval_loss" in r) for r in rows] == [(False, True), (True, True), (True, True),
                                                              (True, False), (False, True)]
    summary = json.loads((out / "summary.json").read_text())
    assert "loss" in summary["train_last10"] and not any(k.startswith("eval_") for k in summary["train_last10"])
