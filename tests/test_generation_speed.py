"""benchmarks/generation_speed.py on the tiny model: both implementations generate exactly
max_new_tokens even when EOS is the likeliest token, greedy ids agree, and the report is written."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from prefopt.core.models import autocast
from prefopt.data import render_prompt

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generation_speed.py"


def _script():
    spec = importlib.util.spec_from_file_location("generation_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prompts(tok):
    texts = ["What is 12 plus 7?", "Hi", "The capital of France is?"]
    return [render_prompt(tok, [{"role": "user", "content": t}]) for t in texts]


def test_eos_is_ignored_by_both_implementations(tiny_tokenizer, tiny_model):
    gs, tok = _script(), tiny_tokenizer
    eos = tok.eos_token_id

    def favour_eos(module, inputs, out):
        out.logits[..., eos] += 20.0
        return out

    tiny_model.register_forward_hook(favour_eos)
    amp = functools.partial(autocast, "fp32", "cpu")
    for greedy in (True, False):
        row = gs.bench_batch(tiny_model, tok, _prompts(tok), max_new_tokens=5, reps=1, greedy=greedy, seed=0,
                             amp=amp, device=torch.device("cpu"))
        assert row["generated_tokens_per_call"] == 15
    assert row["prefopt"]["tokens_per_s_median"] > 0 and row["hf"]["tokens_per_s_median"] > 0


@pytest.mark.e2e
def test_main_writes_the_report_and_greedy_ids_match(tiny_model_dir, tmp_path):
    record = _script().main([
        "--model", str(tiny_model_dir), "--batch-sizes", "2,3", "--max-new-tokens", "6", "--reps", "2",
        "--greedy", "--lora", "--precision", "fp32", "--device", "cpu", "--out", str(tmp_path),
    ])
    assert [(r["variant"], r["batch_size"]) for r in record["results"]] == [("full", 2), ("full", 3), ("lora", 2),
                                                                             ("lora", 3)]
    for row in record["results"]:
        assert row["greedy"]["match_rate"] == 1.0
        assert len(row["prefopt"]["seconds"]) == len(row["hf"]["seconds"]) == 2
    saved = json.loads((tmp_path / "generation.json").read_text())
    assert saved["settings"]["max_new_tokens"] == 6 and saved["machine"]["cpu_count"]
    assert "| lora | 3 |" in (tmp_path / "generation.md").read_text()
