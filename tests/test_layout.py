"""The host Layout: token positions found on the CPU before a batch goes to the device, so the log-prob forward
indexes without waiting for the device. Worked out by hand; the same numbers as without it, on every path."""

from __future__ import annotations

import pytest
import torch
from helpers import lora_with_random_b, ragged_pairs
from torch.profiler import ProfilerActivity, profile
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.logprobs import LAYOUT, PADDING_FREE, host_layout

HOST_WAITS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::item")


def test_host_layout_by_hand():
    # row 0: prompt 2, response 2, pad 1; row 1: prompt 3, response 1, pad 1 -> first response column 2, K = 3
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    loss = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 0]])
    layout = host_layout(attention, loss)
    assert layout.first == 2
    assert layout.response.tolist() == [0, 1, 4]  # grid (2, 3) = columns 2-4: row 0 cells 0-1, row 1 cell 1
    assert layout.real.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert layout.positions.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # packed loss mask 0 0 1 1 | 0 0 0 1: the tokens after positions 1, 2 and 6 are response tokens
    assert layout.targets.tolist() == [1, 2, 6]


def _forward(model, batch: dict):
    model.zero_grad(set_to_none=True)
    logps, mask, entropy = logprobs.forward_token_logps(model, batch, return_entropy=True)  # (N, K) x 3
    (logps * torch.arange(1, logps.shape[1] + 1)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), mask, entropy, grads


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_a_batch_with_its_layout_gives_the_same_log_probs_entropies_and_gradients(tiny_model, packed, fused,
                                                                                  monkeypatch):
    if not fused:
        monkeypatch.setattr(logprobs, "fused_head", lambda model: None)
    model = lora_with_random_b(tiny_model)
    batch = {**ragged_pairs(3), PADDING_FREE: packed}
    plain = _forward(model, batch)
    laid = _forward(model, {**batch, LAYOUT: host_layout(batch["attention_mask"], batch["loss_mask"])})
    assert laid[1].equal(plain[1]) and len(laid[3]) > 0 and laid[3].keys() == plain[3].keys()
    assert_close(laid[0], plain[0], rtol=0, atol=0)
    assert_close(laid[2], plain[2], rtol=0, atol=0)
    for name in plain[3]:
        assert_close(laid[3][name], plain[3][name], rtol=0, atol=0, msg=name)


def test_a_layout_for_other_columns_is_not_used(tiny_model):
    """A sub-batch lined up with the full batch's first column must not take a layout made for its own."""
    batch = ragged_pairs(2)
    first = logprobs.first_response_position(batch["loss_mask"])
    rows = torch.tensor([1, 3])  # their own first response column is 5, the batch's 2
    sub = {k: v[rows] for k, v in batch.items() if k != "index"}
    sub[LAYOUT] = host_layout(sub["attention_mask"], sub["loss_mask"])
    assert sub[LAYOUT].first != first  # the case this test is about
    with torch.no_grad():
        full, _ = logprobs.forward_token_logps(tiny_model, batch)
        part, _ = logprobs.forward_token_logps(tiny_model, sub, first)
    assert_close(part, full[rows], rtol=1e-5, atol=1e-5)


def _host_waits(run) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run().sum().backward()
    return sum(e.count for e in prof.key_averages() if e.key in HOST_WAITS)


@pytest.mark.parametrize("packed", [False, True])
def test_with_a_layout_the_log_prob_code_adds_no_host_waits_to_the_models_own(tiny_model, packed):
    """Counted on the CPU: the operations that would make the host wait for an accelerator. The model's own
    forward has a few (transformers checks its masks); with the layout, the log-prob forward adds none."""
    model = lora_with_random_b(tiny_model)
    batch = {**ragged_pairs(4), PADDING_FREE: packed}
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    if packed:
        ids = batch["input_ids"].flatten()[layout.real][None]  # (1, S)
        bare = lambda: model(input_ids=ids, position_ids=layout.positions[None], use_cache=False).logits
    else:
        bare = lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             use_cache=False).logits  # fmt: skip
    models_own = _host_waits(bare)
    assert _host_waits(lambda: logprobs.forward_token_logps(model, batch)[0]) > models_own  # first column, masks
    assert _host_waits(lambda: logprobs.forward_token_logps(model, {**batch, LAYOUT: layout})[0]) == models_own
