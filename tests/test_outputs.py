"""Portable outputs: the base a model came from, model cards, save_dtype, push_to_hub, and training from an adapter."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import write_learnable_pairs

import prefopt
from prefopt.core import models
from prefopt.errors import PrefoptError
from prefopt.training.outputs import BUNDLED_HUB_ID, base_record


def test_the_bundled_default_is_recorded_as_its_hub_id_and_gguf_origin():
    record = base_record(models.DEFAULT_MODEL)
    assert record["base_model"] == BUNDLED_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record["quantisation"] == "Q4_1" and record["gguf"].endswith(".Q4_1.gguf")
    assert base_record("/models/llama.Q8_0.gguf")["quantisation"] == "Q8_0"
    assert base_record("org/model") == {"base_model": "org/model", "spec": "org/model"}


def test_push_needs_an_owner_and_name():
    with pytest.raises(PrefoptError, match="option 'hub_model_id': push_to_hub needs owner/name"):
        prefopt.run(algo="dpo", data="x.jsonl", push_to_hub=True)


def _options(tiny_model_dir, out, **extra):
    return {"model": str(tiny_model_dir), "output_dir": str(out), "steps": 2, "batch_size": 4, "eval_size": 4,
            "max_length": 48, "precision": "fp32", "progress": False, "lora_r": 4, "lora_alpha": 8, **extra}


@pytest.mark.e2e
def test_sft_then_dpo_from_its_adapter_with_cards_and_a_push(tmp_path, tiny_model_dir, monkeypatch):
    from huggingface_hub import HfApi, ModelCard
    from safetensors.torch import load_file

    data = str(write_learnable_pairs(tmp_path / "p.jsonl", 24))
    sft = prefopt.run(algo="sft", data=data, merge=True, save_dtype="bf16", lr=1e-2,
                      **_options(tiny_model_dir, tmp_path / "sft"))  # fmt: skip
    adapter = tmp_path / "sft" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert json.loads((adapter / "prefopt_base.json").read_text())["spec"] == str(tiny_model_dir)
    card = ModelCard.load(adapter / "README.md")
    assert "sft" in card.data.tags and "prefopt run --algo sft" in card.text and "## Held-out metrics" in card.text
    merged = load_file(str(tmp_path / "sft" / "merged" / "model.safetensors"))
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}  # save_dtype
    assert (tmp_path / "sft" / "merged" / "README.md").exists()

    # the adapter folder as --model: its base with the adapter merged, i.e. the SFT policy
    ids = torch.tensor([[5, 6, 7, 8]])
    from peft import PeftModel

    sft_policy = PeftModel.from_pretrained(models._load_float(str(tiny_model_dir)), str(adapter)).eval()
    start = models.load_model(str(adapter), adapter="full").eval()
    with torch.no_grad():
        assert torch.allclose(start(ids).logits, sft_policy(ids).logits, atol=1e-5)
        assert not torch.allclose(start(ids).logits, models._load_float(str(tiny_model_dir))(ids).logits, atol=1e-3)

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"],
                                                                                  kw["folder_path"])))  # fmt: skip
    dpo = prefopt.run(algo="dpo", data=data, push_to_hub=True, hub_model_id="me/dpo-tiny",
                      **_options(tiny_model_dir, tmp_path / "dpo", model=str(adapter)))  # fmt: skip
    assert dpo["steps"] == 2 and sft["steps"] == 2
    record = json.loads((tmp_path / "dpo" / "adapter" / "prefopt_base.json").read_text())
    assert record["base_model"] == str(tiny_model_dir.resolve()) and record["merged_adapter"] == str(adapter.resolve())
    assert calls == [("create", "me/dpo-tiny", {"private": False, "exist_ok": True}),
                     ("upload", "me/dpo-tiny", str(tmp_path / "dpo" / "adapter"))]  # fmt: skip


@pytest.mark.e2e
def test_a_failed_push_keeps_the_run_and_says_so(tmp_path, tiny_model_dir, monkeypatch):
    from huggingface_hub import HfApi

    def offline(self, *a, **kw):
        raise OSError("no network")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    data = str(write_learnable_pairs(tmp_path / "p.jsonl", 16))
    with pytest.raises(PrefoptError, match=r"push_to_hub: upload of .*adapter to me/x failed \(no network\); the run's"):
        prefopt.run(algo="dpo", data=data, push_to_hub=True, hub_model_id="me/x", **_options(tiny_model_dir,
                                                                                             tmp_path / "r"))  # fmt: skip
    assert (tmp_path / "r" / "adapter" / "adapter_model.safetensors").exists() and (tmp_path / "r" / "summary.json").exists()


def test_an_adapter_of_the_bundled_default_loads_its_base_from_the_bundled_gguf(tmp_path):
    """The adapter names the hub id for other machines; prefopt itself reads prefopt_base.json and rebuilds the
    dequantised base from the bundled GGUF (the weights it was trained on), even after its cache is gone."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BUNDLED_HUB_ID}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert models.adapter_base(adapter) == BUNDLED_HUB_ID  # peft's record alone: the hub model
    (adapter / "prefopt_base.json").write_text(json.dumps(base_record(models.DEFAULT_MODEL)))
    assert models.adapter_base(adapter) == models.DEFAULT_MODEL  # resolve_model converts it again when needed


def test_a_portable_adapter_loads_with_peft_from_its_hub_id_offline(tmp_path, tiny_model_dir, monkeypatch):
    """On another machine the base comes from the hub id the adapter records: mapped here, offline, to a local
    copy in the Hugging Face cache layout, while the folder the adapter was trained from is gone."""
    import shutil

    from huggingface_hub import constants
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base_dir)
    policy = get_peft_model(models._load_float(str(base_dir)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = policy.eval()(ids).logits
    adapter = tmp_path / "adapter"
    policy.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": BUNDLED_HUB_ID}))

    cache = tmp_path / "hf-cache"  # the hub id's snapshot, as a download would leave it
    snapshot = cache / f"models--{BUNDLED_HUB_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(base_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    shutil.rmtree(base_dir)  # the training machine's copy of the base is gone
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(adapter), cache_dir=str(cache)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
