"""Shared prompts: a pair batch run as one [prompt, chosen, rejected] row per pair gives the padded forward's
log-probs, entropies and gradients (fp32, tiny Llama, LoRA and full), and its layout is what the module says."""

from __future__ import annotations

import pytest
import torch
from helpers import RAGGED_SHAPES, lora_with_random_b, ragged_pairs
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.logprobs import LAYOUT, host_layout
from prefopt.core.shared_prompt import SHARED_PROMPT, consecutive_groups, pair_groups, shared_prompt_layout
from prefopt.data import TokenizedPair, collate_pairs


def _with_layouts(batch: dict, shared: bool = True, packed: bool = False) -> dict:
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    out = {**batch, LAYOUT: layout}
    if shared:
        out[SHARED_PROMPT] = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                                  layout.first, layout.response, packed=packed)
        assert out[SHARED_PROMPT] is not None
    return out


def _run(model, batch: dict):
    model.zero_grad(set_to_none=True)
    logps, mask, entropy = logprobs.forward_token_logps(model, batch, return_entropy=True)  # (N, K)
    (logps * torch.arange(1, logps.shape[1] + 1)).sum().backward()  # position-dependent weights
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return logps.detach(), mask, entropy, grads


def _assert_same(got, want):
    """Two _run results: the same mask, log-probs and entropies to 1e-5, gradients of the same parameters."""
    assert got[0].shape == want[0].shape and got[1].equal(want[1])
    assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)
    assert (got[0][got[1] == 0] == 0).all()
    assert got[3].keys() == want[3].keys() and len(got[3]) > 0
    for name in want[3]:
        assert_close(got[3][name], want[3][name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_layout_of_one_pair_by_hand():
    """Prompt [11, 12], chosen [21, 22, 23], rejected [31]: the row, positions, mask and predicting states."""
    batch = collate_pairs([TokenizedPair(0, [11, 12], [21, 22, 23], [31])], pad_id=0)  # (2, 5)
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    assert layout.first == 2 and layout.response.tolist() == [0, 1, 2, 3]  # (2, 3) grid: 3 chosen, 1 rejected
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response, packed=True)
    assert shared.input_ids.tolist() == [[11, 12, 21, 22, 23, 31]]
    assert shared.position_ids.tolist() == [[0, 1, 2, 3, 4, 2]]
    allowed = shared.rows_attention_mask()[0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0],
                       [1, 1, 0, 0, 0, 1]]  # fmt: skip
    # chosen 21, 22, 23 from states 1, 2, 3; rejected 31 from the prompt's last state, 1
    assert shared.states.tolist() == [1, 2, 3, 1]
    assert shared.real.tolist() == [0, 1, 2, 3, 4, 5] and shared.packed_states.tolist() == [1, 2, 3, 1]


def test_the_packed_tokens_of_two_pairs_by_hand():
    """Pair 0: prompt 1, chosen 1, rejected 2 (4 cells); pair 1: prompt 2, chosen 2, rejected 1 (5 cells). T' = 5:
    cell 4 of row 0 is padding, so the packed tokens are flat cells 0-3 and 5-9."""
    pairs = [TokenizedPair(0, [11], [21], [31, 32]), TokenizedPair(1, [12, 13], [22, 23], [33])]
    batch = collate_pairs(pairs, pad_id=0)  # (4, 4)
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response, packed=True)
    assert shared.input_ids.tolist() == [[11, 21, 31, 32, 0], [12, 13, 22, 23, 33]]
    assert shared.real.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    # states (flat cells): pair 0 chosen 21 <- 0, rejected 31 <- 0, 32 <- 2; pair 1 chosen 22 <- 6, 23 <- 7,
    # rejected 33 <- 6; in grid order (chosen rows, then rejected rows)
    assert shared.states.tolist() == [0, 6, 7, 0, 2, 6]
    assert shared.packed_states.tolist() == [0, 5, 6, 0, 2, 5]  # cells 6, 7 are packed tokens 5, 6
    assert torch.equal(shared.real[shared.packed_states], shared.states)
    rows = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                layout.response)
    assert rows.real is None and rows.packed_states is None and rows.to("cpu").real is None  # not asked to pack


def test_a_packed_layout_builds_its_rows_mask_only_when_asked():
    """The packed forward attends by spans, so a packed layout carries no (G, 1, T', T') mask; a forward that
    runs the rows after all gets the same mask the unpacked layout holds."""
    batch = ragged_pairs(0)
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    args = (batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first, layout.response)
    rows, packed = shared_prompt_layout(*args), shared_prompt_layout(*args, packed=True)
    assert packed.attention_mask is None and packed.to("cpu").attention_mask is None
    assert rows.attention_mask is not None and rows.rows_attention_mask() is rows.attention_mask
    assert torch.equal(packed.rows_attention_mask(), rows.attention_mask)
    assert packed.lengths == rows.lengths == tuple((p, (c, r)) for p, c, r in RAGGED_SHAPES)


def test_padding_rows_attend_to_themselves_only():
    batch = _with_layouts(ragged_pairs(0))
    shared = batch[SHARED_PROMPT]
    lengths = [p + c + r for p, c, r in RAGGED_SHAPES]
    assert shared.input_ids.shape == (4, max(lengths))  # one row per pair: 4 x 14 cells instead of 8 x 13
    for i, n in enumerate(lengths):
        for q in range(n, shared.input_ids.shape[1]):
            assert shared.attention_mask[i, 0, q].nonzero().flatten().tolist() == [q]
        assert not shared.attention_mask[i, 0, :n, n:].any()  # no real token sees padding


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_shared_prompts_give_the_padded_log_probs_entropies_and_gradients(tiny_model, adapter):
    model = lora_with_random_b(tiny_model) if adapter == "lora" else tiny_model
    batch = ragged_pairs(0)
    padded = _run(model, _with_layouts(batch, shared=False))
    shared = _run(model, _with_layouts(batch))
    _assert_same(shared, padded)


def test_groups_of_consecutive_rows_by_hand():
    """Two prompts with three completions each, rows 0-2 and 3-5 (an online batch): prompt [11] with completions
    [21], [22, 23], [24]; prompt [12, 13] with [25], [26], [27, 28]."""
    from prefopt.core.generate import Rollout

    rollout = Rollout(prompt_ids=torch.tensor([[0, 11]] * 3 + [[12, 13]] * 3),
                      prompt_mask=torch.tensor([[0, 1]] * 3 + [[1, 1]] * 3),
                      response_ids=torch.tensor([[21, 0], [22, 23], [24, 0], [25, 0], [26, 0], [27, 28]]),
                      response_mask=torch.tensor([[1, 0], [1, 1], [1, 0], [1, 0], [1, 0], [1, 1]]),
                      logprobs=torch.zeros(6, 2))  # fmt: skip
    ids, attention, loss = rollout.sequences()  # (6, 4) right-padded
    layout = host_layout(attention, loss)
    assert layout.first == 1 and consecutive_groups(6, 3).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert consecutive_groups(6, 4) is None and consecutive_groups(6, 1) is None
    shared = shared_prompt_layout(ids, attention, loss, layout.first, layout.response, packed=True,
                                  groups=consecutive_groups(6, 3))
    assert shared.input_ids.tolist() == [[11, 21, 22, 23, 24, 0], [12, 13, 25, 26, 27, 28]]
    assert shared.position_ids.tolist() == [[0, 1, 1, 2, 1, 0], [0, 1, 2, 2, 2, 3]]
    assert shared.rows_attention_mask()[1, 0].int().tolist() == [[1, 0, 0, 0, 0, 0],
                                                          [1, 1, 0, 0, 0, 0],
                                                          [1, 1, 1, 0, 0, 0],
                                                          [1, 1, 0, 1, 0, 0],
                                                          [1, 1, 0, 0, 1, 0],
                                                          [1, 1, 0, 0, 1, 1]]  # fmt: skip
    assert shared.rows_attention_mask()[0, 0, 5].nonzero().flatten().tolist() == [5]  # padding sees itself only
    # grid (6, 3), row after row: 21 <- cell 0; 22 <- 0, 23 <- 2; 24 <- 0; 25 <- 7; 26 <- 7; 27 <- 7, 28 <- 10
    assert shared.states.tolist() == [0, 0, 2, 0, 7, 7, 7, 10]
    assert shared.real.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert shared.packed_states.tolist() == [0, 0, 2, 0, 6, 6, 6, 9]
    assert pair_groups(4).tolist() == [[0, 2], [1, 3]] and pair_groups(3) is None
    other = ids.clone()
    other[4, 0] = 99  # row 4's prompt differs from its group's
    assert shared_prompt_layout(other, attention, loss, layout.first, layout.response,
                                groups=consecutive_groups(6, 3)) is None
    assert shared_prompt_layout(ids, attention, loss, layout.first, layout.response,
                                groups=torch.tensor([[0, 1, 2], [3, 4, 4]])) is None  # row 5 in no group


@pytest.mark.parametrize("packed", [False, True])
def test_groups_of_completions_give_the_padded_log_probs_entropies_and_gradients(tiny_model, packed):
    """Three rows per prompt (ragged completions), LoRA: one shared row per group, as the rows compute."""
    from prefopt.core.attention import use_cpu_attention
    from prefopt.data.batching import _response_rows

    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, 300, (n,), generator=g).tolist()
    prompts, completions = [], []
    for prompt, replies in ((ids(4), (3, 7, 1)), (ids(9), (5, 2, 6))):
        prompts += [prompt] * 3
        completions += [ids(n) for n in replies]
    batch = _response_rows(prompts, completions, pad_id=0)  # (6, T) right-padded, as an online batch
    model = lora_with_random_b(tiny_model)
    if packed:
        assert use_cpu_attention(model, "cpu")
    padded = _run(model, _with_layouts(batch, shared=False))
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response, packed=packed, groups=consecutive_groups(6, 3))
    assert shared.input_ids.shape == (2, 9 + 13)  # the longer group: 9 prompt + 13 completion tokens
    grouped = _run(model, {**batch, LAYOUT: layout, SHARED_PROMPT: shared})
    _assert_same(grouped, padded)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_packed_tokens_attended_by_spans_give_the_padded_log_probs_entropies_and_gradients(tiny_model, adapter):
    """With prefopt's CPU attention the shared rows run packed, (1, S), attended span by span."""
    from prefopt.core.attention import use_cpu_attention

    model = lora_with_random_b(tiny_model) if adapter == "lora" else tiny_model
    batch = ragged_pairs(0)
    padded = _run(model, _with_layouts(batch, shared=False))
    shapes = []
    embed = model.get_input_embeddings()
    hook = embed.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    _run(model, _with_layouts(batch, packed=True))  # plain SDPA cannot attend packed tokens: runs the rows
    assert not logprobs.attends_spans(model) and shapes == [(4, 15)]
    assert use_cpu_attention(model, "cpu") and logprobs.attends_spans(model)
    packed = _run(model, _with_layouts(batch, packed=True))
    hook.remove()
    assert shapes[1:] == [(1, sum(p + c + r for p, c, r in RAGGED_SHAPES))]  # one packed sequence, no padding
    _assert_same(packed, padded)


def test_a_reply_never_sees_the_other_reply_or_the_padding(tiny_model):
    """Changing pair 0's chosen reply (or every pad id) leaves its rejected log-probs, and every other pair's,
    unchanged."""
    batch = ragged_pairs(1)
    with torch.no_grad():
        before, _ = logprobs.forward_token_logps(tiny_model, _with_layouts(batch))
        changed = batch["input_ids"].clone()
        p, c, _ = RAGGED_SHAPES[0]
        changed[0, p : p + c] = torch.tensor([5, 6])  # pair 0's chosen reply
        changed[batch["attention_mask"] == 0] = 7  # every pad id
        after, _ = logprobs.forward_token_logps(tiny_model, _with_layouts({**batch, "input_ids": changed}))
    assert not torch.equal(before[0], after[0])
    assert_close(after[1:], before[1:], rtol=1e-6, atol=1e-6)


def test_batches_that_are_not_shared_prompt_pairs_are_left_padded():
    batch = ragged_pairs(2)
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])

    def shared(ids=None, loss=None, rows=None):
        ids = batch["input_ids"] if ids is None else ids
        loss = batch["loss_mask"] if loss is None else loss
        attn = batch["attention_mask"]
        if rows is not None:
            ids, loss, attn = ids[rows], loss[rows], attn[rows]
        return shared_prompt_layout(ids, attn, loss, layout.first, layout.response)

    other = batch["input_ids"].clone()
    other[5, 0] += 1  # pair 1's rejected row has another prompt
    assert shared(ids=other) is None
    gap = batch["loss_mask"].clone()
    gap[0, RAGGED_SHAPES[0][0] + 1] = 0  # a hole in pair 0's chosen reply
    assert shared(loss=gap) is None
    assert shared(rows=torch.tensor([0, 1, 2])) is None  # an odd number of rows


def test_auto_shares_prompts_on_a_cpu_with_sdpa_and_the_fused_head(tiny_model):
    assert logprobs.share_prompt_support(tiny_model) is None
    assert logprobs.use_shared_prompt("auto", tiny_model, "cpu")
    assert logprobs.use_shared_prompt(True, tiny_model, "cuda")
    assert not logprobs.use_shared_prompt("auto", tiny_model, "cuda")  # not measured on CUDA: padded there
    assert not logprobs.use_shared_prompt(False, tiny_model, "cpu")
    tiny_model.config._attn_implementation = "eager"  # eager attention adds the mask as floats: not this layout
    assert "not sdpa" in logprobs.share_prompt_support(tiny_model)
    assert not logprobs.use_shared_prompt(True, tiny_model, "cpu")


def test_the_option_reads_as_a_user_types_it():
    from prefopt.training.config import RunConfig, build, parse_overrides

    assert RunConfig().share_prompt == "auto"
    for text, value in (("true", True), ("on", True), ("false", False), ("off", False), ("auto", "auto")):
        assert build(RunConfig, parse_overrides([f"share_prompt={text}"])).share_prompt == value


@pytest.mark.e2e
@pytest.mark.parametrize("algo", ["dpo", "kto"])
def test_a_shared_prompt_run_trains_like_a_padded_one(tmp_path, tiny_model_dir, algo, monkeypatch):
    """DPO (policy and adapter-reference forwards shared) and KTO (its reference forward of whole pair batches
    shared; the policy's half batches padded) log the same numbers either way."""
    from helpers import assert_option_trains_alike

    assert_option_trains_alike(tmp_path, tiny_model_dir, algo, "share_prompt", logprobs, "_shared_token_logps",
                               monkeypatch)


@pytest.mark.parametrize("algo", ["reward", "sft", "ppo"])
def test_share_prompt_is_refused_where_there_are_no_pairs_to_share(tmp_path, tiny_model_dir, algo, capsys):
    from helpers import assert_option_refused

    assert_option_refused(tmp_path, tiny_model_dir, algo, "share_prompt=true", capsys, "option 'share_prompt'", algo)


def test_share_prompt_with_padding_free_or_on_a_model_that_cannot_is_refused(tmp_path, tiny_model_dir, capsys,
                                                                            monkeypatch):
    from helpers import run_cli, write_learnable_pairs

    from prefopt.training import policy

    data = write_learnable_pairs(tmp_path / "p.jsonl", 16)
    common = ["run", "--algo", "dpo", f"data={data}", f"model={tiny_model_dir}", "share_prompt=true", "steps=1",
              "eval_size=4", "progress=false"]
    code = run_cli([*common, "padding_free=true", f"output_dir={tmp_path / 'both'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'share_prompt' and 'padding_free'" in err[0]
    assert not (tmp_path / "both").exists()
    monkeypatch.setattr(policy, "share_prompt_support", lambda model: "its attention implementation is 'eager'")
    code = run_cli([*common, f"output_dir={tmp_path / 'eager'}"])
    err = capsys.readouterr().err.strip().splitlines()
    # after the model is loaded (its loading bar may come first): the error is the one last line
    assert code == 2 and "cannot run prompts once" in err[-1] and "eager" in err[-1]
    assert not any("Traceback" in line or "cannot run" in line for line in err[:-1])
    assert not (tmp_path / "eager").exists()


def test_share_prompt_on_an_online_model_that_cannot_is_refused(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from helpers import run_cli, write_prompts

    from prefopt.training import policy

    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    monkeypatch.setattr(policy, "share_prompt_support", lambda model: "its attention implementation is 'eager'")
    code = run_cli(["run", "--algo", "grpo", f"data={prompts}", f"model={tiny_model_dir}", "share_prompt=true",
                    "steps=1", "batch_size=2", "max_new_tokens=2", "eval_size=2", "progress=false",
                    f"output_dir={tmp_path / 'out'}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "option 'share_prompt'" in err[-1] and "eager" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out").exists()
