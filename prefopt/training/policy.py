"""The model a run trains, built the same way for every algorithm from the run options."""

from __future__ import annotations

import torch

from prefopt.core.algorithm import Algorithm
from prefopt.core.checkpoint_memory import move_off_checkpoint_files
from prefopt.core.heads import attach_scalar_head
from prefopt.core.logprobs import share_prompt_support
from prefopt.core.models import LoraSettings, hold_frozen_lora_bases_in, load_model
from prefopt.errors import PrefoptError
from prefopt.training.config import RunConfig


def check_share_prompt(run: RunConfig, model) -> None:
    """share_prompt=true on a loaded model that cannot run prompts once (``share_prompt_support``): a one-line
    error. Checked after loading, as support depends on the model's attention and output layer."""
    if run.share_prompt is True and (why := share_prompt_support(model)) is not None:
        raise PrefoptError(f"option 'share_prompt': {run.model} cannot run prompts once: {why} "
                           "(leave it at auto or false)")


def load_policy(run: RunConfig, algorithm: Algorithm, device, precision, sharded: bool = False):
    """The model to train: LoRA/QLoRA/full as configured, with a scalar head if the algorithm declares one.

    With ``run.gradient_checkpointing`` every decoder layer of the HF model
    (under the peft wrapper, and under the scalar head, which runs the same
    layers) keeps only its input in the forward and recomputes the rest in the
    backward: non-reentrant ``torch.utils.checkpoint``, so the gradients are the
    ones without it (dropout masks are replayed from the saved RNG state). It
    acts in train mode only; evaluation and reference forwards run as before.

    A bf16 LoRA run holds the frozen weights of its adapted layers in bf16 (``hold_frozen_lora_bases_in``: the
    values autocast would cast them to in every forward), except when ``sharded`` (FSDP shards keep one dtype).
    An unsharded LoRA run's adapted Linears run forward and backward as one function each
    (``prefopt.core.lora_linear``: the same values, fewer passes over the activations).
    """
    lora = LoraSettings(run.lora_r, run.lora_alpha, run.lora_dropout, run.lora_target_modules)
    torch.manual_seed(run.seed)  # LoRA and head initialisation
    model = load_model(run.model, adapter=run.adapter, lora=lora, device=device, precision=precision)
    if run.adapter == "lora" and not sharded:
        from prefopt.core.lora_linear import use_fused_lora_linears  # imports peft: only for LoRA runs

        if precision == "bf16":
            hold_frozen_lora_bases_in(model, torch.bfloat16)
        use_fused_lora_linears(model)
    move_off_checkpoint_files(model)  # no weight left in the file's map: its pages would stay resident beside them
    if run.gradient_checkpointing:
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        kwargs = {"use_reentrant": False}
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name; the old one warns
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # A frozen base gives the first checkpointed layer an input that needs no grad; the reentrant variant
        # would then drop the LoRA gradients of that segment. Non-reentrant does not, but an input that requires
        # grad is what every variant expects (transformers 5 already adds this hook; older versions do not).
        hooked = getattr(hf, "_require_grads_hooks", None) or getattr(hf, "_require_grads_hook", None)
        if hf is not model and not hooked:
            hf.enable_input_require_grads()
        hf.config.use_cache = False  # no KV cache in training forwards (they also pass use_cache=False)
    return attach_scalar_head(model) if algorithm.head == "scalar" else model
