"""Typed configuration: defaults < YAML file < command-line key=value.

Run options (:class:`RunConfig`) and the chosen algorithm's own ``Config`` share
one flat namespace, so ``beta=0.2`` and ``lr=1e-4`` are written the same way.
Unknown keys, values of the wrong type and values out of range
(:func:`check_ranges`, run when a RunConfig is made, so before anything is
written) are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from prefopt.errors import PrefoptError, first_line


@dataclass
class RunConfig:
    """Options shared by every algorithm."""

    model: str = "smollm2-135m-instruct"  # hub id, local HF folder, .gguf file, or the bundled default
    data: str = "builtin:qa"  # data file/folder, builtin:<task>, or a hub dataset name
    eval_data: str = ""  # your own held-out data (same kinds as data); replaces the eval_size split
    columns: str = ""  # rename data columns first, e.g. question:prompt,response_j:chosen,response_k:rejected
    output_dir: str = ""  # empty: runs/<algo>-<date>-<time>
    adapter: Literal["lora", "qlora", "full"] = "lora"  # lora | qlora (4-bit base + LoRA) | full
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_target_modules: str = "all-linear"  # or comma-separated module names
    reference: Literal["auto", "adapter", "copy", "precomputed"] = "auto"  # auto | adapter (disabled) | copy (frozen) | precomputed (cached)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto (bf16 autocast where supported) | bf16 | fp32
    steps: int = 60  # optimizer steps
    epochs: float = 0.0  # passes over the training data; when > 0 it sets steps (trl: num_train_epochs)
    batch_size: int = 8  # pairs (or examples) per micro-batch; prompts per step for online methods
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size * grad_accum)
    lr: float = 2e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # cosine | linear | constant, after warm-up
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    divergence_factor: float = 0.0  # stop when the grad norm passes this x the first step's, or is 0 with loss > 0 (0: off)
    padding_free: bool | Literal["auto"] = "auto"  # pack a batch's rows into one sequence, no padding (offline log-prob objectives); auto: true with flash-attention on CUDA, where it is faster; false also keeps a CPU run's shared-prompt rows padded
    share_prompt: bool | Literal["auto"] = "auto"  # run each pair's prompt once for both replies (offline pair objectives, the same values); auto: true on a CPU, where it is faster
    pad_to_multiple_of: int = 1  # widen each batch's padded length to a multiple of this (as trl): fewer distinct shapes (offline objectives); on a GPU each new length costs cuDNN attention a plan (docs/speed.md)
    release_host_memory: bool | Literal["auto"] = "auto"  # give a freed tensor's memory (4 MiB and up) back to the system at once (glibc): lower peak RSS, slower steps; auto: on for CPU runs (docs/speed.md)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    max_length: int = 256  # prompt + response tokens
    max_prompt_length: int = 128  # longer prompts keep their end
    chat_template: str = "auto"  # auto (as trl: message lists templated, plain strings raw) | model | none | template file
    long_prompts: Literal["truncate", "drop", "error"] = "truncate"  # prompts longer than max_length: keep their end (as trl) | leave the row out | stop
    eval_size: int = 64  # held-out pairs (a fixed random split of the data)
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    save_every: int = 0  # checkpoint every N steps for --resume (0: none)
    seed: int = 0  # one seed for data order, initialisation and dropout
    merge: bool = False  # also save the LoRA-merged full model
    save_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # dtype of the merged model (auto: the training precision)
    push_to_hub: bool = False  # upload the merged model (else the adapter or full model) to hub_model_id
    hub_model_id: str = ""  # owner/name on the Hugging Face Hub, for push_to_hub
    hub_private: bool = False  # create the hub repository private
    progress: bool = True  # show a progress bar
    report_to: str = "none"  # experiment trackers, comma-separated: tensorboard, wandb, mlflow, trackio (or none)

    def __post_init__(self) -> None:
        check_ranges(self)


SEED_MAX = 2**32 - 1  # seeds derived from it (seed * 1_000_003 + step) stay within a torch generator's 64 bits


def check_ranges(run: RunConfig) -> None:
    """Each run option within its range, or one PrefoptError naming it (NaN fails every check).

    max_prompt_length may exceed max_length: the prompt budget is min(max_prompt_length,
    max_length - 1) (see prefopt.data.tokenize), so max_length=64 alone is a valid setting.
    """
    from prefopt.core.algorithm import check_at_least, check_finite, check_in_range, check_nonnegative

    for option in ("steps", "batch_size", "grad_accum", "lora_r", "lora_alpha"):
        check_at_least(option, getattr(run, option), 1)
    for option in ("eval_size", "eval_every", "save_every"):  # 0: none held out / only at the ends / no checkpoints
        check_at_least(option, getattr(run, option), 0)
    check_at_least("max_length", run.max_length, 2)  # a prompt token and a response token
    check_at_least("max_prompt_length", run.max_prompt_length, 1)
    check_in_range("pad_to_multiple_of", run.pad_to_multiple_of, 1, 65536)
    # lr=0 is a run that leaves the model as it is (a baseline); max_grad_norm=0 turns clipping off
    for option in ("lr", "weight_decay", "max_grad_norm", "divergence_factor", "epochs"):
        check_finite(option, getattr(run, option))
        check_nonnegative(option, getattr(run, option))
    check_in_range("warmup_ratio", run.warmup_ratio, 0, 1)
    check_in_range("lora_dropout", run.lora_dropout, 0, 1, include_high=False)
    check_in_range("seed", run.seed, 0, SEED_MAX)
    from prefopt.training.tracking import parse_report_to

    parse_report_to(run.report_to)  # an unknown or uninstalled tracker stops the run before anything is written
    from prefopt.training.chat_template import check_option
    from prefopt.training.outputs import check_push

    check_option(run.chat_template)
    check_push({"push_to_hub": run.push_to_hub, "hub_model_id": run.hub_model_id, "hub_private": run.hub_private})
    if run.save_dtype != "auto" and not (run.merge and run.adapter in ("lora", "qlora")):
        raise PrefoptError(f"option 'save_dtype': sets the dtype of the merged model, which only merge=true with a "
                           f"LoRA/QLoRA adapter saves (got merge={str(run.merge).lower()}, adapter={run.adapter})")


def _clip(text: str, limit: int = 60) -> str:
    """Text from a command line or config file, cut short for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 4, 4, 60, 60, 40


def _shown(value: Any) -> str:
    """A value from a command line or config file as an error message shows it. reprlib bounds the work: YAML
    aliases can make a small file hold a list whose full repr has billions of items."""
    return _clip(_REPR.repr(value))


MAX_YAML_NESTING = 100  # PyYAML's scanner slows down with the square of the [ / { nesting; options nest 2 deep
_FLOW_START = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)
_FLOW_END = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)


def _too_deep(text: str) -> bool:
    """Whether YAML flow collections ([...], {...}) nest deeper than MAX_YAML_NESTING. PyYAML's own scanner
    reads the tokens (so quoted brackets and comments do not count) and stops at the first level too many,
    before its cost grows; may raise yaml.YAMLError."""
    if text.count("[") + text.count("{") <= MAX_YAML_NESTING:
        return False
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _FLOW_START):
            depth += 1
            if depth > MAX_YAML_NESTING:
                return True
        elif isinstance(token, _FLOW_END):
            depth -= 1
    return False


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
        raise PrefoptError(f"option '{key}': expected {_type_name(tp)}, got {_shown(value)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except PrefoptError:
                continue
        raise PrefoptError(f"option '{key}': expected {' or '.join(_type_name(a) for a in args)}, got {_shown(value)}")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise PrefoptError(f"option '{key}': expected a list, got {_shown(value)}")
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
            try:
                number = float(value)
            except OverflowError:  # an int past the float range
                raise PrefoptError(f"option '{key}': number too large, got {_shown(value)}") from None
        elif isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if math.isnan(number):  # NaN passes every comparison-based range check downstream
                raise PrefoptError(f"option '{key}': expected a number, got {_shown(value)}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(value, tp):
        return value
    raise PrefoptError(f"option '{key}': expected {_type_name(tp)}, got {_shown(value)}")


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
            if _too_deep(raw):
                raise yaml.YAMLError("nested too deeply")
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""  # "1e-4" stays a str; coerce() reads it
        except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an int past Python's digit limit
            out[key.strip()] = raw
    return out


def read_yaml(path: str) -> dict[str, Any]:
    """A config file: a YAML mapping of option: value, in UTF-8 text."""
    p = Path(path)
    if not p.is_file():
        raise PrefoptError(f"config file '{path}' does not exist")
    raw = p.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PrefoptError(f"config file '{path}': UTF-16 or UTF-32 text (it starts with that byte-order mark); "
                           "save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is skipped
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PrefoptError(f"config file '{path}' line {line}: not valid UTF-8 text "
                           f"(byte 0x{raw[e.start]:02x}); save it as UTF-8") from None
    try:
        if _too_deep(text):
            raise PrefoptError(f"config file '{path}': YAML nested too deeply (over {MAX_YAML_NESTING} levels)")
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PrefoptError(f"config file '{path}': invalid YAML ({first_line(exc)})") from None
    except RecursionError:
        raise PrefoptError(f"config file '{path}': YAML nested too deeply") from None
    except ValueError as exc:  # an int past Python's digit limit
        raise PrefoptError(f"config file '{path}': invalid YAML ({first_line(exc)})") from None
    if not isinstance(loaded, dict):
        raise PrefoptError(f"config file '{path}': expected a mapping of option: value")
    if not isinstance(loaded.get("algo", ""), (str, type(None))):  # the one key that is not an option (the CLI's)
        raise PrefoptError(f"config file '{path}': 'algo' must be an algorithm name, got {_shown(loaded['algo'])}")
    return loaded


def build(cls: type, values: dict[str, Any]):
    """Instantiate dataclass `cls` from already-checked values."""
    types_ = field_types(cls)
    return cls(**{k: coerce(v, types_[k], k) for k, v in values.items()})


def split_options(values: dict[str, Any], algo_config_cls: type, source: str,
                  processes: int = 1) -> tuple[RunConfig, Any]:  # fmt: skip
    """Route each key to RunConfig or the algorithm's Config; unknown keys are errors. Hugging Face / trl names
    of common options are read as prefopt's (:mod:`prefopt.training.aliases`; ``processes``: how many share a
    per-device batch)."""
    from prefopt.training.aliases import translate

    run_keys = set(field_types(RunConfig))
    algo_keys = set(field_types(algo_config_cls))
    clash = run_keys & algo_keys
    if clash:
        raise PrefoptError(f"algorithm option(s) {sorted(clash)} clash with run options of the same name")
    values = translate(values, run_keys | algo_keys, source, processes)
    run_values, algo_values = {}, {}
    for key, value in values.items():
        if key in run_keys:
            run_values[key] = value
        elif key in algo_keys:
            algo_values[key] = value
        else:
            if not isinstance(key, str):  # a YAML key such as 1, null or true
                raise PrefoptError(f"{source}: unknown option {_shown(key)} (option names are words)")
            close = difflib.get_close_matches(key, sorted(run_keys | algo_keys), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PrefoptError(f"{source}: unknown option '{_clip(key)}'{hint}")
    return build(RunConfig, run_values), build(algo_config_cls, algo_values)


def steps_for_epochs(run: RunConfig, examples: int, per_step: int) -> RunConfig:
    """run with steps set from epochs when epochs > 0: ceil(epochs x full batches per pass), at least 1 (a pass
    is the data's whole batches: an incomplete last batch is dropped, see offline.batch_stream)."""
    if run.epochs <= 0:
        return run
    per_pass = max(1, examples // max(1, per_step))
    return dataclasses.replace(run, steps=max(1, math.ceil(run.epochs * per_pass)))


def describe_options(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, comment) for each field of a config dataclass, read from its source.

    The one-line comment after each field is its documentation, so help text
    and code cannot drift apart; a field a subclass redeclares takes its comment.
    """
    import inspect
    import re

    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a base config's comments first, a subclass's override them
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comments.update(re.findall(r"^\s*(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE))
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
