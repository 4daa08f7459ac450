"""Batched sampling with a KV cache (prefopt.core.generate).

The tiny random Llama has tied embeddings and small weights, so greedy
decoding just repeats the last prompt token. `_lively` scales its matrices so
the next token depends on the whole context: a wrong mask or a stale cache
then changes the output.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from helpers import perturb_lora

from prefopt.core.generate import Rollout, SamplingConfig, generate, top_p_filter
from prefopt.core.logprobs import forward_logps, token_logps
from prefopt.core.models import LoraSettings, load_model
from prefopt.data import render_prompt
from prefopt.errors import PrefoptError

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")

QUESTIONS = ["What is 12 plus 7?", "Yes", "The capital of France is Paris. The capital", "good bad", "0 1 2 3 4"]


def _prompts(tokenizer) -> list[list[int]]:
    """Chat prompts of different lengths (20, 13, 27, 17, 17 tokens); each contains
    <|im_end|>, which is also the pad id: prompt masks must not come from ids."""
    return [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _lively(model):
    """Scale every matrix by 8: a context-sensitive random model (see module docstring)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


class _EosBias(torch.nn.Module):
    """A real model whose EOS logit is raised, so rows stop at different lengths."""

    def __init__(self, model, eos: int, bias: float):
        super().__init__()
        self.model, self.eos, self.bias = model, eos, bias
        self.generation_config = model.generation_config

    def forward(self, cache=None, **kwargs):  # names `cache` so generate passes the KV cache by that name
        out = self.model(cache=cache, **kwargs)
        logits = out.logits.clone()
        logits[..., self.eos] += self.bias
        out["logits"] = logits
        return out


# ------------------------------------------------------------------ 1. greedy == HF


def test_greedy_equals_transformers_generate_batched_and_alone(tiny_tokenizer, tiny_model):
    """Left padding + masks: each row equals HF greedy on the whole left-padded batch
    and on the prompt alone (no padding at all), token for token."""
    model, tok = _lively(tiny_model), tiny_tokenizer
    prompts = _prompts(tok)
    rollout = generate(model, tok, prompts, SamplingConfig(max_new_tokens=10, temperature=0), batch_size=3)
    assert rollout.response_ids.shape == (5, 10) and bool(rollout.response_mask.all())

    batch = model.generate(
        input_ids=rollout.prompt_ids, attention_mask=rollout.prompt_mask, max_new_tokens=10, do_sample=False
    )[:, rollout.prompt_ids.shape[1] :]  # (5, 10)
    assert torch.equal(batch, rollout.response_ids)
    for p, ours in zip(prompts, rollout.response_ids):
        alone = model.generate(input_ids=torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p) :]
        assert alone.tolist() == ours.tolist()
    assert len({tuple(r) for r in rollout.response_ids.tolist()}) == 5  # the check is not vacuous
    assert len({len(p) for p in prompts}) == 4


# ------------------------------------------------- 2. logprobs == teacher forcing


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9), (0.0, 1.0)])
def test_logprobs_equal_a_teacher_forced_forward_over_sequences(tiny_tokenizer, tiny_model, temperature, top_p):
    """The KV-cache log-probs equal log softmax(logits / T) of one fresh forward over the
    re-packed right-padded rows (T = 1 for greedy; top-p truncation not included)."""
    tok = tiny_tokenizer
    model = _EosBias(_lively(tiny_model), tok.eos_token_id, bias=4.0)
    config = SamplingConfig(max_new_tokens=12, temperature=temperature, top_p=top_p, seed=3)
    rollout = generate(model, tok, _prompts(tok), config, batch_size=2)
    lengths = rollout.lengths().tolist()  # EOS ends rows at different steps: masks and padding are exercised
    assert len(set(lengths)) > 1 and max(lengths) > 1, lengths  # and the KV cache is used

    input_ids, attention_mask, loss_mask = rollout.sequences()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, T, V)
    logps, mask = token_logps(logits / (temperature or 1.0), input_ids, loss_mask)  # (N, T-1)
    for row in range(len(input_ids)):
        teacher = logps[row][mask[row].bool()]
        sampled = rollout.logprobs[row][rollout.response_mask[row].bool()]
        torch.testing.assert_close(sampled, teacher, rtol=0, atol=1e-4)
    assert bool((rollout.logprobs[rollout.response_mask == 0] == 0).all())
    if temperature in (0.0, 1.0):  # the same numbers through the training path
        with torch.no_grad():
            sums = forward_logps(model, rollout.batch()).sum
        torch.testing.assert_close(sums, rollout.logprobs.sum(1), rtol=0, atol=1e-4)


def test_sequences_repacks_rows_right_padded():
    """Hand-made rollout: prompt [5 6] / [7], responses [8 EOS] / [9 10 11]; pad = EOS = 2."""
    rollout = Rollout(
        prompt_ids=torch.tensor([[5, 6], [2, 7]]),
        prompt_mask=torch.tensor([[1, 1], [0, 1]]),
        response_ids=torch.tensor([[8, 2, 2], [9, 10, 11]]),
        response_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
        logprobs=torch.zeros(2, 3),
    )
    input_ids, attention_mask, loss_mask = rollout.sequences()
    assert input_ids.tolist() == [[5, 6, 8, 2], [7, 9, 10, 11]]
    assert attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert loss_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    rollout.response_mask = torch.tensor([[1, 0, 0], [1, 1, 1]])  # row 0 now has one response token
    input_ids, attention_mask, loss_mask = rollout.sequences()
    assert input_ids.tolist() == [[5, 6, 8, 2], [7, 9, 10, 11]]
    assert attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert loss_mask.tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]
    assert rollout.lengths().tolist() == [1, 3]


# ------------------------------------------------------------------ 3. determinism


def test_seeded_determinism_independent_of_global_rng(tiny_tokenizer, tiny_model):
    model, tok = _lively(tiny_model), tiny_tokenizer
    prompts = _prompts(tok)

    def run(seed: int) -> Rollout:
        return generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, seed=seed), batch_size=2)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run(0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    torch.manual_seed(999)  # a different global state changes nothing
    b = run(0)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    c = run(1)
    assert not torch.equal(a.response_ids, c.response_ids)


# ------------------------------------------------------------------ 4. top-p


def test_top_p_filter_keeps_the_nucleus():
    """probs (0.15, 0.5, 0.05, 0.3): sorted 0.5, 0.3, 0.15, 0.05 with cumulative
    mass 0.5, 0.8, 0.95, 1.0. The nucleus is the shortest prefix reaching top_p:
    top_p 0.45 -> {0.5}; 0.7 -> {0.5, 0.3}; 0.9 -> {0.5, 0.3, 0.15}; 0.99 -> all;
    1e-9 -> the top token alone."""
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log() + 2.0  # a shift changes nothing
    expected = {0.45: {1}, 0.7: {1, 3}, 0.9: {0, 1, 3}, 0.99: {0, 1, 2, 3}, 1e-9: {1}, 1.0: {0, 1, 2, 3}}
    for top_p, keep in expected.items():
        out = top_p_filter(logits, top_p)
        assert set(torch.isfinite(out).nonzero().flatten().tolist()) == keep, top_p
        assert torch.equal(out[list(keep)], logits[list(keep)])  # kept logits are unchanged
    rows = top_p_filter(torch.stack([logits, logits.flip(0)]), 0.7)  # (2, 4): row-wise
    assert torch.isfinite(rows).tolist() == [[False, True, False, True], [True, False, True, False]]


def test_tiny_top_p_samples_the_greedy_tokens(tiny_tokenizer, tiny_model):
    model, tok = _lively(tiny_model), tiny_tokenizer
    prompts = _prompts(tok)
    greedy = generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, temperature=0))
    nucleus = generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=7))
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    torch.testing.assert_close(nucleus.logprobs, greedy.logprobs)  # both at temperature 1


# ------------------------------------------------------------------ 5. EOS handling


class _Scripted(torch.nn.Module):
    """A fake causal LM that emits a fixed token script per row.

    Rows are told apart by their last prompt token (the key of SCRIPTS); the
    cache it returns is its step count. It records what it was called with.
    """

    V = 32
    EOS2 = 30  # a second stop token, listed only in the generation config

    def __init__(self, scripts: dict[int, list[int]], eos: int):
        super().__init__()
        self.scripts = scripts
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device to be found on
        self.generation_config = SimpleNamespace(eos_token_id=[eos, self.EOS2])
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        assert not self.training and use_cache and logits_to_keep == 1
        step, keys = past_key_values if past_key_values is not None else (0, input_ids[:, -1].tolist())
        self.calls.append({"ids": input_ids, "mask": attention_mask, "positions": position_ids})
        logits = torch.zeros(len(keys), 1, self.V)  # (B, 1, V)
        for row, key in enumerate(keys):
            script = self.scripts[key]
            logits[row, 0, script[min(step, len(script) - 1)]] = 50.0
        return SimpleNamespace(logits=logits, past_key_values=(step + 1, keys))


def test_eos_ends_a_row_and_is_kept_in_the_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = pad = tok.eos_token_id
    scripts = {11: [5, 6, eos, 7, 8], 12: [eos, 9], 13: [20, 21, 22, 23, 24, 25], 14: [4, _Scripted.EOS2, 9]}
    model = _Scripted(scripts, eos).train()
    prompts = [[3, 11], [3, 4, 12], [13], [4, 4, 4, 14]]
    rollout = generate(model, tok, prompts, SamplingConfig(max_new_tokens=5, temperature=0.8), batch_size=4)

    assert rollout.response_ids.tolist() == [
        [5, 6, eos, pad, pad],
        [eos, pad, pad, pad, pad],
        [20, 21, 22, 23, 24],
        [4, _Scripted.EOS2, pad, pad, pad],
    ]
    assert rollout.response_mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert rollout.lengths().tolist() == [3, 1, 5, 2]
    assert rollout.stopped.tolist() == [True, True, False, True]
    assert bool((rollout.logprobs[rollout.response_mask == 0] == 0).all())
    assert bool((rollout.logprobs[rollout.response_mask == 1] > -1e-6).all())  # a 50-logit margin: p ~ 1
    assert rollout.texts(tok) == [tok.decode([5, 6]), "", tok.decode([20, 21, 22, 23, 24]), tok.decode([4])]
    assert model.training  # the caller's mode is restored

    # Explicit left-padded positions (cumsum of the mask - 1, 0 on pads), then one more per step.
    first = model.calls[0]
    assert first["mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert first["positions"].tolist() == [[0, 0, 0, 1], [0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]]
    second = model.calls[1]
    assert second["positions"].flatten().tolist() == [2, 3, 1, 4] and second["mask"].shape == (4, 5)
    assert second["ids"].flatten().tolist() == [5, eos, 20, 4]


def test_generation_stops_when_every_row_has_stopped(tiny_tokenizer):
    """No forward after the last row's stop token; G is the longest response, per micro-batch padded to the max."""
    eos = tiny_tokenizer.eos_token_id
    model = _Scripted({11: [5, eos], 12: [eos], 13: [6, 7, eos]}, eos)
    rollout = generate(
        model, tiny_tokenizer, [[11], [12], [13]], SamplingConfig(max_new_tokens=50, temperature=0), batch_size=2
    )
    assert rollout.response_ids.shape == (3, 3)
    assert rollout.lengths().tolist() == [2, 1, 3]
    assert len(model.calls) == 2 + 3  # batch 1: prompt + 1 step; batch 2: prompt + 2 steps


def test_bad_settings_are_one_line_errors(tiny_tokenizer, tiny_model):
    for config, match in [
        (SamplingConfig(temperature=-1), "temperature"),
        (SamplingConfig(top_p=0), "top_p"),
        (SamplingConfig(max_new_tokens=0), "max_new_tokens"),
    ]:
        with pytest.raises(PrefoptError, match=match):
            generate(tiny_model, tiny_tokenizer, [[1, 2]], config)
    with pytest.raises(PrefoptError, match="empty"):
        generate(tiny_model, tiny_tokenizer, [[1, 2], []], SamplingConfig())


# ------------------------------------------------------------ 6. LoRA / QLoRA


def _fixed_batch(prompts: list[list[int]], response: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + the same response per row, as the collators build them."""
    width = max(len(p) for p in prompts) + len(response)
    batch = {
        k: torch.zeros(len(prompts), width, dtype=torch.long) for k in ("input_ids", "attention_mask", "loss_mask")
    }
    batch["input_ids"].fill_(pad_id)
    for row, p in enumerate(prompts):
        end = len(p) + len(response)
        batch["input_ids"][row, :end] = torch.tensor(p + response)
        batch["attention_mask"][row, :end] = 1
        batch["loss_mask"][row, len(p) : end] = 1
    return batch


def _lora_grads(model, batch: dict) -> dict[str, torch.Tensor]:
    """Gradients of the summed response log-prob w.r.t. every LoRA matrix (training mode)."""
    model.train()
    model.zero_grad(set_to_none=True)
    forward_logps(model, batch).sum.sum().backward()
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
        if ".lora_" in n
    }


@pytest.mark.parametrize("adapter", ["lora", pytest.param("qlora", marks=needs_bnb)])
def test_training_after_generate_reaches_every_lora_parameter(tiny_model_dir, tiny_tokenizer, adapter):
    """generate (eval, no grad), then training forward + backward: every LoRA matrix gets
    a non-zero gradient on rollout.sequences(), and on a fixed batch exactly the gradient
    it got before generating. For QLoRA the bitsandbytes CPU repack is re-armed first:
    generate itself must disarm it (the trap in DESIGN.md: once repacked, backward
    through the 4-bit layers is silently wrong)."""
    tok = tiny_tokenizer
    model = load_model(str(tiny_model_dir), adapter, LoraSettings(r=4, alpha=8))
    perturb_lora(model)
    if adapter == "qlora":
        import bitsandbytes as bnb

        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True  # bitsandbytes' default on AVX512-BF16 CPUs
    prompts = _prompts(tok)[:3]
    fixed = _fixed_batch(prompts, tok("The answer is 19.").input_ids + [tok.eos_token_id], tok.pad_token_id)
    before = _lora_grads(model, fixed)

    rollout = generate(model, tok, prompts, SamplingConfig(max_new_tokens=6, seed=2))
    assert model.training

    after = _lora_grads(model, fixed)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7)
    on_rollout = _lora_grads(model, rollout.batch())
    assert len(on_rollout) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    zero = [n for n, g in on_rollout.items() if not bool(g.abs().sum() > 0)]
    assert not zero, zero
    with torch.no_grad():
        sums = forward_logps(model, rollout.batch()).sum
    torch.testing.assert_close(sums, rollout.logprobs.sum(1), rtol=0, atol=1e-4)


# ------------------------------------------------- 7. groups: k samples per prompt, one prefill


class _Recording(torch.nn.Module):
    """A real model that records the batch size and width of every forward it is given."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.generation_config = model.generation_config
        self.shapes: list[tuple[int, int]] = []

    def forward(self, input_ids, cache=None, **kwargs):
        self.shapes.append(tuple(input_ids.shape))
        return self.model(input_ids=input_ids, cache=cache, **kwargs)


def _assert_same_rollout(a: Rollout, b: Rollout, atol: float = 1e-5) -> None:
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "stopped"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=atol)


def test_groups_greedy_equal_repeated_prompts_with_one_prefill(tiny_tokenizer, tiny_model):
    """Greedy, mixed prompt lengths, EOS at different steps: the k rows of each group are token for token the
    repeated-prompt call's, with their log-probs; the prompts are prefilled once (B rows), then decoded B * k."""
    tok, k = tiny_tokenizer, 3
    model = _Recording(_EosBias(_lively(tiny_model), tok.eos_token_id, bias=4.0))
    prompts = _prompts(tok)  # 20, 13, 27, 17, 17 tokens
    config = SamplingConfig(max_new_tokens=10, temperature=0)
    repeated = generate(model, tok, [p for p in prompts for _ in range(k)], config, batch_size=6)
    model.shapes.clear()
    grouped = generate(model, tok, prompts, config, batch_size=6, num_samples=k)
    _assert_same_rollout(grouped, repeated)
    lengths = grouped.lengths().tolist()
    assert len(set(lengths)) > 1 and max(lengths) > 1, lengths  # masks, padding and the cache are exercised
    # 6 rows per micro-batch = 2 prompts x 3: prefills of 2, 2, 1 prompts, every later forward 6, 6, 3 rows
    prefills = [s for s in model.shapes if s[1] > 1]
    assert [s[0] for s in prefills] == [2, 2, 1]
    assert {s[0] for s in model.shapes if s[1] == 1} <= {6, 3}


def test_groups_layout_and_distinct_samples(tiny_tokenizer, tiny_model):
    """Group i is rows i*k .. i*k+k-1: its prompt repeated, and sequences() starts each row with that prompt;
    at temperature 1 the k samples of a group are not all the same."""
    tok, k = tiny_tokenizer, 4
    model = _lively(tiny_model)
    prompts = _prompts(tok)
    rollout = generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, seed=5), batch_size=8, num_samples=k)
    assert rollout.response_ids.shape[0] == len(prompts) * k and rollout.prompt_ids.shape[0] == len(prompts) * k
    input_ids, attention_mask, loss_mask = rollout.sequences()
    for i, p in enumerate(prompts):
        rows = range(i * k, (i + 1) * k)
        for row in rows:
            assert input_ids[row, : len(p)].tolist() == p
            assert int(attention_mask[row].sum() - loss_mask[row].sum()) == len(p)
        group = {tuple(rollout.response_ids[row].tolist()) for row in rows}
        assert len(group) > 1, i  # k distinct streams, not one draw copied


def test_groups_are_seeded_and_draw_as_the_repeated_call(tiny_tokenizer, tiny_model):
    """Same seed, same groups; another seed, other groups. One generator draws each step over the rows in order,
    so with k dividing batch_size the draws are those of the repeated-prompt call with the same seed."""
    tok, k = tiny_tokenizer, 2
    model = _lively(tiny_model)
    prompts = _prompts(tok)

    def run(seed: int, **kwargs) -> Rollout:
        return generate(model, tok, prompts, SamplingConfig(max_new_tokens=8, seed=seed), batch_size=4, **kwargs)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run(0, num_samples=k)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    _assert_same_rollout(run(0, num_samples=k), a, atol=0)
    assert not torch.equal(run(1, num_samples=k).response_ids, a.response_ids)
    repeated = generate(model, tok, [p for p in prompts for _ in range(k)], SamplingConfig(max_new_tokens=8, seed=0),
                        batch_size=4)
    _assert_same_rollout(a, repeated)


def test_groups_of_one_are_the_plain_call(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    model = _lively(tiny_model)
    config = SamplingConfig(max_new_tokens=6, seed=4, top_p=0.9)
    plain = generate(model, tok, _prompts(tok), config, batch_size=2)
    _assert_same_rollout(generate(model, tok, _prompts(tok), config, batch_size=2, num_samples=1), plain, atol=0)
    with pytest.raises(PrefoptError, match="num_samples"):
        generate(model, tok, _prompts(tok), config, num_samples=0)


def test_group_logprobs_equal_a_teacher_forced_forward(tiny_tokenizer, tiny_model):
    """The sampling log-probs of grouped rows (temperature 0.7) match one fresh forward over rollout.sequences()."""
    tok, temperature = tiny_tokenizer, 0.7
    model = _EosBias(_lively(tiny_model), tok.eos_token_id, bias=4.0)
    config = SamplingConfig(max_new_tokens=10, temperature=temperature, seed=11)
    rollout = generate(model, tok, _prompts(tok), config, batch_size=6, num_samples=3)
    input_ids, attention_mask, loss_mask = rollout.sequences()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N*k, T, V)
    logps, mask = token_logps(logits / temperature, input_ids, loss_mask)  # (N*k, T-1)
    for row in range(len(input_ids)):
        sampled = rollout.logprobs[row][rollout.response_mask[row].bool()]
        torch.testing.assert_close(sampled, logps[row][mask[row].bool()], rtol=0, atol=1e-4)
