"""A bf16 LoRA run holds its adapted layers' frozen weights in bf16 (prefopt.core.models.hold_frozen_lora_bases_in)."""

import pytest
import torch
from helpers import lora_logps_and_grads, perturb_lora

from prefopt.core import registry
from prefopt.core.models import LoraSettings, hold_frozen_lora_bases_in, load_model, merged_copy
from prefopt.training.config import RunConfig
from prefopt.training.policy import load_policy


def _dtypes(model) -> dict[str, torch.dtype]:
    return {n: p.dtype for n, p in model.named_parameters()}


def test_only_the_frozen_bases_of_adapted_layers_are_converted(tiny_model_dir):
    model = load_model(str(tiny_model_dir), adapter="lora")
    converted = hold_frozen_lora_bases_in(model, torch.bfloat16)
    dtypes = _dtypes(model)
    bases = [n for n in dtypes if n.endswith("base_layer.weight")]
    assert converted == len(bases) > 0
    assert all(dtypes[n] == torch.bfloat16 for n in bases)
    assert all(d == torch.float32 for n, d in dtypes.items() if n not in bases)  # LoRA, norms, embedding
    assert hold_frozen_lora_bases_in(model, torch.bfloat16) == 0  # nothing left to convert


def test_under_autocast_the_log_probs_and_lora_gradients_are_the_same_bits(tiny_model_dir):
    results = [lora_logps_and_grads(tiny_model_dir, prepare, autocast=True)
               for prepare in (None, lambda model: hold_frozen_lora_bases_in(model, torch.bfloat16))]
    (plain, plain_grads), (held, held_grads) = results
    assert torch.equal(plain, held)
    assert plain_grads.keys() == held_grads.keys() and len(plain_grads) > 0
    assert all(torch.equal(plain_grads[n], held_grads[n]) for n in plain_grads)


@pytest.mark.parametrize(("adapter", "precision", "sharded", "held"), [
    ("lora", "bf16", False, True), ("lora", "fp32", False, False), ("lora", "bf16", True, False),
    ("full", "bf16", False, False),
])  # fmt: skip
def test_load_policy_holds_them_in_bf16_for_unsharded_bf16_lora_runs(tiny_model_dir, adapter, precision, sharded,
                                                                     held):
    run = RunConfig(model=str(tiny_model_dir), adapter=adapter, precision=precision)
    model = load_policy(run, registry.get("dpo"), "cpu", precision, sharded=sharded)
    assert (torch.bfloat16 in _dtypes(model).values()) == held


def test_a_merged_model_is_the_held_bases_in_float32_plus_the_update(tiny_model_dir):
    model = load_model(str(tiny_model_dir), adapter="lora")
    perturb_lora(model)
    expected = merged_copy(model).model.layers[0].self_attn.q_proj.weight  # float32 base + update
    hold_frozen_lora_bases_in(model, torch.bfloat16)
    merged = merged_copy(model)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    lora = model.base_model.model.model.layers[0].self_attn.q_proj
    update = lora.get_delta_weight("default")  # scale * B @ A, float32
    weight = merged.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(weight, lora.base_layer.weight.float() + update)
    assert (weight - expected).abs().max() <= expected.abs().max() * 2**-8  # bf16 rounding of the base only


def test_an_adapted_output_layer_tied_to_the_embedding_stays_float32(tiny_model_dir):
    model = load_model(str(tiny_model_dir), adapter="lora", lora=LoraSettings(target_modules="q_proj,lm_head"))
    embedding = model.get_input_embeddings().weight
    assert model.base_model.model.lm_head.get_base_layer().weight is embedding  # the tiny model ties them
    assert hold_frozen_lora_bases_in(model, torch.bfloat16) == 2  # the two layers' q_proj
    assert embedding.dtype == torch.float32
