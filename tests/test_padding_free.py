"""Padding-free batches: the rows of a batch packed into one sequence give the padded forward's log-probs,
entropies and gradients (fp32, tiny Llama, LoRA and full, through the fused head and through the model's logits)."""

from __future__ import annotations

import pytest
import torch
from helpers import lora_with_random_b, ragged_pairs
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.logprobs import PADDING_FREE


def _run(model, batch: dict, fused: bool):
    model.zero_grad(set_to_none=True)
    logps, mask, entropy = logprobs.forward_token_logps(model, batch, fused=fused, return_entropy=True)  # (N, K)
    (logps * torch.arange(1, logps.shape[1] + 1)).sum().backward()  # position-dependent weights
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return logps.detach(), mask, entropy, grads


@pytest.mark.parametrize("attention", ["sdpa", "sdpa_cpu"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_packed_rows_give_the_padded_log_probs_entropies_and_gradients(tiny_model, adapter, fused, attention,
                                                                      monkeypatch):
    """Plain SDPA attends the packed sequence under a block-diagonal mask; prefopt's CPU SDPA attends each row's
    span of it by itself (SpanAttention)."""
    from prefopt.core.attention import SpanAttention, use_cpu_attention

    span_calls = []
    attend = SpanAttention.attend
    monkeypatch.setattr(SpanAttention, "attend", lambda self, *a, **kw: span_calls.append(self) or attend(self, *a, **kw))
    model = lora_with_random_b(tiny_model) if adapter == "lora" else tiny_model
    batch = ragged_pairs(0)
    assert (batch["attention_mask"] == 0).any()  # there is padding to skip
    padded = _run(model, batch, fused)
    if attention == "sdpa_cpu":
        assert use_cpu_attention(model, "cpu")
    packed = _run(model, {**batch, PADDING_FREE: True}, fused)
    # each of the 2 layers, in the forward (the backward recomputes nothing), one call per row
    assert len(span_calls) == (2 if attention == "sdpa_cpu" else 0)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert all(len(spans.calls) == len(lengths) for spans in span_calls)
    assert packed[0].shape == padded[0].shape and packed[1].equal(padded[1])
    assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    assert_close(packed[2], padded[2], rtol=1e-5, atol=1e-5)
    assert (packed[0][packed[1] == 0] == 0).all() and (packed[2][packed[1] == 0] == 0).all()
    assert packed[3].keys() == padded[3].keys() and len(packed[3]) > 0
    for name in padded[3]:
        assert_close(packed[3][name], padded[3][name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_rows_never_see_each_other_or_the_padding(tiny_model):
    """Changing one row's tokens (or the pad ids) leaves every other row's packed log-probs unchanged."""
    batch = {**ragged_pairs(1), PADDING_FREE: True}
    with torch.no_grad():
        before, _ = logprobs.forward_token_logps(tiny_model, batch)
        changed = batch["input_ids"].clone()
        changed[0, :2] = torch.tensor([5, 6])  # row 0's prompt
        changed[batch["attention_mask"] == 0] = 7  # every pad id
        after, _ = logprobs.forward_token_logps(tiny_model, {**batch, "input_ids": changed})
    assert not torch.equal(before[0], after[0])
    assert_close(after[1:], before[1:], rtol=1e-6, atol=1e-6)


def test_a_sub_batch_lines_up_with_the_full_batch_columns(tiny_model):
    batch = ragged_pairs(2)
    first = logprobs.first_response_position(batch["loss_mask"])
    rows = torch.tensor([1, 6])
    sub = {k: v[rows] for k, v in batch.items() if k != "index"}
    with torch.no_grad():
        full, _ = logprobs.forward_token_logps(tiny_model, {**batch, PADDING_FREE: True})
        part, _ = logprobs.forward_token_logps(tiny_model, {**sub, PADDING_FREE: True}, first)
    assert_close(part, full[rows], rtol=1e-5, atol=1e-5)


def test_auto_packs_only_with_flash_attention_on_cuda(tiny_model):
    from prefopt.core.attention import use_cpu_attention

    assert not logprobs.use_padding_free("auto", tiny_model, "cpu")
    assert logprobs.use_padding_free(True, tiny_model, "cpu") and not logprobs.use_padding_free(False, tiny_model, "cuda")
    assert not logprobs.use_padding_free("auto", tiny_model, "cuda")
    tiny_model.config._attn_implementation = "flash_attention_2"
    assert logprobs.use_padding_free("auto", tiny_model, "cuda") and not logprobs.use_padding_free("auto", tiny_model, "cpu")
    tiny_model.config._attn_implementation = "sdpa"
    assert use_cpu_attention(tiny_model, "cpu")  # prefopt's attention: packed rows attended by span when asked for
    assert not logprobs.use_padding_free("auto", tiny_model, "cpu") and logprobs.use_padding_free(True, tiny_model, "cpu")


@pytest.mark.e2e
@pytest.mark.parametrize("algo", ["dpo", "kto", "sft"])
def test_a_padding_free_run_trains_like_a_padded_one(tmp_path, tiny_model_dir, algo, monkeypatch):
    """Every step's policy (and adapter-reference) forward goes packed, and the run logs the padded run's numbers."""
    from helpers import assert_option_trains_alike

    assert_option_trains_alike(tmp_path, tiny_model_dir, algo, "padding_free", logprobs, "_packed_token_logps",
                               monkeypatch)


def test_the_option_reads_as_a_user_types_it():
    from prefopt.training.config import RunConfig, build, parse_overrides

    assert RunConfig().padding_free == "auto"
    for text, value in (("true", True), ("on", True), ("false", False), ("off", False), ("auto", "auto")):
        assert build(RunConfig, parse_overrides([f"padding_free={text}"])).padding_free == value


@pytest.mark.parametrize("algo", ["reward", "grpo"])
def test_padding_free_is_refused_where_no_log_prob_batch_is_packed(tmp_path, tiny_model_dir, algo, capsys):
    from helpers import assert_option_refused

    assert_option_refused(tmp_path, tiny_model_dir, algo, "padding_free=true", capsys, "option 'padding_free'", algo)


def test_a_kto_half_batch_stays_padding_free():
    """KTO forwards the completion rows and the mismatched rows separately: both halves keep the mark."""
    from prefopt.core.logprobs import LAYOUT, host_layout
    from prefopt.training.inputs import rows

    batch = ragged_pairs(5)
    batch = {**batch, PADDING_FREE: True, LAYOUT: host_layout(batch["attention_mask"], batch["loss_mask"])}
    half = rows(batch, 0, 4)
    assert half[PADDING_FREE] is True and LAYOUT not in half and half["input_ids"].equal(batch["input_ids"][:4])
    assert PADDING_FREE not in rows({**batch, PADDING_FREE: False}, 4, 8)


def test_a_run_shares_prompts_of_pairs_and_packs_other_log_prob_batches_on_a_cpu(tiny_model):
    from prefopt.core.attention import use_cpu_attention
    from prefopt.core.registry import get
    from prefopt.training.config import RunConfig
    from prefopt.training.inputs import inputs_for
    from prefopt.training.offline import batch_layouts

    def layouts(algo: str, device: str = "cpu", **options) -> tuple[bool, bool, bool]:
        algorithm = get(algo)()
        return batch_layouts(RunConfig(**options), algorithm, inputs_for(algorithm), tiny_model, device)

    # plain SDPA: rows padded, shared rows too (it cannot attend packed tokens span by span)
    assert layouts("dpo") == (True, False, False) and layouts("sft") == (False, False, False)
    assert use_cpu_attention(tiny_model, "cpu")
    # pair batches: each prompt once, packed (see test_shared_prompt); other batches padded unless asked
    assert layouts("dpo") == (True, False, True) and layouts("kto") == (True, False, True)
    assert layouts("sft") == (False, False, False)
    assert layouts("dpo", padding_free=False) == (True, False, False)  # false: the shared rows stay rows
    # asked: anything but whole pair batches, as KTO's half batches, packed (a batch with both layouts runs the
    # shared one: see the next test)
    assert layouts("sft", padding_free=True) == (False, True, False)
    assert layouts("kto", padding_free=True, share_prompt="auto") == (False, True, False)  # true: no sharing
    assert layouts("reward") == (False, False, False) and layouts("reward", padding_free=True) == (False, False, False)
    assert layouts("dpo", share_prompt=False) == (False, False, False)
    assert layouts("dpo", padding_free=True) == (False, True, False)
    assert layouts("dpo", device="cuda") == (False, False, False)  # no flash-attention here: padded rows on CUDA


def test_a_batch_with_both_layouts_runs_its_prompts_once_and_its_half_batches_packed(tiny_model, monkeypatch):
    """A KTO-style run marks every batch padding-free and gives whole pair batches their shared prompts: the
    whole batch takes the shared forward, a half batch (no shared layout of its own) the packed one."""
    from prefopt.core.logprobs import LAYOUT, host_layout
    from prefopt.core.shared_prompt import SHARED_PROMPT, shared_prompt_layout
    from prefopt.training.inputs import rows

    taken = []
    for name in ("_shared_token_logps", "_packed_token_logps"):
        real = getattr(logprobs, name)
        monkeypatch.setattr(logprobs, name, lambda *a, _name=name, _real=real, **k: taken.append(_name) or _real(*a, **k))
    batch = ragged_pairs(4)
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response)
    both = {**batch, PADDING_FREE: True, LAYOUT: layout, SHARED_PROMPT: shared}
    with torch.no_grad():
        whole, _ = logprobs.forward_token_logps(tiny_model, both)
        half, _ = logprobs.forward_token_logps(tiny_model, rows(both, 0, 4), layout.first)
        padded, _ = logprobs.forward_token_logps(tiny_model, batch)
    assert taken == ["_shared_token_logps", "_packed_token_logps"]
    assert_close(whole, padded, rtol=1e-5, atol=1e-5)
    assert_close(half, padded[:4], rtol=1e-5, atol=1e-5)
