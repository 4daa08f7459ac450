"""Every built-in algorithm end to end through `prefopt run` on a tiny model."""

import json

import pytest
import torch
from helpers import read_metrics, run_cli, tiny_run_args, write_learnable_pairs
from safetensors.torch import load_file
from torch.testing import assert_close

from prefopt.core import registry

pytestmark = pytest.mark.e2e

BUILTIN = sorted(
    name for name, entries in registry.discover().items()
    if entries[0].package == "prefopt" and not registry.get(name).online  # online ones: tests/test_online.py
)
PAIRED = [name for name in BUILTIN if registry.get(name).inputs == "pairs"]
# Settings under which each objective learns the tiny task in 30 steps.
# (apo and nca flatten out near their loss floor at the default beta, which slows the decrease.)
OVERRIDES = {"dpo": ["beta=0.5"], "kto": ["beta=0.5"], "apo-zero": ["beta=1.0"], "apo-down": ["beta=1.0"], "nca": ["beta=1.0"]}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_learnable_pairs(tmp_path_factory.mktemp("zoo") / "pairs.jsonl")


@pytest.mark.parametrize("algo", BUILTIN)
def test_every_algorithm_learns_a_trivial_preference(algo, tiny_model_dir, pairs, tmp_path):
    out = tmp_path / algo
    args = tiny_run_args(tiny_model_dir, pairs, out, "steps=30", "lr=1e-2", *OVERRIDES.get(algo, []))
    assert run_cli(args + ["--algo", algo]) == 0
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1 * abs(first), (first, last)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_after"]["eval_pref_accuracy"] >= 0.9
    assert summary["eval_after"]["eval_pref_accuracy"] > summary["eval_before"]["eval_pref_accuracy"]


@pytest.mark.parametrize("algo", PAIRED)
def test_gradient_accumulation_invariance(algo, tiny_model_dir, pairs, tmp_path):
    """Batch 8 x 1 step and batch 2 x 4 accumulation steps: same loss, gradient norm and weights (fp32)."""
    runs = {}
    for name, split in (("big", ["batch_size=8", "grad_accum=1"]), ("small", ["batch_size=2", "grad_accum=4"])):
        out = tmp_path / name
        args = tiny_run_args(tiny_model_dir, pairs, out, "steps=2", "lr=1e-2", "eval_size=0", *split)
        assert run_cli(args + ["--algo", algo]) == 0
        runs[name] = out
    for big, small in zip(read_metrics(runs["big"]), read_metrics(runs["small"])):
        assert big["loss"] == pytest.approx(small["loss"], abs=1e-5)
        assert big["grad_norm"] == pytest.approx(small["grad_norm"], abs=1e-5)
    a = load_file(runs["big"] / "adapter" / "adapter_model.safetensors")
    b = load_file(runs["small"] / "adapter" / "adapter_model.safetensors")
    for key in a:  # fp32 summation order differs; 2e-5 is 0.2% of one Adam step at lr 1e-2
        assert_close(a[key], b[key], rtol=0, atol=2e-5)


def test_reward_model_loads_back_as_a_reward_function(tiny_model_dir, pairs, tmp_path):
    from prefopt.core.heads import forward_rewards, load_reward_model
    from prefopt.core.models import load_tokenizer
    from prefopt.data import collate_pairs, load_records, tokenize_pairs

    out = tmp_path / "rm"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, out, "steps=30", "lr=1e-2") + ["--algo", "reward"]) == 0
    model = load_reward_model(out)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples, _ = tokenize_pairs(load_records(str(pairs), "paired")[:6], tokenizer, 64, 48)
    with torch.no_grad():
        rewards = forward_rewards(model, collate_pairs(examples, tokenizer.pad_token_id))  # (12,)
    chosen, rejected = rewards[:6], rewards[6:]
    assert bool((chosen > rejected).all())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_after"]["eval_pref_accuracy"] == 1.0


def test_load_reward_model_rejects_other_runs(tiny_model_dir, pairs, tmp_path):
    from prefopt.core.heads import load_reward_model
    from prefopt.errors import PrefoptError

    out = tmp_path / "sft"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, out, "steps=1") + ["--algo", "sft"]) == 0
    with pytest.raises(PrefoptError, match="not a reward model"):
        load_reward_model(out)
