"""gradient_checkpointing=true changes memory and time, never the numbers.

One real training step (prefopt's Trainer: forward, reference, backward,
clipping, AdamW) with and without activation checkpointing, from the same
start on the same batch, in fp32: same loss, same gradients, same weights
after the update. LoRA B starts at zero (then every LoRA A gradient is zero);
it is given values first so that both LoRA matrices are checked.
"""

import json
from functools import partial

import pytest
import torch
from helpers import perturb_lora, read_metrics, run_cli, tiny_run_args, write_learnable_pairs
from torch.testing import assert_close

from prefopt.core import registry
from prefopt.core.models import autocast, load_tokenizer
from prefopt.core.reference import build_reference, resolve_reference_mode
from prefopt.training.config import RunConfig
from prefopt.training.inputs import inputs_for
from prefopt.training.offline import Trainer, prepare_data
from prefopt.training.policy import load_policy

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def pairs(tmp_path):
    return write_learnable_pairs(tmp_path / "pairs.jsonl", n=24)


def _count_recomputes(model) -> dict:
    """Wrap each checkpointed layer's checkpoint function with a call counter."""
    calls = {"n": 0, "layers": 0}
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            inner = module._gradient_checkpointing_func

            def counted(*args, _inner=inner, **kwargs):
                calls["n"] += 1
                return _inner(*args, **kwargs)

            module._gradient_checkpointing_func = counted
            calls["layers"] += 1
    return calls


def one_step(model_dir, data, tmp_path, algo: str, adapter: str, checkpointing: bool) -> dict:
    """Build what `prefopt run` builds, take one optimizer step; return loss, gradients, weights."""
    run = RunConfig(model=str(model_dir), data=str(data), adapter=adapter, precision="fp32", batch_size=4,
                    eval_size=4, max_length=64, max_prompt_length=48, lora_r=8, lora_alpha=16, lr=1e-2,
                    warmup_ratio=0.0, schedule="constant", gradient_checkpointing=checkpointing, progress=False)
    algo_cls = registry.get(algo)
    algorithm = algo_cls(algo_cls.Config())
    inputs = inputs_for(algorithm)
    tokenizer = load_tokenizer(run.model)
    prepared = prepare_data(run, inputs, tokenizer)
    model = load_policy(run, algorithm, "cpu", "fp32")
    calls = _count_recomputes(model)
    assert (calls["layers"] > 0) == checkpointing
    lm = model.lm if hasattr(model, "lm") else model
    if adapter == "lora":
        perturb_lora(lm)
    reference = None
    if algorithm.needs_reference:
        mode = resolve_reference_mode(run.reference, run.adapter)
        reference = build_reference(
            mode, model, run.adapter, examples=prepared.examples,
            collate=partial(inputs.collate, pad_id=tokenizer.pad_token_id), batch_size=run.batch_size,
            fingerprint="unused", autocast=partial(autocast, "fp32", "cpu"), progress=False,
        )
    trainer = Trainer(algorithm, run, model, tokenizer, prepared, reference, "cpu", "fp32")
    row = trainer.train_step(prepared.train_ids[:4])
    assert (calls["n"] > 0) == checkpointing  # the training forward really went through torch.utils.checkpoint
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return {
        "loss": row["loss"],
        "grad_norm": row["grad_norm"],
        "grads": {n: p.grad.detach().clone() for n, p in named},
        "weights": {n: p.detach().clone() for n, p in named},
    }


@pytest.mark.parametrize("algo, adapter", [("dpo", "lora"), ("dpo", "full"), ("reward", "lora")])
def test_checkpointing_gives_the_same_step(tiny_model_dir, pairs, tmp_path, algo, adapter):
    plain = one_step(tiny_model_dir, pairs, tmp_path, algo, adapter, checkpointing=False)
    ckpt = one_step(tiny_model_dir, pairs, tmp_path, algo, adapter, checkpointing=True)
    assert ckpt["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], abs=1e-5)
    assert plain["grads"].keys() == ckpt["grads"].keys()
    nonzero = 0
    for name, grad in plain["grads"].items():
        assert_close(ckpt["grads"][name], grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
        assert_close(ckpt["weights"][name], plain["weights"][name], **TOL, msg=lambda m, name=name: f"{name}: {m}")
        nonzero += bool(grad.abs().sum() > 0)
    if adapter == "lora":  # not vacuous: both LoRA matrices of every layer got a gradient
        lora = [n for n in plain["grads"] if "lora_" in n]
        assert lora and all(plain["grads"][n].abs().sum() > 0 for n in lora)
    assert nonzero > 0


def test_checkpointed_policy_never_uses_the_kv_cache(tiny_model_dir, pairs):
    run = RunConfig(model=str(tiny_model_dir), data=str(pairs), gradient_checkpointing=True)
    model = load_policy(run, registry.get("dpo"), "cpu", "fp32")
    assert model.get_base_model().config.use_cache is False
    seen = []
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("use_cache")), with_kwargs=True
    )
    model.train()
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    hook.remove()
    assert seen and not any(seen)


@pytest.mark.e2e
def test_run_with_gradient_checkpointing_end_to_end(tiny_model_dir, tmp_path, capsys):
    data = write_learnable_pairs(tmp_path / "pairs.jsonl")
    losses = {}
    for flag in ("false", "true"):
        out = tmp_path / f"gc-{flag}"
        code = run_cli(tiny_run_args(tiny_model_dir, data, out, "steps=3", "lr=1e-2", f"gradient_checkpointing={flag}"))
        assert code == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 3 and (out / "adapter" / "adapter_config.json").exists()
        assert f"gradient_checkpointing: {flag}" in (out / "config.yaml").read_text()
        losses[flag] = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
