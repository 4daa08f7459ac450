"""A LoRA Linear's forward and backward as one autograd function: y = x W^T + bias + (x A^T)(s B)^T.

peft's ``lora.Linear`` runs the frozen layer, then ``lora_B(lora_A(dropout(x))) * scaling`` and adds it, and
under autocast casts the input again for the adapter: per layer and per direction a cast of the input, a
multiply and an add over the (tokens, out) output, each writing a fresh tensor, and autograd nodes for each.
On a CPU those element-wise passes cost a sizeable share of a LoRA step. Here the input is cast once (once for
all the layers that read it: q, k and v; gate and up), the update is added by the matmul itself (``addmm_``
into the frozen layer's output), and the backward is four matmuls and an ``addmm_``:

    forward   xa = x A^T (T, r)          y = x W^T + bias, then y += xa (s B)^T
    backward  g_b = dy (s B) (T, r)      dx = dy W, then dx += g_b A
              dA = g_b^T x               dB = s dy^T xa

The values are peft's (float32: to float rounding; under bf16 autocast the update is rounded once instead of
after each of its three operations). ``use_fused_lora_linears`` switches a model's plain LoRA Linears to this
forward, which also runs the reference forward (adapters disabled) as the frozen layer alone on the shared cast;
every case it does not cover (dropout, DoRA and other variants, several adapters, merged weights, a trained base
weight or bias) runs peft's own forward, decided at each call.
"""

from __future__ import annotations

import weakref

import torch
from peft.tuners.lora import Linear as PeftLoraLinear

# The last input cast to a compute dtype, (weakref to the input, its version, dtype, the cast): q, k and v (gate
# and up) take the same input, which is then cast once and saved for their backwards once. Dropped with the input.
_LAST_CAST: list = [None]


def _cast_once(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if x.dtype == dtype:
        return x
    if torch.compiler.is_compiling():  # the cache is a side effect a compiled graph cannot hold
        return x.to(dtype)
    held = _LAST_CAST[0]
    if held is not None and held[0]() is x and held[1] == x._version and held[2] == dtype:
        return held[3]
    cast = x.to(dtype)
    _LAST_CAST[0] = (weakref.ref(x, _forget), x._version, dtype, cast)
    return cast


def _forget(ref: weakref.ref) -> None:
    """The input behind ref is freed: drop its cast, unless a later input's has taken its place."""
    if _LAST_CAST[0] is not None and _LAST_CAST[0][0] is ref:
        _LAST_CAST[0] = None


class _LoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dtype: torch.dtype, out_dtype: torch.dtype):
        # x: (..., in); weight: (out, in) frozen; bias: (out,) frozen or None; lora_a: (r, in); lora_b: (out, r)
        with torch.autocast(x.device.type, enabled=False):
            xc = _cast_once(x, dtype).reshape(-1, x.shape[-1])  # (T, in)
            w = weight.to(dtype)  # (out, in): no copy when held in the compute dtype
            a = lora_a.to(dtype)  # (r, in)
            b = (lora_b * scaling).to(dtype)  # (out, r)
            xa = xc @ a.T  # (T, r)
            y = torch.nn.functional.linear(xc, w, None if bias is None else bias.to(dtype))  # (T, out)
            y.addmm_(xa, b.T)
        ctx.save_for_backward(xc, xa, w, a, b)
        ctx.scaling = scaling
        ctx.x_dtype, ctx.x_shape = x.dtype, x.shape
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return y.view(*x.shape[:-1], y.shape[-1]).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_y):  # grad_y: (..., out)
        xc, xa, w, a, b = ctx.saved_tensors
        dy = grad_y.reshape(-1, grad_y.shape[-1]).to(xc.dtype)  # (T, out)
        g_b = dy @ b  # (T, r): gradient of xa
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            dx = dy @ w  # (T, in)
            dx.addmm_(g_b, a)
            grad_x = dx.view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = (g_b.T @ xc).to(ctx.a_dtype)  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_b = (dy.T @ xa).to(ctx.b_dtype).mul_(ctx.scaling)  # (out, r)
        return grad_x, None, None, grad_a, grad_b, None, None, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear with the fused forward where it applies (see the module's docstring); everything else,
    its state, saving, merging and adapters, is peft's."""

    def _fused_adapter(self) -> str | None:
        """The one active adapter the fused forward can run, or None (then peft's forward runs)."""
        if self.disable_adapters or self.merged or self.fan_in_fan_out or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or name in getattr(self, "lora_magnitude_vector", {}):
            return None
        if not isinstance(self.lora_dropout[name], torch.nn.Identity) or not self._frozen_linear_base():
            return None
        return name

    def _frozen_linear_base(self) -> bool:
        """Whether the base layer is a plain Linear whose weight and bias are frozen."""
        base = self.get_base_layer()
        return type(base) is torch.nn.Linear and not base.weight.requires_grad and (
            base.bias is None or not base.bias.requires_grad)

    # Set on the q and k projections of models whose query and key go from them straight into RoPE, whose cos and
    # sin are float32: on a CPU such a layer returns its output in float32, so that RoPE multiplies float32 by
    # float32 instead of a bf16 tensor by a float32 one (the same products, as bf16 -> float32 is exact: but the
    # mixed-dtype kernel is several times slower on a CPU).
    float32_output = False

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            return super().forward(x, *args, **kwargs)
        name = self._fused_adapter()
        plain_base = self.disable_adapters and not self.merged and self._frozen_linear_base()  # the reference
        if name is None and not plain_base:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else base.weight.dtype
        out_dtype = torch.float32 if self.float32_output and device == "cpu" else dtype
        if name is None:  # the base layer alone, as autocast would run it (the same cast of x, the same product)
            tracked = torch.is_grad_enabled() and x.requires_grad  # the cast must then be in the graph: not shared
            with torch.autocast(device, enabled=False):
                xc = x.to(dtype) if tracked else _cast_once(x, dtype)
                bias = None if base.bias is None else base.bias.to(dtype)
                return torch.nn.functional.linear(xc, base.weight.to(dtype), bias).to(out_dtype)
        return _LoraLinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                         self.lora_B[name].weight, float(self.scaling[name]), dtype, out_dtype)


# Architectures whose attention applies RoPE directly to q_proj's and k_proj's outputs (no norm between).
ROPE_ON_PROJECTIONS = frozenset({"llama", "mistral", "qwen2"})


def use_fused_lora_linears(model) -> int:
    """Switch the model's plain LoRA Linears (peft's ``lora.Linear`` itself, not its quantized or other
    subclasses) to FusedLoraLinear; returns how many. The q and k projections of ROPE_ON_PROJECTIONS models
    return float32 on a CPU (see FusedLoraLinear.float32_output)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rope_direct = getattr(getattr(base, "config", None), "model_type", None) in ROPE_ON_PROJECTIONS
    switched = 0
    for name, module in model.named_modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
            module.float32_output = rope_direct and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj")
            switched += 1
    return switched
