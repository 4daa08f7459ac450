"""PPO's update: one backbone pass for log-probs, values and entropies (through the fused head or the model's
output layer, same numbers), and the first update's forward serving as the experience pass (same training)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LetterJudge, read_metrics, run_cli, tiny_run_args, write_prompts
from torch.testing import assert_close

from prefopt.core import heads, logprobs
from prefopt.core.models import dropout_free
from prefopt.data import TokenizedPair, collate_pairs


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    pairs = [TokenizedPair(i, torch.randint(3, 300, (p,), generator=g).tolist(),
                           torch.randint(3, 300, (c,), generator=g).tolist(),
                           torch.randint(3, 300, (r,), generator=g).tolist())
             for i, (p, c, r) in enumerate([(3, 2, 6), (7, 5, 1), (2, 9, 4)])]  # fmt: skip
    return collate_pairs(pairs, pad_id=0)


def _value_model(tiny_model):
    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return heads.attach_scalar_head(lm)


def _expected(model, batch: dict) -> dict:
    """Log-probs, entropies and values straight from the model's own logits and hidden states."""
    out = model.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    first = logprobs.first_response_position(batch["loss_mask"])
    mask = batch["loss_mask"][:, first:].float()  # (N, K)
    logp = out.logits[:, first - 1 : -1].float().log_softmax(-1)  # (N, K, V)
    labels = batch["input_ids"][:, first:].masked_fill(mask == 0, 0)  # (N, K)
    picked = logp.gather(-1, labels[..., None]).squeeze(-1) * mask
    entropy = -(logp.exp() * logp).sum(-1) * mask
    values = model.head(out.hidden_states[-1][:, first - 1 : -1]).squeeze(-1)  # (N, K)
    return {"logps": picked, "mask": mask, "entropy": entropy, "values": values}


@pytest.mark.parametrize("fused", [True, False])
def test_policy_value_forward_gives_the_models_log_probs_entropies_values_and_gradients(tiny_model, fused,
                                                                                       monkeypatch):
    model = _value_model(tiny_model)
    if not fused:
        monkeypatch.setattr(logprobs, "fused_head", lambda m: None)
    else:
        assert logprobs.fused_head(model.lm) is not None  # the tiny Llama takes the fused path
    batch = _batch()
    got = heads.policy_value_forward(model, batch, return_entropy=True)
    want = _expected(model, batch)
    assert got["mask"].equal(want["mask"]) and got["logps"].shape == want["logps"].shape
    for key in ("logps", "entropy", "values"):
        assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)
    assert "entropy" not in heads.policy_value_forward(model, batch)  # only when asked

    def grads(out: dict) -> dict:
        model.zero_grad(set_to_none=True)
        weights = torch.arange(1, out["logps"].shape[1] + 1)  # position-dependent, so a column shift shows
        ((out["logps"] + 0.5 * out["values"] * out["mask"]) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours, theirs = grads(heads.policy_value_forward(model, batch)), grads(_expected(model, batch))
    assert ours.keys() == theirs.keys() and any("head" in n for n in ours) and any("lora_B" in n for n in ours)
    for name in ours:
        assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dropout_free(tiny_model):
    from peft import LoraConfig, get_peft_model

    assert dropout_free(tiny_model)
    tiny_model.config.attention_dropout = 0.1
    assert not dropout_free(tiny_model)
    tiny_model.config.attention_dropout = 0.0
    lora = get_peft_model(tiny_model, LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj"]))
    assert not dropout_free(lora)


@pytest.mark.e2e
def test_the_first_update_forward_is_the_experience_pass(tiny_model_dir, tmp_path, monkeypatch):
    """With one minibatch and no dropout the experience (old log-probs, values, entropy) is taken from the first
    update's forward: the run trains exactly as with a separate no-grad experience forward, one forward fewer."""
    from prefopt import judges
    from prefopt.algorithms import ppo

    monkeypatch.setattr(judges, "make_judge", lambda spec, **options: LetterJudge())
    prompts = write_prompts(tmp_path / "prompts.jsonl", 24)
    calls = []
    real = ppo.policy_value_forward
    monkeypatch.setattr(ppo, "policy_value_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = ("steps=3", "lr=1e-2", "batch_size=4", "max_new_tokens=5", "ppo_epochs=2", "eval_size=0")

    def run(name: str) -> list[dict]:
        calls.clear()
        assert run_cli(tiny_run_args(tiny_model_dir, prompts, tmp_path / name, *common) + ["--algo", "ppo"]) == 0
        return [r for r in read_metrics(tmp_path / name) if "kl" in r]

    shared = run("shared")
    shared_calls = len(calls)
    monkeypatch.setattr(ppo, "dropout_free", lambda model: False)  # force the separate experience forward
    separate = run("separate")
    assert shared_calls == 3 * 2 and len(calls) == 3 * 3  # per step: ppo_epochs forwards, plus one when separate
    assert len(shared) == len(separate) == 3
    for a, b in zip(shared, separate):
        for key in ("loss", "policy_loss", "value_loss", "kl", "entropy", "grad_norm", "reward"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-5), (key, a[key], b[key])
