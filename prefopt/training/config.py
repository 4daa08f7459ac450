"""Typed configuration: defaults < YAML file < command-line key=value.

Run options (:class:`RunConfig`) and the chosen algorithm's own ``Config`` share
one flat namespace, so ``beta=0.2`` and ``lr=1e-4`` are written the same way.
Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from prefopt.errors import PrefoptError


@dataclass
class RunConfig:
    """Options shared by every algorithm."""

    model: str = "smollm2-135m-instruct"  # hub id, local HF folder, .gguf file, or the bundled default
    data: str = "builtin:qa"  # data file/folder, builtin:<task>, or a hub dataset name
    output_dir: str = ""  # empty: runs/<algo>-<date>-<time>
    adapter: Literal["lora", "qlora", "full"] = "lora"  # lora | qlora (4-bit base + LoRA) | full
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_target_modules: str = "all-linear"  # or comma-separated module names
    reference: Literal["auto", "adapter", "copy", "precomputed"] = "auto"  # auto | adapter (disabled) | copy (frozen) | precomputed (cached)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto (bf16 autocast where supported) | bf16 | fp32
    steps: int = 60  # optimizer steps
    batch_size: int = 8  # pairs (or examples) per micro-batch; prompts per step for online methods
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size * grad_accum)
    lr: float = 2e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # cosine | linear | constant, after warm-up
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    max_length: int = 256  # prompt + response tokens
    max_prompt_length: int = 128  # longer prompts keep their end
    eval_size: int = 64  # held-out pairs (a fixed random split of the data)
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    save_every: int = 0  # checkpoint every N steps for --resume (0: none)
    seed: int = 0  # one seed for data order, initialisation and dropout
    merge: bool = False  # also save the LoRA-merged full model
    progress: bool = True  # show a progress bar


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) `value` to the annotated type `tp`, or raise."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise PrefoptError(f"option '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except PrefoptError:
                continue
        raise PrefoptError(f"option '{key}': expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise PrefoptError(f"option '{key}': expected a list, got {value!r}")
        return origin(coerce(v, item, key) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if math.isnan(number):  # NaN passes every comparison-based range check downstream
                raise PrefoptError(f"option '{key}': expected a number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(value, tp):
        return value
    raise PrefoptError(f"option '{key}': expected {_type_name(tp)}, got {value!r}")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict; values are read as YAML scalars (1e-4, true, [a, b])."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise PrefoptError(f"expected key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""  # "1e-4" stays a str; coerce() reads it
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise PrefoptError(f"config file '{path}' does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PrefoptError(f"config file '{path}': invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise PrefoptError(f"config file '{path}': expected a mapping of option: value")
    return loaded


def build(cls: type, values: dict[str, Any]):
    """Instantiate dataclass `cls` from already-checked values."""
    types_ = field_types(cls)
    return cls(**{k: coerce(v, types_[k], k) for k, v in values.items()})


def split_options(values: dict[str, Any], algo_config_cls: type, source: str) -> tuple[RunConfig, Any]:
    """Route each key to RunConfig or the algorithm's Config; unknown keys are errors."""
    run_keys = set(field_types(RunConfig))
    algo_keys = set(field_types(algo_config_cls))
    clash = run_keys & algo_keys
    if clash:
        raise PrefoptError(f"algorithm option(s) {sorted(clash)} clash with run options of the same name")
    run_values, algo_values = {}, {}
    for key, value in values.items():
        if key in run_keys:
            run_values[key] = value
        elif key in algo_keys:
            algo_values[key] = value
        else:
            close = difflib.get_close_matches(key, sorted(run_keys | algo_keys), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PrefoptError(f"{source}: unknown option '{key}'{hint}")
    return build(RunConfig, run_values), build(algo_config_cls, algo_values)


def describe_options(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, comment) for each field of a config dataclass, read from its source.

    The one-line comment after each field is its documentation, so help text
    and code cannot drift apart.
    """
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = ""
    comments = dict(re.findall(r"^\s*(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE))
    out = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        out.append((f.name, repr(default) if isinstance(default, str) else str(default), comments.get(f.name, "")))
    return out


def format_options(cls: type, indent: str = "  ") -> str:
    rows = describe_options(cls)
    if not rows:
        return f"{indent}(none)"
    width = max(len(f"{n}={d}") for n, d, _ in rows)
    return "\n".join(f"{indent}{f'{n}={d}':<{width}}  {c}".rstrip() for n, d, c in rows)


def as_flat_dict(algo: str, run: RunConfig, algo_config: Any) -> dict[str, Any]:
    """The resolved config as saved next to the outputs (loadable with --config)."""
    return {"algo": algo, **dataclasses.asdict(run), **dataclasses.asdict(algo_config)}
