import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.logprobs import forward_logps, selective_log_softmax, sequence_logps


def _three_token_logits():
    """Vocabulary {0, 1, 2}; sequence [0, 1, 2].

    position 0 logits [0, 0, 0]    -> p(next=1) = 1/3
    position 1 logits [0, 0, ln 2] -> softmax [1/4, 1/4, 1/2], p(next=2) = 1/2
    position 2 logits (unused: nothing follows the last token)
    """
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)], [5.0, -1.0, 3.0]]])  # (1, 3, 3)
    input_ids = torch.tensor([[0, 1, 2]])  # (1, 3)
    return logits, input_ids


def test_three_token_example_by_hand():
    logits, ids = _three_token_logits()
    both = sequence_logps(logits, ids, torch.tensor([[0, 1, 1]]))
    # tokens 1 and 2 are the response: log(1/3) + log(1/2) = -ln 6
    assert_close(both.sum, torch.tensor([-math.log(6.0)]))
    assert_close(both.tokens, torch.tensor([2.0]))
    assert_close(both.mean, torch.tensor([-math.log(6.0) / 2]))
    last = sequence_logps(logits, ids, torch.tensor([[0, 0, 1]]))
    # only token 2: log(1/2)
    assert_close(last.sum, torch.tensor([-math.log(2.0)]))
    assert_close(last.tokens, torch.tensor([1.0]))


def test_padding_rows_and_out_of_range_pad_ids_are_ignored():
    logits, ids = _three_token_logits()
    logits = torch.cat([logits, logits])  # (2, 3, 3)
    ids = torch.tensor([[0, 1, 2], [0, 1, 99]])  # 99: a pad id outside the vocabulary
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    out = sequence_logps(logits, ids, mask)
    assert_close(out.sum, torch.tensor([-math.log(6.0), -math.log(3.0)]))
    assert_close(out.tokens, torch.tensor([2.0, 1.0]))


def test_selective_log_softmax_matches_full_log_softmax_in_chunks(monkeypatch):
    import prefopt.core.logprobs as lp

    monkeypatch.setattr(lp, "_CHUNK_ROWS", 3)  # force several chunks
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert_close(selective_log_softmax(logits, labels), expected)
    assert_close(selective_log_softmax(logits.bfloat16(), labels), torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels[..., None]).squeeze(-1))


def test_agrees_with_transformers_labels_loss(tiny_model):
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (2, 9))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1]])
    attention = torch.ones_like(ids)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        hf = tiny_model(input_ids=ids, attention_mask=attention, labels=labels)
        ours = sequence_logps(hf.logits, ids, mask)
    # transformers: mean NLL over all label tokens of the batch
    assert_close(-ours.sum.sum() / ours.tokens.sum(), hf.loss, rtol=1e-5, atol=1e-6)


def test_forward_logps_skips_prompt_logits_without_changing_values(tiny_model):
    torch.manual_seed(2)
    ids = torch.randint(3, 300, (2, 10))
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": mask}
    with torch.no_grad():
        full = sequence_logps(tiny_model(input_ids=ids).logits, ids, mask)
        kept = forward_logps(tiny_model, batch)
    assert_close(kept.sum, full.sum)
    assert_close(kept.tokens, full.tokens)


# ---------------------------------------------------------------- fused projection + log-softmax


@pytest.mark.parametrize("keep_bytes", [0, 2**20], ids=["recomputed", "kept"])
def test_linear_log_softmax_values_and_gradients_match_autograd_in_float64(monkeypatch, keep_bytes):
    """Both backward paths: the softmax made again from the logits, and the forward's kept softmax."""
    monkeypatch.setattr(logprobs, "_chunk_rows", lambda vocab: 3)  # several chunks, the last one short
    monkeypatch.setattr(logprobs, "_KEEP_SOFTMAX_BYTES", keep_bytes)
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)  # (R, H)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)  # (V, H)
    labels = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(lambda h, w: logprobs.linear_log_softmax(h, w, labels), (hidden, weight))
    expected = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    assert_close(logprobs.linear_log_softmax(hidden, weight, labels).double(), expected)


def test_the_softmax_is_kept_only_for_a_backward_and_within_the_budget(monkeypatch):
    hidden = torch.randn(4, 3, requires_grad=True)  # (R, H)
    weight = torch.randn(6, 3)  # (V, H): R x V float32 softmax = 96 bytes
    labels = torch.tensor([0, 5, 2, 2])

    def saved_softmax(out):
        return out.grad_fn.saved_tensors[4]

    assert saved_softmax(logprobs.linear_log_softmax(hidden, weight, labels)).shape == (4, 6)
    monkeypatch.setattr(logprobs, "_KEEP_SOFTMAX_BYTES", 95)
    assert saved_softmax(logprobs.linear_log_softmax(hidden, weight, labels)).numel() == 0
    monkeypatch.setattr(logprobs, "_KEEP_SOFTMAX_BYTES", 96)
    kept = logprobs.linear_log_softmax(hidden, weight, labels)
    assert_close(saved_softmax(kept), torch.softmax(hidden.detach() @ weight.T, dim=-1))
    with torch.no_grad():
        assert logprobs.linear_log_softmax(hidden, weight, labels).grad_fn is None  # nothing held for a backward


@pytest.mark.parametrize("keep_bytes", [0, 2**20], ids=["recomputed", "kept"])
def test_linear_log_softmax_under_bf16_autocast_projects_in_bf16_and_reduces_in_float32(monkeypatch, keep_bytes):
    """The logits are the bf16 projection's (as the model's own head under autocast), the softmax float32;
    the gradients those of that computation, to bf16 rounding of the softmax part."""
    monkeypatch.setattr(logprobs, "_chunk_rows", lambda vocab: 3)
    monkeypatch.setattr(logprobs, "_KEEP_SOFTMAX_BYTES", keep_bytes)
    torch.manual_seed(1)
    hidden = torch.randn(7, 16, requires_grad=True)  # (R, H)
    weight = torch.randn(40, 16)  # (V, H), frozen
    labels = torch.randint(0, 40, (7,))
    grad = torch.randn(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logprobs.linear_log_softmax(hidden, weight, labels)
    assert out.dtype == torch.float32
    (out * grad).sum().backward()
    reference_hidden = hidden.detach().clone().requires_grad_(True)
    logits = (reference_hidden.bfloat16() @ weight.bfloat16().T).float()  # (R, V)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (expected * grad).sum().backward()
    assert_close(hidden.grad, reference_hidden.grad, rtol=2e-2, atol=2e-2)


def test_a_frozen_weight_is_cast_once_until_it_changes():
    weight = torch.randn(6, 3)  # frozen
    first = logprobs.projection_weight(weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and torch.equal(first, weight.bfloat16())
    assert logprobs.projection_weight(weight, torch.bfloat16) is first  # kept
    assert logprobs.projection_weight(weight, torch.float32) is weight  # nothing to cast
    weight.mul_(2)  # changed in place: a new copy, of the new values
    second = logprobs.projection_weight(weight, torch.bfloat16)
    assert second is not first and torch.equal(second, weight.bfloat16())
    trained = torch.randn(6, 3, requires_grad=True)  # changes every step: cast afresh, nothing kept
    assert logprobs.projection_weight(trained, torch.bfloat16) is not logprobs.projection_weight(
        trained, torch.bfloat16)
    assert id(trained) not in logprobs._PROJECTION_COPIES
    key = id(weight)
    del weight, first, second
    assert key not in logprobs._PROJECTION_COPIES  # freed with the weight


def test_linear_log_softmax_by_hand():
    # one row, H = 1, V = 3: logits = [0, 0, ln 2] -> p(label 2) = 1/2
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [0.0], [math.log(2.0)]], requires_grad=True)
    out = logprobs.linear_log_softmax(hidden, weight, torch.tensor([2]))
    assert_close(out, torch.tensor([math.log(0.5)]))
    out.sum().backward()
    # d/dlogits = onehot - softmax = [-1/4, -1/4, 1/2]; d/dweight = that x hidden; d/dhidden = that . weight
    assert_close(weight.grad, torch.tensor([[-0.25], [-0.25], [0.5]]))
    assert_close(hidden.grad, torch.tensor([[0.5 * math.log(2.0)]]))


def test_entropy_by_hand_and_it_leaves_the_log_probs_and_gradients_alone(monkeypatch):
    # row 1: logits [0, 0, ln 2] -> p = [1/4, 1/4, 1/2], H = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2
    # row 2: logits [0, 0, 0] -> uniform over 3, H = ln 3
    monkeypatch.setattr(logprobs, "_chunk_rows", lambda vocab: 1)  # one row per chunk
    hidden = torch.tensor([[1.0], [0.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [0.0], [math.log(2.0)]], requires_grad=True)
    labels = torch.tensor([2, 0])
    logps, entropy = logprobs.linear_log_softmax(hidden, weight, labels, return_entropy=True)
    assert_close(entropy, torch.tensor([1.5 * math.log(2.0), math.log(3.0)]))
    assert not entropy.requires_grad
    plain = logprobs.linear_log_softmax(hidden, weight, labels)
    assert_close(logps, plain)
    (grad_with,) = torch.autograd.grad(logps.sum(), weight)
    (grad_without,) = torch.autograd.grad(plain.sum(), weight)
    assert_close(grad_with, grad_without)
    assert_close(logprobs.chunked_entropy(torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]])),
                 torch.tensor([1.5 * math.log(2.0), math.log(3.0)]))


def test_fused_and_model_logits_entropies_agree_and_are_0_off_the_mask(tiny_model):
    batch = _ragged_batch(5)
    with torch.no_grad():
        fused = logprobs.forward_token_logps(tiny_model, batch, fused=True, return_entropy=True)
        plain = logprobs.forward_token_logps(tiny_model, batch, fused=False, return_entropy=True)
    (fused_logps, mask, fused_entropy), (plain_logps, _, plain_entropy) = fused, plain
    assert_close(fused_logps, plain_logps, rtol=1e-5, atol=1e-5)
    assert fused_entropy.shape == mask.shape == (3, 9)
    assert_close(fused_entropy, plain_entropy, rtol=1e-5, atol=1e-5)
    assert (fused_entropy[mask == 0] == 0).all()
    vocab = tiny_model.config.vocab_size
    on = fused_entropy[mask > 0]
    assert ((on > 0) & (on <= math.log(vocab) + 1e-4)).all()  # between 0 and the uniform distribution's


def _ragged_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (3, 12), generator=g)
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],  # padding after a short response
                         [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]])  # fmt: skip
    attention = torch.ones_like(ids)
    attention[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": mask}


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_fused_forward_gives_the_same_logps_and_gradients_as_the_model_logits(tiny_model, adapter):
    from peft import LoraConfig, get_peft_model

    model = tiny_model
    if adapter == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    assert logprobs.fused_head(model) is not None
    batch = _ragged_batch(3)
    results = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        logps, mask = logprobs.forward_token_logps(model, batch, fused=fused)  # (N, K)
        (logps * torch.arange(1, logps.shape[1] + 1)).sum().backward()  # position-dependent weights
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logps.detach(), mask, grads))
    (fused_logps, fused_mask, fused_grads), (plain_logps, plain_mask, plain_grads) = results
    assert fused_logps.shape == plain_logps.shape == (3, 9)  # K = T - first response column (3)
    assert_close(fused_mask, plain_mask)
    assert_close(fused_logps, plain_logps, rtol=1e-5, atol=1e-5)
    assert (fused_logps[fused_mask == 0] == 0).all()
    assert fused_grads.keys() == plain_grads.keys() and len(fused_grads) > 0
    for name in fused_grads:
        # float32 sums in another order: an entry where terms cancel differs by rounding of the largest terms
        scale = max(1.0, float(plain_grads[name].abs().max()))
        assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_fused_forward_under_bf16_autocast_matches_the_model_logits(tiny_model):
    batch = _ragged_batch(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = logprobs.forward_token_logps(tiny_model, batch, fused=True)
        plain, _ = logprobs.forward_token_logps(tiny_model, batch, fused=False)
    assert fused.dtype == plain.dtype == torch.float32
    assert_close(fused, plain, rtol=0, atol=2e-2)  # same bf16 projection; rounding of the bf16 logits only


def test_fused_head_is_refused_where_logits_are_not_a_plain_projection(tiny_model):
    assert logprobs.fused_head(tiny_model) is not None
    tiny_model.config.model_type = "gemma2"  # soft-capped logits: not in the allowlist
    assert logprobs.fused_head(tiny_model) is None
    tiny_model.config.model_type = "llama"
    tiny_model.lm_head = torch.nn.Linear(64, tiny_model.config.vocab_size, bias=True)
    assert logprobs.fused_head(tiny_model) is None


def _head_grads(hidden, weight, labels, fused: bool = True):
    """(output, hidden's gradient) of sum_i i * logp_i, through linear_log_softmax (the softmax kept) or plain
    autograd."""
    hidden = hidden.detach().clone().requires_grad_()
    if fused:
        out = logprobs.linear_log_softmax(hidden, weight, labels)  # (R,)
    else:
        out = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[:, None]).squeeze(-1)  # (R,)
    (out * torch.arange(1.0, len(labels) + 1)).sum().backward()
    return out, hidden.grad


def test_a_kept_softmax_buffer_is_reused_once_its_node_is_freed():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(6, 5, generator=g), torch.randn(11, 5, generator=g)
    labels = torch.randint(0, 11, (6,), generator=g)
    logprobs._SPARE_SOFTMAX[0] = None
    out, _ = _head_grads(hidden, weight, labels)
    assert logprobs._SPARE_SOFTMAX[0] is None  # its autograd node is alive (out.grad_fn)
    del out
    spare = logprobs._SPARE_SOFTMAX[0]
    assert spare is not None and spare.numel() == 6 * 11
    out, grad = _head_grads(hidden[:4], weight, labels[:4])  # fewer rows: served by the spare buffer
    assert logprobs._SPARE_SOFTMAX[0] is None
    assert_close(grad, _head_grads(hidden[:4], weight, labels[:4], fused=False)[1])
    del out
    assert logprobs._SPARE_SOFTMAX[0].data_ptr() == spare.data_ptr()  # back, whole


def test_a_graph_kept_for_a_second_backward_keeps_its_softmax_to_itself():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(6, 5, generator=g), torch.randn(11, 5, generator=g)
    labels = torch.randint(0, 11, (6,), generator=g)
    logprobs._SPARE_SOFTMAX[0] = None
    leaf = hidden.clone().requires_grad_()
    held = logprobs.linear_log_softmax(leaf, weight, labels)  # (R,)
    held.sum().backward(retain_graph=True)
    first = leaf.grad.clone()
    _head_grads(-hidden, weight, labels)  # another forward and backward in between, on other values
    assert logprobs._SPARE_SOFTMAX[0] is not None  # that one's buffer, not held's
    _head_grads(2 * hidden, weight, labels)  # ... which this one fills
    leaf.grad = None
    held.sum().backward()  # held's kept softmax is intact
    assert_close(leaf.grad, first)
