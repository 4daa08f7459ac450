"""pad_to_multiple_of: a batch widened to a multiple of its padded length gives the same log-probs and trains the
same; the widening itself worked out by hand; refused where there are no offline batches to widen."""

from __future__ import annotations

import pytest
import torch
from helpers import ragged_pairs
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.padding import widen_right
from prefopt.errors import PrefoptError
from prefopt.training import offline


def test_widening_by_hand():
    batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "loss_mask": torch.tensor([[0, 1, 1], [0, 1, 0]]), "index": torch.tensor([3, 4])}  # fmt: skip
    wide = widen_right(batch, 4, pad_id=0)
    assert wide["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert wide["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert wide["loss_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]
    assert wide["index"] is batch["index"]  # not a per-column tensor
    assert widen_right(batch, 3, pad_id=0) is batch  # already a multiple
    assert widen_right(batch, 1, pad_id=0) is batch
    assert widen_right(batch, 8, pad_id=2)["input_ids"][0].tolist() == [5, 6, 7, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("shared", [False, True])
def test_a_widened_batch_gives_the_same_log_probs(tiny_model, shared, monkeypatch):
    """The padded forward and the shared-prompt one (which builds its layout from the widened masks)."""
    batch = ragged_pairs(seed=0)  # (8, T)
    wide = widen_right(batch, 16, pad_id=0)  # (8, 16)
    assert wide["input_ids"].shape[1] == 16 > batch["input_ids"].shape[1]

    def run(b: dict):
        layout = logprobs.host_layout(b["attention_mask"], b["loss_mask"])
        b = {**b, logprobs.LAYOUT: layout}
        if shared:
            from prefopt.core.shared_prompt import SHARED_PROMPT, shared_prompt_layout

            b[SHARED_PROMPT] = shared_prompt_layout(b["input_ids"], b["attention_mask"], b["loss_mask"],
                                                    layout.first, layout.response)
        return logprobs.forward_token_logps(tiny_model, b)  # (N, K) each

    (logps, mask), (wide_logps, wide_mask) = run(batch), run(wide)
    k = logps.shape[1]
    assert wide_logps.shape[1] > k and not wide_mask[:, k:].any()  # the added columns hold no response token
    assert_close(wide_logps[:, :k], logps, atol=1e-5, rtol=1e-5)
    assert_close(wide_mask[:, :k], mask)


@pytest.mark.e2e
@pytest.mark.parametrize("algo", ["dpo", "kto"])
def test_a_widened_run_trains_like_a_plain_one(tmp_path, tiny_model_dir, algo, monkeypatch):
    from helpers import assert_option_trains_alike

    assert_option_trains_alike(tmp_path, tiny_model_dir, algo, "pad_to_multiple_of", offline, "widen_right",
                               monkeypatch, values=(1, 64))


def test_pad_to_multiple_of_is_refused_for_online_methods_and_out_of_range(tmp_path, tiny_model_dir, capsys):
    from helpers import assert_option_refused

    from prefopt.training.config import RunConfig

    assert_option_refused(tmp_path, tiny_model_dir, "grpo", "pad_to_multiple_of=64", capsys,
                          "option 'pad_to_multiple_of'", "grpo")
    with pytest.raises(PrefoptError, match="option 'pad_to_multiple_of'"):
        RunConfig(pad_to_multiple_of=0)
