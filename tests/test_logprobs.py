import math

import torch
from torch.testing import assert_close

from prefopt.logprobs import forward_logps, selective_log_softmax, sequence_logps


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
    import prefopt.logprobs as lp

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
