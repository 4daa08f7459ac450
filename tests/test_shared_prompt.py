"""Shared prompts: a pair batch run as one [prompt, chosen, rejected] row per pair gives the padded forward's
log-probs, entropies and gradients (fp32, tiny Llama, LoRA and full), and its layout is what the module says."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from prefopt.core import logprobs
from prefopt.core.logprobs import LAYOUT, host_layout
from prefopt.core.shared_prompt import SHARED_PROMPT, shared_prompt_layout
from prefopt.data import TokenizedPair, collate_pairs

SHAPES = [(3, 2, 6), (7, 5, 1), (2, 9, 4), (5, 3, 3)]  # (prompt, chosen, rejected) lengths


def _pairs(seed: int, shapes=SHAPES) -> dict:
    """Pairs of ragged lengths, collated the way training does (right padding, chosen rows then rejected)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 300, (n,), generator=g).tolist()

    pairs = [TokenizedPair(i, ids(p), ids(c), ids(r)) for i, (p, c, r) in enumerate(shapes)]
    return collate_pairs(pairs, pad_id=0)


def _with_layouts(batch: dict, shared: bool = True) -> dict:
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    out = {**batch, LAYOUT: layout}
    if shared:
        out[SHARED_PROMPT] = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                                  layout.first, layout.response)
        assert out[SHARED_PROMPT] is not None
    return out


def _lora(model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _run(model, batch: dict):
    model.zero_grad(set_to_none=True)
    logps, mask, entropy = logprobs.forward_token_logps(model, batch, return_entropy=True)  # (N, K)
    (logps * torch.arange(1, logps.shape[1] + 1)).sum().backward()  # position-dependent weights
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return logps.detach(), mask, entropy, grads


def test_the_layout_of_one_pair_by_hand():
    """Prompt [11, 12], chosen [21, 22, 23], rejected [31]: the row, positions, mask and predicting states."""
    batch = collate_pairs([TokenizedPair(0, [11, 12], [21, 22, 23], [31])], pad_id=0)  # (2, 5)
    layout = host_layout(batch["attention_mask"], batch["loss_mask"])
    assert layout.first == 2 and layout.response.tolist() == [0, 1, 2, 3]  # (2, 3) grid: 3 chosen, 1 rejected
    shared = shared_prompt_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], layout.first,
                                  layout.response)
    assert shared.input_ids.tolist() == [[11, 12, 21, 22, 23, 31]]
    assert shared.position_ids.tolist() == [[0, 1, 2, 3, 4, 2]]
    allowed = shared.attention_mask[0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0],
                       [1, 1, 0, 0, 0, 1]]  # fmt: skip
    # chosen 21, 22, 23 from states 1, 2, 3; rejected 31 from the prompt's last state, 1
    assert shared.states.tolist() == [1, 2, 3, 1]


def test_padding_rows_attend_to_themselves_only():
    batch = _with_layouts(_pairs(0))
    shared = batch[SHARED_PROMPT]
    lengths = [p + c + r for p, c, r in SHAPES]
    assert shared.input_ids.shape == (4, max(lengths))  # one row per pair: 4 x 14 cells instead of 8 x 13
    for i, n in enumerate(lengths):
        for q in range(n, shared.input_ids.shape[1]):
            assert shared.attention_mask[i, 0, q].nonzero().flatten().tolist() == [q]
        assert not shared.attention_mask[i, 0, :n, n:].any()  # no real token sees padding


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_shared_prompts_give_the_padded_log_probs_entropies_and_gradients(tiny_model, adapter):
    model = _lora(tiny_model) if adapter == "lora" else tiny_model
    batch = _pairs(0)
    padded = _run(model, _with_layouts(batch, shared=False))
    shared = _run(model, _with_layouts(batch))
    assert shared[0].shape == padded[0].shape and shared[1].equal(padded[1])
    assert_close(shared[0], padded[0], rtol=1e-5, atol=1e-5)
    assert_close(shared[2], padded[2], rtol=1e-5, atol=1e-5)
    assert (shared[0][shared[1] == 0] == 0).all()
    assert shared[3].keys() == padded[3].keys() and len(shared[3]) > 0
    for name in padded[3]:
        assert_close(shared[3][name], padded[3][name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_reply_never_sees_the_other_reply_or_the_padding(tiny_model):
    """Changing pair 0's chosen reply (or every pad id) leaves its rejected log-probs, and every other pair's,
    unchanged."""
    batch = _pairs(1)
    with torch.no_grad():
        before, _ = logprobs.forward_token_logps(tiny_model, _with_layouts(batch))
        changed = batch["input_ids"].clone()
        p, c, _ = SHAPES[0]
        changed[0, p : p + c] = torch.tensor([5, 6])  # pair 0's chosen reply
        changed[batch["attention_mask"] == 0] = 7  # every pad id
        after, _ = logprobs.forward_token_logps(tiny_model, _with_layouts({**batch, "input_ids": changed}))
    assert not torch.equal(before[0], after[0])
    assert_close(after[1:], before[1:], rtol=1e-6, atol=1e-6)


def test_batches_that_are_not_shared_prompt_pairs_are_left_padded():
    batch = _pairs(2)
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
    gap[0, SHAPES[0][0] + 1] = 0  # a hole in pair 0's chosen reply
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
    import json

    from helpers import write_learnable_pairs

    import prefopt

    shared_forwards = []
    real = logprobs._shared_token_logps
    monkeypatch.setattr(logprobs, "_shared_token_logps", lambda *a, **k: shared_forwards.append(1) or real(*a, **k))
    data = str(write_learnable_pairs(tmp_path / "p.jsonl", 24))
    runs = {}
    for mode in (False, True):
        assert not shared_forwards  # nothing shared in the share_prompt=false run
        out = tmp_path / str(mode)
        prefopt.run(algo=algo, data=data, model=str(tiny_model_dir), output_dir=str(out), steps=3, batch_size=4,
                    eval_size=4, max_length=48, precision="fp32", progress=False, lora_r=4, lora_alpha=8,
                    reference="adapter", share_prompt=mode)  # fmt: skip
        runs[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(shared_forwards) >= 3  # every step's reference forward (and DPO's policy forward) went shared
    assert len(runs[True]) == len(runs[False]) > 3
    for shared, padded in zip(runs[True], runs[False]):
        assert shared.keys() == padded.keys()
        for key, value in padded.items():
            if isinstance(value, float) and "seconds" not in key and key not in ("tokens_per_second", "peak_rss_mb"):
                assert shared[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (key, shared["step"])


@pytest.mark.parametrize("algo", ["reward", "sft", "grpo"])
def test_share_prompt_is_refused_where_there_are_no_pairs_to_share(tmp_path, tiny_model_dir, algo, capsys):
    from helpers import run_cli, write_learnable_pairs

    data = write_learnable_pairs(tmp_path / "p.jsonl", 16)
    code = run_cli(["run", "--algo", algo, f"data={data}", f"model={tiny_model_dir}", "share_prompt=true",
                    f"output_dir={tmp_path / 'out'}", "steps=1", "eval_size=4", "progress=false"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "option 'share_prompt'" in err[0] and algo in err[0]
    assert not (tmp_path / "out").exists()


def test_share_prompt_with_padding_free_or_on_a_model_that_cannot_is_refused(tmp_path, tiny_model_dir, capsys,
                                                                            monkeypatch):
    from helpers import run_cli, write_learnable_pairs

    from prefopt.training import offline

    data = write_learnable_pairs(tmp_path / "p.jsonl", 16)
    common = ["run", "--algo", "dpo", f"data={data}", f"model={tiny_model_dir}", "share_prompt=true", "steps=1",
              "eval_size=4", "progress=false"]
    code = run_cli([*common, "padding_free=true", f"output_dir={tmp_path / 'both'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'share_prompt' and 'padding_free'" in err[0]
    assert not (tmp_path / "both").exists()
    monkeypatch.setattr(offline, "share_prompt_support", lambda model: "its attention implementation is 'eager'")
    code = run_cli([*common, f"output_dir={tmp_path / 'eager'}"])
    err = capsys.readouterr().err.strip().splitlines()
    # after the model is loaded (its loading bar may come first): the error is the one last line
    assert code == 2 and "cannot run prompts once" in err[-1] and "eager" in err[-1]
    assert not any("Traceback" in line or "cannot run" in line for line in err[:-1])
    assert not (tmp_path / "eager").exists()
