"""Hugging Face Trainer / trl option names, read as prefopt's.

A user coming from trl writes ``learning_rate=1e-5`` or ``--per_device_train_batch_size 4``; prefopt reads it as
its own option (``lr``, ``batch_size``) and says so in one line, so the user learns the name without a failed run.
Names prefopt has no counterpart for get a hint instead of a bare "unknown option".
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from prefopt.errors import PrefoptError


def _bf16(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        value = value.strip().lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise PrefoptError(f"option 'bf16': expected true or false, got {value!r}")
    return "bf16" if value else "fp32"


# HF / trl name -> (prefopt name, how the value converts; None: as it is)
ALIASES: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "learning_rate": ("lr", None),
    "max_steps": ("steps", None),
    "num_train_epochs": ("epochs", None),
    "per_device_train_batch_size": ("batch_size", None),  # x processes: prefopt's batch is the global one
    "train_batch_size": ("batch_size", None),
    "gradient_accumulation_steps": ("grad_accum", None),
    "lr_scheduler_type": ("schedule", None),
    "bf16": ("precision", _bf16),
    "save_steps": ("save_every", None),
    "eval_steps": ("eval_every", None),
    "model_name_or_path": ("model", None),
    "dataset_name": ("data", None),
    "max_completion_length": ("max_new_tokens", None),  # online algorithms' rollout length
}

# HF / trl names without a prefopt counterpart: what to use instead.
HINTS = {
    "fp16": "prefopt trains in precision=bf16 or fp32 (no fp16)",
    "tf32": "prefopt chooses the matmul precision itself",
    "logging_steps": "every step is logged to metrics.jsonl",
    "eval_strategy": "use eval_every=N (0: before and after training only)",
    "evaluation_strategy": "use eval_every=N (0: before and after training only)",
    "save_strategy": "use save_every=N",
    "optim": "prefopt uses AdamW (weight_decay=, max_grad_norm=)",
    "per_device_eval_batch_size": "evaluation uses batch_size",
    "warmup_steps": "use warmup_ratio (a fraction of the steps)",
    "deepspeed": "use --num-processes N (data-parallel) or --fsdp",
    "use_peft": "adapter=lora is the default (adapter=full trains every weight)",
    "load_in_4bit": "use adapter=qlora",
}


def translate(values: dict, known: set[str], source: str, processes: int = 1, notify: bool = True) -> dict:
    """values with HF / trl names replaced by prefopt's (``known``: prefopt's option names, which win when a
    name is both). A name given both ways is an error; an unknown HF name with a hint is an error naming it."""
    out: dict = {}
    notes = []
    for key, value in values.items():
        if not isinstance(key, str) or key in known or key not in ALIASES:
            if isinstance(key, str) and key not in known and key in HINTS:
                raise PrefoptError(f"{source}: unknown option '{key}' (a Hugging Face name): {HINTS[key]}")
            out[key] = value
            continue
        name, convert = ALIASES[key]
        if name in values:
            raise PrefoptError(f"{source}: '{key}' and '{name}' set the same option; give one (prefopt's: {name})")
        if name not in known:  # an algorithm option this algorithm does not have (max_new_tokens of offline ones)
            out[key] = value
            continue
        converted = convert(value) if convert else value
        if key == "per_device_train_batch_size" and processes > 1:
            converted = _times(converted, processes, key)
        out[name] = converted
        notes.append(f"{key}={value} read as {name}={converted}")
    if notes and notify:
        print(f"prefopt: {'; '.join(notes)} (prefopt's names)", file=sys.stderr)
    return out


def _times(value: Any, processes: int, key: str) -> Any:
    try:
        return int(value) * processes
    except (TypeError, ValueError):
        return value  # the option parser reports the bad value under batch_size


def flags_to_options(tokens: list[str], value_flags: set[str], switch_flags: set[str]) -> list[str]:
    """Command-line tokens with ``--name value`` / ``--name=value`` flags that are not prefopt's own
    (``value_flags`` take a value, ``switch_flags`` do not) turned into ``name=value`` options (``--name`` alone,
    or before another flag, is ``name=true``). Dashes in a name become underscores: ``--learning-rate 1e-5`` is
    ``learning_rate=1e-5``."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag = token.split("=", 1)[0]
        if not token.startswith("--") or flag in value_flags | switch_flags or token == "--":
            out.append(token)
            if flag in value_flags and "=" not in token and i + 1 < len(tokens):
                out.append(tokens[i + 1])  # the flag's own value, even one that looks like a flag
                i += 1
            i += 1
            continue
        name = flag[2:].replace("-", "_")
        if "=" in token:
            value = token.split("=", 1)[1]
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--") and "=" not in tokens[i + 1]:
            value = tokens[i + 1]
            i += 1
        else:
            value = "true"
        out.append(f"{name}={value}")
        i += 1
    return out
