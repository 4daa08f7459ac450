"""The real bundled model end to end (slow: loads SmolLM2-135M)."""

import json
import math

import pytest
from helpers import read_metrics, run_cli


@pytest.mark.slow
def test_default_dpo_run_on_the_bundled_model(tmp_path):
    out = tmp_path / "run"
    code = run_cli(["run", "--algo", "dpo", "--output-dir", out, "steps=3", "batch_size=2", "eval_size=4", "progress=false"])
    assert code == 0
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # bf16 autocast: policy == reference up to rounding
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert rows[0]["grad_norm"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truncation"]["truncated_prompts"] == 0
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_precomputed_reference_matches_adapter_reference_on_the_bundled_model(tmp_path):
    """24 built-in pairs (the precomputed mode runs the reference over all of them first)."""
    from prefopt.tasks import load_builtin

    data = tmp_path / "qa24.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": r.prompt[-1]["content"], "chosen": r.chosen, "rejected": r.rejected}) + "\n"
        for r in load_builtin("qa", n=24)
    ))
    losses = {}
    for mode in ("adapter", "precomputed"):
        out = tmp_path / mode
        args = ["run", "--data", data, "--output-dir", out, "steps=2", "batch_size=2", "eval_size=4", "progress=false",
                "precision=fp32", f"reference={mode}"]
        assert run_cli(args) == 0
        losses[mode] = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert losses["precomputed"] == pytest.approx(losses["adapter"], abs=1e-4)
