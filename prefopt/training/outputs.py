"""What makes a run's trained model portable: where its base came from, a model card, and the push to the Hub.

Each output folder (``adapter/``, ``merged/``, ``model/``) gets

- ``prefopt_base.json``: the base model as a hub id when one is known (the bundled default is
  ``HuggingFaceTB/SmolLM2-135M-Instruct``, dequantised from its Q4_1 GGUF), the prefopt model spec the run used,
  and for a GGUF base its file and quantisation;
- an adapter's ``adapter_config.json`` names that hub id as ``base_model_name_or_path`` (not a private cache
  folder), so ``AutoPeftModelForCausalLM.from_pretrained(adapter)`` works on another machine;
- ``README.md``: a model card (huggingface_hub's ModelCard: metadata, then the algorithm and its paper, base
  model, data, options, held-out metrics and the command that reproduces the run), replacing peft's blank one.

With ``push_to_hub=true hub_model_id=owner/name`` the merged model (when ``merge=true``), else the adapter or the
fully trained model, is uploaded with huggingface_hub's ``HfApi`` (``create_repo`` then ``upload_folder``; a
token from ``huggingface-cli login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefopt.errors import PrefoptError
from prefopt.io import atomic_write_json, atomic_write_text

BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BASE_FILE = "prefopt_base.json"
_QUANT = re.compile(r"\.((?:I?Q\d[\w]*)|F16|F32|BF16)\.gguf$", re.IGNORECASE)


def base_record(spec: str) -> dict:
    """Where the base model came from: {"base_model", "spec"} and, for a GGUF, {"gguf", "quantisation",
    "dequantised_to"}. ``base_model`` is a hub id when known, else the local path as given."""
    from prefopt.core import models

    spec = str(spec)
    if spec == models.DEFAULT_MODEL:
        return {"base_model": BUNDLED_HUB_ID, "spec": spec, "gguf": models._DEFAULT_GGUF, "quantisation": "Q4_1",
                "dequantised_to": "float32"}  # fmt: skip
    if spec.lower().endswith(".gguf"):
        match = _QUANT.search(Path(spec).name)
        return {"base_model": str(Path(spec).expanduser().resolve()), "spec": spec, "gguf": Path(spec).name,
                "quantisation": match.group(1).upper() if match else "unknown", "dequantised_to": "float32"}  # fmt: skip
    adapter_base = models.adapter_base(spec)
    if adapter_base is not None:  # trained from another run's adapter: that run's base, merged with it
        return {**base_record(adapter_base), "spec": spec, "merged_adapter": str(Path(spec).expanduser().resolve())}
    path = Path(spec).expanduser()
    return {"base_model": str(path.resolve()) if path.is_dir() else spec, "spec": spec}


def finish_outputs(outputs: dict[str, str], summary: dict, options: dict, algo_name: str, algorithm) -> None:
    """The base record, portable adapter config and model card of every output folder."""
    record = base_record(options["model"])
    for kind, folder in outputs.items():
        folder = Path(folder)
        atomic_write_json(folder / BASE_FILE, record)
        if kind == "adapter":
            _portable_adapter_config(folder, record["base_model"])
        atomic_write_text(folder / "README.md", model_card(kind, summary, options, algo_name, algorithm, record))


def push_if_asked(outputs: dict[str, str], options: dict) -> None:
    """push_to_hub, once the run is finished (a failed upload leaves a complete run folder behind)."""
    if options.get("push_to_hub"):
        push(outputs, options["hub_model_id"], private=bool(options.get("hub_private")))


def _portable_adapter_config(folder: Path, base_model: str) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def command(algo_name: str, options: dict) -> str:
    """The `prefopt run` command that repeats a run: the options that differ from their defaults."""
    from prefopt.training.config import RunConfig, field_types

    defaults = RunConfig()
    parts = ["prefopt", "run", "--algo", algo_name]
    for key, value in options.items():
        if key in ("algo", "progress", "output_dir", "push_to_hub", "hub_model_id", "hub_private", "report_to"):
            continue
        if key in field_types(RunConfig) and getattr(defaults, key) == value:
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def model_card(kind: str, summary: dict, options: dict, algo_name: str, algorithm, record: dict) -> str:
    """A huggingface_hub ModelCard (YAML metadata + Markdown) of one output folder."""
    from huggingface_hub import ModelCard, ModelCardData

    doc = (type(algorithm).__doc__ or algo_name).strip().splitlines()[0]
    after = summary.get("eval_after") or {}
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(after.items()) if isinstance(v, (int, float)))
    gguf = (f" (dequantised to {record['dequantised_to']} from the {record['quantisation']} GGUF "
            f"`{record['gguf']}`)") if "gguf" in record else ""  # fmt: skip
    what = {"adapter": "a LoRA adapter", "merged": "the base model with the LoRA adapter merged in",
            "model": "a fully fine-tuned model"}.get(kind, kind)  # fmt: skip
    data = ModelCardData(base_model=record["base_model"] if "/" in record["base_model"] and not
                         Path(record["base_model"]).is_absolute() else None,
                         library_name="peft" if kind == "adapter" else "transformers",
                         tags=["prefopt", algo_name, "preference-optimization"])  # fmt: skip
    options_table = "\n".join(f"| {k} | {v} |" for k, v in options.items() if k not in ("progress",))
    content = f"""---
{data.to_yaml()}
---

# {Path(summary["output_dir"]).name}

This folder holds {what}, trained with prefopt using **{algo_name}**: {doc}

- Base model: `{record['base_model']}`{gguf}
- Data: `{options.get('data')}`{f" (held-out: `{options['eval_data']}`)" if options.get('eval_data') else ""}
- Steps: {summary.get('steps')}, global batch {summary.get('global_batch')}, precision {summary.get('precision')}

## Held-out metrics after training

| metric | value |
| --- | --- |
{metrics or "| (none) | |"}

## Reproduce

```bash
{command(algo_name, options)}
```

## Options

| option | value |
| --- | --- |
{options_table}
"""
    return str(ModelCard(content))


def check_push(options: dict) -> None:
    """push_to_hub needs hub_model_id as owner/name, and the hub options mean nothing without it (checked before
    the run starts)."""
    if not options.get("push_to_hub"):
        for name in ("hub_model_id", "hub_private"):
            if options.get(name):
                raise PrefoptError(f"option '{name}': given without push_to_hub=true, so nothing would be pushed "
                                   "(add push_to_hub=true, or leave it out)")  # fmt: skip
    else:
        repo = str(options.get("hub_model_id") or "")
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*", repo):
            raise PrefoptError(f"option 'hub_model_id': push_to_hub needs owner/name, got {repo!r}")


def push(outputs: dict[str, str], repo_id: str, private: bool = False) -> str:
    """Upload the merged model, else the adapter or the full model, to the Hub; returns the folder pushed."""
    from huggingface_hub import HfApi

    folder = outputs.get("merged") or outputs.get("adapter") or outputs.get("model")
    if folder is None:
        raise PrefoptError(f"push_to_hub: the run saved nothing to push (outputs: {sorted(outputs)})")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="prefopt run")
    except Exception as exc:  # noqa: BLE001 - network, auth: the trained files are on disk; say so in one line
        raise PrefoptError(f"push_to_hub: upload of {folder} to {repo_id} failed ({str(exc).splitlines()[0]}); "
                           "the run's files are saved") from None
    return folder
