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
    assert not logprobs.attends_spans(model)  # plain SDPA cannot attend packed tokens span by span
    assert use_cpu_attention(model, "cpu")
    assert model.config._attn_implementation == CPU_SDPA
    assert logprobs.share_prompt_support(model) is None  # still SDPA: takes the shared-prompt mask
    assert logprobs.attends_spans(model)  # shared rows and padding-free batches run packed, in any precision


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
    _sdpa(_Attention(), q[:, :, 3:], k, v, torch.ones(5, 5, dtype=torch.bool).tril()[None, None, 3:])  # 2 of 5
    assert calls == []
    _sdpa(_Attention(), q[:, :, :1], k, v, None)  # one query (decoding with a cache)
    _sdpa(_Attention(), q, k, v, None, position_bias=torch.zeros(1, 4, 5, 5))
    ungrouped = _Attention()
    ungrouped.num_key_value_groups = 1
    _sdpa(ungrouped, q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), None)
    assert calls == [1, 1, 1]


def test_span_calls_of_packed_rows_and_of_shared_prompt_groups_by_hand():
    from prefopt.core.attention import SpanAttention, _lower_right

    assert SpanAttention.rows([3, 1, 2]).calls == (((0, 3), ((0, 3),)), ((3, 4), ((3, 4),)), ((4, 6), ((4, 6),)))
    assert SpanAttention.rows([2, 0, 1]).calls == (((0, 2), ((0, 2),)), ((2, 3), ((2, 3),)))  # an empty row: no call
    # group 0: prompt 2, replies 3 and 1 (tokens 0-5); group 1: prompt 1, replies 2 and 2 (tokens 6-10)
    spans = SpanAttention.shared_prompt([(2, [3, 1]), (1, [2, 2])])
    assert spans.calls == (((0, 5), ((0, 5),)), ((5, 6), ((0, 2), (5, 6))),
                           ((6, 9), ((6, 9),)), ((9, 11), ((6, 7), (9, 11))))  # fmt: skip
    # the calls' pieces of the packed tensors: query counts, then each call's keys as (piece, start, end) in them
    assert spans._pieces == ([5, 1, 3, 2], (((0, 0, 5),), ((0, 0, 2), (1, 0, 1)), ((2, 0, 3),),
                                            ((2, 0, 1), (3, 0, 2))))  # fmt: skip
    # 2 queries, the last 2 of 5 keys: the first sees keys 0-3, the second all 5
    assert _lower_right(2, 5, torch.device("cpu"))[0, 0].tolist() == [[True, True, True, True, False], [True] * 5]


def _packed_qkv(dtype, tokens: int):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, tokens, 8, generator=g)  # (1, heads, S, D)
    k, v = (torch.randn(1, 2, tokens, 8, generator=g) for _ in range(2))  # (1, kv heads, S, D)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _attend_with_grads(q, k, v, mask, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, _ = sdpa_on_cpu(_Attention(), q, k, v, mask, **kwargs)  # (1, S, heads, D)
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype))
    return out.detach(), q.grad, k.grad, v.grad


def test_span_attention_gives_the_dense_masked_call_s_values_and_gradients():
    """sdpa_on_cpu given a SpanAttention: the values and gradients of one call over the whole packed sequence
    with the equivalent (S, S) mask, for packed rows and for shared-prompt groups (float32 and bf16)."""
    from prefopt.core.attention import SPAN_ATTENTION, SpanAttention

    rows = torch.zeros(8, 8, dtype=torch.bool)
    rows[:5, :5] = rows[5:, 5:] = True  # rows of 5 and 3 tokens
    # one group: prompt 0-1, reply 2-4, reply 5-6; then a group: prompt 7, reply 8, reply 9-10
    shared = torch.zeros(11, 11, dtype=torch.bool)
    shared[:5, :5] = shared[5:7, :2] = shared[5:7, 5:7] = True
    shared[7:9, 7:9] = shared[9:, 7] = shared[9:, 9:] = True
    cases = [(SpanAttention.rows([5, 3]), rows), (SpanAttention.shared_prompt([(2, [3, 2]), (1, [1, 2])]), shared)]
    for spans, allowed in cases:
        mask = (allowed & torch.ones_like(allowed).tril())[None, None]  # (1, 1, S, S)
        for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            q, k, v = _packed_qkv(dtype, allowed.shape[0])
            dense = _attend_with_grads(q, k, v, mask)
            ours = _attend_with_grads(q, k, v, None, **{SPAN_ATTENTION: spans})
            assert ours[0].shape == (1, allowed.shape[0], 4, 8) and ours[0].dtype == dtype
            for a, b in zip(ours, dense, strict=True):
                assert_close(a, b, rtol=tolerance, atol=tolerance)


def test_span_calls_under_bf16_autocast_attend_short_calls_in_float32_and_long_ones_in_bf16():
    """Packed rows of 300 and 20 tokens under CPU bf16 autocast (query and key in float32, value in bf16, as
    after RoPE): each row's output and gradients are those of sdpa_on_cpu called on that row alone, which attends
    the 300 keys in bf16 and the 20 in float32; the packed output is bf16."""
    from prefopt.core.attention import SPAN_ATTENTION, SpanAttention

    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 320, 8, generator=g)  # (1, heads, S, D)
    k = torch.randn(1, 2, 320, 8, generator=g)
    v = torch.randn(1, 2, 320, 8, generator=g).bfloat16()

    grad = torch.randn(1, 320, 4, 8, generator=g).bfloat16()  # (1, S, heads, D)

    def attend(start, end, **kwargs):
        parts = [t[:, :, start:end].detach().clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = sdpa_on_cpu(_Attention(), *parts, None, **kwargs)  # (1, T, heads, D)
        out.backward(grad[:, start:end])
        return out.detach(), *(t.grad for t in parts)

    packed = attend(0, 320, **{SPAN_ATTENTION: SpanAttention.rows([300, 20])})
    assert packed[0].dtype == torch.bfloat16
    for start, end in ((0, 300), (300, 320)):
        alone = attend(start, end)
        assert_close(packed[0][:, start:end], alone[0], rtol=0, atol=0)
        for ours, theirs in zip(packed[1:], alone[1:], strict=True):
            assert_close(ours[:, :, start:end], theirs, rtol=1e-5, atol=1e-6)
    # the short row was attended in float32: its output differs from a bf16 call's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, 300:].bfloat16(), k[:, :, 300:].bfloat16().repeat_interleave(2, 1),
            v[:, :, 300:].repeat_interleave(2, 1), is_causal=True).transpose(1, 2)
    assert not torch.equal(packed[0][:, 300:], in_bf16)
