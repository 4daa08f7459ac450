"""prefopt's SDPA for CPU runs (prefopt.core.attention)."""

import json

import torch
from tiny import make_model
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.attention import CPU_SDPA, sdpa_on_cpu, use_cpu_attention
from prefopt.core.models import load_model


class _Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2  # 4 query heads over 2 key/value heads


def _qkv(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g)  # (B, heads, T, D)
    k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(2))  # (B, kv heads, T, D)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_bf16_inputs_are_attended_in_float32_and_the_output_keeps_their_dtype():
    q, k, v = _qkv(torch.bfloat16)
    out, _ = sdpa_on_cpu(_Attention(), q, k, v, None)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 4, 8)  # (B, T, heads, D)
    k2, v2 = k.float().repeat_interleave(2, dim=1), v.float().repeat_interleave(2, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k2, v2, is_causal=True)  # (B, h, T, D)
    assert torch.equal(out, expected.transpose(1, 2).to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not pull it back to bf16
        assert torch.equal(sdpa_on_cpu(_Attention(), q, k, v, None)[0], out)


def test_under_autocast_float32_query_and_key_beside_a_bf16_value_are_attended_in_float32():
    """After RoPE (float32 cos/sin) the query and key are float32 and the value bf16; autocast would run SDPA in
    bf16 on all three."""
    q, k, _ = _qkv(torch.float32)
    v = _qkv(torch.bfloat16)[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_on_cpu(_Attention(), q, k, v, None)
    assert out.dtype == torch.bfloat16
    k2, v2 = k.repeat_interleave(2, dim=1), v.float().repeat_interleave(2, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k2, v2, is_causal=True)  # (B, h, T, D)
    assert torch.equal(out, expected.transpose(1, 2).to(torch.bfloat16))


def test_from_256_keys_on_the_call_stays_in_bf16():
    from prefopt.core.attention import FLOAT32_BELOW_KEYS

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 3, 8, generator=g)  # (B, heads, T, D): float32, as after RoPE
    k, v = (torch.randn(1, 2, FLOAT32_BELOW_KEYS, 8, generator=g) for _ in range(2))  # 256 keys
    mask = torch.ones(1, 1, 3, FLOAT32_BELOW_KEYS, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_on_cpu(_Attention(), q, k, v.bfloat16(), mask)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, dim=1), v.bfloat16().repeat_interleave(2, dim=1), attn_mask=mask)  # bf16
    assert torch.equal(out, expected.transpose(1, 2))


def test_float32_inputs_go_through_transformers_sdpa_unchanged():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv(torch.float32)
    assert torch.equal(sdpa_on_cpu(_Attention(), q, k, v, None)[0],
                       sdpa_attention_forward(_Attention(), q, k, v, None)[0])


def test_only_cpu_runs_of_sdpa_models_switch(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    assert not use_cpu_attention(model, "cuda")  # decided from the names, nothing moves
    assert model.config._attn_implementation == "sdpa"
    eager = make_model(tiny_tokenizer)
    eager.config._attn_implementation = "eager"
    assert not use_cpu_attention(eager, "cpu")
    assert eager.config._attn_implementation == "eager"
    assert not logprobs.packs_shared_prompts(model, "fp32")  # plain SDPA cannot take packed tokens
    assert use_cpu_attention(model, "cpu")
    assert model.config._attn_implementation == CPU_SDPA
    assert logprobs.share_prompt_support(model) is None  # still SDPA: takes the shared-prompt mask
    # packed shared rows in fp32 only: under bf16 they were not faster (docs/speed.md)
    assert logprobs.packs_shared_prompts(model, "fp32") and not logprobs.packs_shared_prompts(model, "bf16")


def test_a_switched_model_computes_the_same_log_probs_and_saves_a_plain_config(tiny_model_dir, tmp_path):
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    logps = {}
    for precision in ("fp32", "bf16"):
        model = load_model(str(tiny_model_dir), adapter="full", precision=precision)
        assert model.config._attn_implementation == CPU_SDPA  # both precisions on a CPU
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), torch.no_grad():
            logps[precision] = logprobs.forward_token_logps(model, batch)[0]  # (N, K)
    assert model.config._attn_implementation == CPU_SDPA
    assert_close(logps["bf16"], logps["fp32"], rtol=0, atol=0.1)  # bf16 projections, float32 attention
    model.save_pretrained(tmp_path / "saved")
    assert CPU_SDPA not in (tmp_path / "saved" / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def _grads(attend, q, k, v, mask):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, _ = attend(_Attention(), q, k, v, mask)  # (B, T, heads, D)
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    return out.detach(), q.grad, k.grad, v.grad


def test_grouped_heads_go_to_sdpa_unrepeated_with_transformers_values_and_gradients():
    """transformers repeats the key/value heads whenever a mask is given; on a CPU they are passed as they are."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from prefopt.core.attention import _sdpa

    q, k, v = _qkv(torch.float32)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    mask[3, 1] = False  # not causal: a shared-prompt batch's reply does not see the other reply
    for m in (mask.expand(2, 1, 5, 5), None):
        ours, theirs = _grads(_sdpa, q, k, v, m), _grads(sdpa_attention_forward, q, k, v, m)
        for a, b in zip(ours, theirs, strict=True):
            assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_calls_the_grouped_path_does_not_cover_go_to_transformers(monkeypatch):
    from transformers.integrations import sdpa_attention

    from prefopt.core.attention import _sdpa

    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _qkv(torch.float32)
    _sdpa(_Attention(), q, k, v, None)
    assert calls == []
    _sdpa(_Attention(), q[:, :, :1], k, v, None)  # one query (decoding with a cache)
    _sdpa(_Attention(), q, k, v, None, position_bias=torch.zeros(1, 4, 5, 5))
    ungrouped = _Attention()
    ungrouped.num_key_value_groups = 1
    _sdpa(ungrouped, q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), None)
    assert calls == [1, 1, 1]


def test_padded_attention_scatters_packed_tokens_into_rows_and_gathers_them_back_by_hand():
    from prefopt.core.attention import PaddedAttention

    padded = PaddedAttention(real=torch.tensor([0, 1, 3]), rows=2, width=2)  # row 0: 2 tokens, row 1: 1
    packed = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[None, :, :, None]  # (1, heads 2, S 3, D 1)
    rows = padded.pad(packed)  # (B 2, heads 2, T' 2, D 1)
    assert rows.squeeze(-1).tolist() == [[[1.0, 2.0], [4.0, 5.0]], [[0.0, 3.0], [0.0, 6.0]]]  # cell 2 is padding
    out = rows.transpose(1, 2)  # (B, T', heads, D), as attention functions return it
    assert padded.unpad(out).squeeze(-1).tolist() == [[[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]]  # (1, S, heads)


def test_packed_tokens_attend_as_their_padded_rows_with_the_same_gradients():
    """sdpa_on_cpu given PaddedAttention and packed (1, heads, S, D) tensors: the padded call's real rows, and
    the gradients of the packed query, key and value are the padded ones' at the real cells (float32 and bf16)."""
    from prefopt.core.attention import PADDED_ATTENTION, PaddedAttention

    real = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])  # row 0 whole, row 1's first 3 of 5 cells
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    mask[1, 0, 3:, :] = torch.eye(5, dtype=torch.bool)[3:]  # padding queries attend to themselves only
    mask[1, 0, :3, 3:] = False
    padded = PaddedAttention(real, rows=2, width=5)
    upstream = torch.linspace(-1, 1, 2 * 5 * 4 * 8).view(2, 5, 4, 8)  # (B, T', heads, D): d loss / d output
    upstream[1, 3:] = 0  # nothing flows from the padding's outputs (a packed forward has none)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = _qkv(dtype)  # (2, heads, 5, D): the padded rows
        q[1, :, 3:], k[1, :, 3:], v[1, :, 3:] = 0, 0, 0  # what pad() puts at padding
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        out, _ = sdpa_on_cpu(_Attention(), q, k, v, mask)  # (2, 5, heads, D)
        out.backward(upstream.to(out.dtype))
        packed = [t.detach().transpose(1, 2).flatten(0, 1)[real].transpose(0, 1)[None].requires_grad_()
                  for t in (q, k, v)]  # (1, heads, S, D)  # fmt: skip
        got, _ = sdpa_on_cpu(_Attention(), *packed, mask, **{PADDED_ATTENTION: padded})  # (1, S, heads, D)
        got.backward(upstream.flatten(0, 1)[real][None].to(got.dtype))
        assert got.shape == (1, 8, 4, 8)
        assert torch.equal(got[0], out.detach().flatten(0, 1)[real])
        for ours, theirs in zip(packed, (q, k, v), strict=True):
            assert_close(ours.grad[0].transpose(0, 1), theirs.grad.transpose(1, 2).flatten(0, 1)[real],
                         rtol=1e-6, atol=1e-6)
