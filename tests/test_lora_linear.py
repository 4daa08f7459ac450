"""The fused LoRA Linear (prefopt.core.lora_linear): peft's values, fewer passes, peft's forward where it does not apply."""

import pytest
import torch
from helpers import lora_logps_and_grads, perturb_lora, tiny_pair_batch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear

from prefopt.core import logprobs, registry
from prefopt.core.lora_linear import FusedLoraLinear, _LoraLinearFunction, use_fused_lora_linears
from prefopt.core.models import load_model, merged_copy
from prefopt.training.config import RunConfig
from prefopt.training.policy import load_policy


class _Two(torch.nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.up = torch.nn.Linear(12, 20, bias=bias)
        self.down = torch.nn.Linear(20, 12, bias=bias)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _peft_pair(bias: bool = False, dropout: float = 0.0):
    """(peft model, the same weights with fused Linears), LoRA B non-zero."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = get_peft_model(_Two(bias), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                       target_modules=["up", "down"]))
        perturb_lora(model)
        models.append(model)
    assert use_fused_lora_linears(models[1]) == 2
    return models


def _run(model, x, autocast: bool):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return y.detach().float(), x.grad, grads


@pytest.mark.parametrize("bias", [False, True])
def test_float32_values_and_gradients_are_peft_s(bias):
    plain, fused = _peft_pair(bias)
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(2))
    y0, dx0, g0 = _run(plain, x, autocast=False)
    y1, dx1, g1 = _run(fused, x, autocast=False)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) == 4  # A and B of both layers
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_values_and_gradients_agree_to_bf16_rounding():
    plain, fused = _peft_pair()
    x = torch.randn(4, 7, 12, generator=torch.Generator().manual_seed(3))
    y0, dx0, g0 = _run(plain, x, autocast=True)
    y1, dx1, g1 = _run(fused, x, autocast=True)
    assert y1.dtype == y0.dtype
    for a, b in [(y1, y0), (dx1, dx0), *((g1[n], g0[n]) for n in g0)]:
        assert a.dtype == b.dtype
        assert (a - b).abs().max() <= 0.02 * b.abs().max()  # a few bf16 roundings apart


def test_the_backward_by_hand():
    """y = x W^T + bias + s (x A^T) B^T: each gradient against its formula, in float64."""
    g = torch.Generator().manual_seed(4)
    x, w, bias = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g,
                                                                                  dtype=torch.float64), None
    a = torch.randn(2, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x.requires_grad_(), a.requires_grad_(), b.requires_grad_()
    dy = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = _LoraLinearFunction.apply(x, w, bias, a, b, 0.5, torch.float64, torch.float64)
    torch.testing.assert_close(y, x @ w.T + 0.5 * (x @ a.T) @ b.T)
    y.backward(dy)
    torch.testing.assert_close(x.grad, dy @ w + 0.5 * (dy @ b) @ a)
    torch.testing.assert_close(a.grad, 0.5 * (dy @ b).T @ x)
    torch.testing.assert_close(b.grad, 0.5 * dy.T @ (x @ a.T))
    assert torch.autograd.gradcheck(
        lambda x, a, b: _LoraLinearFunction.apply(x, w, bias, a, b, 0.5, torch.float64, torch.float64),
        (x.detach().requires_grad_(), a.detach().requires_grad_(), b.detach().requires_grad_()))


def test_peft_s_forward_runs_where_the_fused_one_does_not_apply():
    plain, fused = _peft_pair(dropout=0.3)  # dropout: peft's forward, the same random mask from the same seed
    x = torch.randn(2, 12, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(9)
    expected = plain(x)
    torch.manual_seed(9)
    assert torch.equal(fused(x), expected)

    plain, fused = _peft_pair()
    with plain.disable_adapter(), fused.disable_adapter():  # the reference forward: the base alone
        assert torch.equal(fused(x), plain(x))
        assert torch.equal(fused(x), plain.base_model.model(x))
    layer = fused.base_model.model.up
    layer.merge()
    assert layer._fused_adapter() is None  # merged weights: peft's forward
    layer.unmerge()
    assert layer._fused_adapter() == "default"


def test_only_plain_lora_linears_switch_and_saving_and_merging_are_peft_s(tiny_model_dir):
    model = load_model(str(tiny_model_dir), adapter="lora")
    perturb_lora(model)
    keys = set(model.state_dict())
    expected = merged_copy(model).model.layers[0].mlp.up_proj.weight
    plain = sum(type(m) is PeftLoraLinear for m in model.modules())
    assert use_fused_lora_linears(model) == plain > 0
    assert sum(type(m) is FusedLoraLinear for m in model.modules()) == plain
    assert use_fused_lora_linears(model) == 0
    assert set(model.state_dict()) == keys
    assert torch.equal(merged_copy(model).model.layers[0].mlp.up_proj.weight, expected)


def test_a_model_s_log_probs_and_lora_gradients_are_unchanged(tiny_model_dir):
    results = [lora_logps_and_grads(tiny_model_dir, prepare) for prepare in (None, use_fused_lora_linears)]
    (logps0, g0), (logps1, g1) = results
    torch.testing.assert_close(logps1, logps0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("adapter", "sharded", "fused"), [("lora", False, True), ("lora", True, False),
                                                            ("full", False, False)])
def test_load_policy_fuses_unsharded_lora_runs(tiny_model_dir, adapter, sharded, fused):
    run = RunConfig(model=str(tiny_model_dir), adapter=adapter, precision="fp32")
    model = load_policy(run, registry.get("dpo"), "cpu", "fp32", sharded=sharded)
    assert any(type(m) is FusedLoraLinear for m in model.modules()) == fused


def test_layers_reading_the_same_input_share_one_cast_until_it_changes_or_is_freed():
    from prefopt.core import lora_linear

    _plain, fused = _peft_pair()
    up = fused.base_model.model.up
    x = torch.randn(3, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = up(x), up(x)
    saved = [out.grad_fn.saved_tensors[0] for out in (first, second)]  # the bf16 input each saved
    assert saved[0].dtype == torch.bfloat16 and saved[0].data_ptr() == saved[1].data_ptr()
    with torch.no_grad():
        x.mul_(2)  # changed in place: cast again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        third = up(x)
    assert third.grad_fn.saved_tensors[0].data_ptr() != saved[0].data_ptr()
    torch.testing.assert_close(third.float(), (2 * first).float(), rtol=0.02, atol=0.02)
    assert lora_linear._LAST_CAST[0] is not None
    del x, first, second, third, saved
    assert lora_linear._LAST_CAST[0] is None  # the input freed: its cast is not held


def test_a_compiled_model_runs_the_fused_forward_under_bf16_autocast():
    # torch.compile cannot trace the shared-cast cache (a module-level side effect): compiled, each layer casts
    # its own input, with the same values and gradients as the eager fused forward.
    from prefopt.core import lora_linear

    _plain, fused = _peft_pair()
    x = torch.randn(4, 7, 12, generator=torch.Generator().manual_seed(3))
    y0, dx0, g0 = _run(fused, x, autocast=True)
    for p in fused.parameters():
        p.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="aot_eager", dynamic=False)
    lora_linear._LAST_CAST[0] = None
    y1, dx1, g1 = _run(compiled, x, autocast=True)
    assert lora_linear._LAST_CAST[0] is None  # the compiled forward kept nothing in the cache
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=0)
    assert len(g1) == len(g0) == 4
    for name in g0:
        torch.testing.assert_close(g1[f"_orig_mod.{name}"], g0[name], rtol=0, atol=0)


def test_the_reference_forward_under_autocast_is_the_base_layer_s_bits():
    plain, fused = _peft_pair(bias=True)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(6))
    with plain.disable_adapter(), fused.disable_adapter(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x), plain(x))


def test_rope_fed_projections_return_float32_on_a_cpu_with_the_same_log_probs(tiny_model_dir):
    batch = tiny_pair_batch()
    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir), adapter="lora")
    perturb_lora(model)
    use_fused_lora_linears(model)
    assert model.get_base_model().config.model_type == "llama"
    flagged = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if getattr(m, "float32_output", False)}
    assert flagged == {"q_proj", "k_proj"}
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q_proj(torch.randn(2, q_proj.in_features)).dtype == torch.float32
    projections = [m for n, m in model.named_modules() if getattr(m, "float32_output", False)]
    results = []
    for float32_output in (False, True):
        for m in projections:
            m.float32_output = float32_output
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, _ = logprobs.forward_token_logps(model, batch)  # (N, K)
            with model.disable_adapter():
                reference, _ = logprobs.forward_token_logps(model, batch)
        logps.sum().backward()
        results.append((logps.detach(), reference, {n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.requires_grad}))
    (logps0, ref0, g0), (logps1, ref1, g1) = results
    assert torch.equal(logps1, logps0) and torch.equal(ref1, ref0)  # bf16 -> float32 is exact: the same products
    for name in g0:  # the query/key gradients are summed in float32 instead of bf16: rounding apart
        assert (g1[name] - g0[name]).abs().max() <= 0.02 * g0[name].abs().max()


def test_a_gradient_through_the_disabled_adapters_reaches_the_input():
    plain, fused = _peft_pair()
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(7))
    grads = []
    for model in (plain, fused):
        xi = x.clone().requires_grad_()
        with model.disable_adapter(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(xi).float().sum().backward()
        grads.append(xi.grad)
    assert grads[1] is not None and torch.equal(grads[1], grads[0])
