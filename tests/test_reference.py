"""Reference log-probs: adapter-disabled, frozen copy and precomputed cache agree with the base model."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from helpers import perturb_lora

from prefopt.core import reference as R
from prefopt.core.algorithm import PairLogps
from prefopt.core.logprobs import forward_logps
from prefopt.core.models import LoraSettings, autocast, load_model
from prefopt.core.reference import build_reference, resolve_reference_mode
from prefopt.data import TokenizedPair, collate_pairs
from prefopt.errors import PrefoptError

SMALL_LORA = LoraSettings(r=4, alpha=8)
PROMPTS = ["What is 12 plus 7?", "The capital of France is", "Are you sure?", "Yes or no?", "good or bad", "0 1 2 3"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test gets an empty reference cache."""
    monkeypatch.setenv("PREFOPT_HOME", str(tmp_path / "home"))


@pytest.fixture
def examples(tiny_tokenizer) -> list[TokenizedPair]:
    enc = lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"]
    return [
        TokenizedPair(index=i, prompt_ids=enc(p), chosen_ids=enc(" The answer is 19." * (1 + i % 2)), rejected_ids=enc(" No."))
        for i, p in enumerate(PROMPTS)
    ]


@pytest.fixture
def collate(tiny_tokenizer):
    return functools.partial(collate_pairs, pad_id=tiny_tokenizer.pad_token_id)


def _base_logps(model, batch) -> PairLogps:
    with torch.no_grad():
        return PairLogps.from_concatenated(forward_logps(model, batch))


def _assert_pairs_close(a: PairLogps, b: PairLogps, **tol) -> None:
    for side in ("chosen", "rejected"):
        torch.testing.assert_close(getattr(a, side).sum, getattr(b, side).sum, **tol)
        torch.testing.assert_close(getattr(a, side).tokens, getattr(b, side).tokens, **tol)


def _count_forwards(model, monkeypatch) -> list[int]:
    """Count calls of the transformer backbone's forward (every log-prob path runs it once per forward)."""
    inner = (model.get_base_model() if hasattr(model, "get_base_model") else model).base_model
    calls = [0]
    original = inner.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(inner, "forward", counted)
    return calls


# ------------------------------------------------------------------ mode rules


def test_mode_resolution():
    assert resolve_reference_mode("auto", "lora") == "adapter"
    assert resolve_reference_mode("auto", "qlora") == "adapter"
    assert resolve_reference_mode("auto", "full") == "copy"
    for mode in ("copy", "precomputed"):
        for adapter in ("lora", "qlora", "full"):
            assert resolve_reference_mode(mode, adapter) == mode
    assert resolve_reference_mode("adapter", "lora") == "adapter"
    with pytest.raises(PrefoptError, match="full fine-tuning has no adapter") as err:
        resolve_reference_mode("adapter", "full")
    assert "\n" not in str(err.value)
    with pytest.raises(PrefoptError, match="reference must be one of"):
        resolve_reference_mode("frozen", "lora")


def test_precomputed_needs_its_inputs(tiny_model):
    with pytest.raises(ValueError, match="needs examples, collate and fingerprint"):
        build_reference("precomputed", tiny_model, "full")


# ----------------------------------------------------------------- adapter mode


def test_adapter_reference_is_the_base_model(tiny_model_dir, tiny_model, examples, collate):
    """At start policy == base (B = 0); after the LoRA weights move, the reference still == base."""
    policy = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    ref = build_reference("auto", policy, "lora")
    assert isinstance(ref, R.AdapterReference) and ref.mode == "adapter"
    batch = collate(examples)
    base = _base_logps(tiny_model, batch)

    got = ref.pair_logps(batch)
    _assert_pairs_close(got, base)
    assert not got.chosen.sum.requires_grad

    perturb_lora(policy)
    moved = _base_logps(policy, batch)
    assert (moved.chosen.sum - base.chosen.sum).abs().min() > 1e-3  # the policy changed ...
    _assert_pairs_close(ref.pair_logps(batch), base)  # ... the reference did not
    assert any(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)  # adapters back on


def test_adapter_reference_keeps_train_mode(tiny_model_dir, examples, collate):
    policy = load_model(str(tiny_model_dir), "lora", SMALL_LORA).train()
    build_reference("adapter", policy, "lora").pair_logps(collate(examples))
    assert policy.training


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_adapter_reference_with_qlora(tiny_model_dir, examples, collate):
    policy = load_model(str(tiny_model_dir), "qlora", SMALL_LORA)
    ref = build_reference("auto", policy, "qlora")
    batch = collate(examples)
    start = _base_logps(policy, batch)
    perturb_lora(policy)
    _assert_pairs_close(ref.pair_logps(batch), start)


# -------------------------------------------------------------------- copy mode


def test_copy_reference_survives_training(tiny_model_dir, examples, collate):
    policy = load_model(str(tiny_model_dir), "full")
    ref = build_reference("auto", policy, "full")
    assert isinstance(ref, R.FrozenCopyReference) and ref.mode == "copy"
    assert not any(p.requires_grad for p in ref.model.parameters()) and not ref.model.training
    batch = collate(examples)
    before = ref.pair_logps(batch)
    _assert_pairs_close(before, _base_logps(policy, batch))

    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    policy.train()
    loss = -forward_logps(policy, batch).sum.sum()  # push every response up
    loss.backward()
    optimizer.step()

    after_policy = _base_logps(policy, batch)
    assert (after_policy.chosen.sum - before.chosen.sum).abs().min() > 1e-3
    _assert_pairs_close(ref.pair_logps(batch), before, rtol=0, atol=0)


# ------------------------------------------------------------- precomputed mode


def _precomputed(policy, adapter, examples, collate, fingerprint="model-a|256|128", **kw):
    return build_reference(
        "precomputed", policy, adapter, examples=examples, collate=collate,
        batch_size=kw.pop("batch_size", 4), fingerprint=fingerprint, progress=False, **kw,
    )


def test_precomputed_equals_adapter_mode_and_is_cached(tiny_model_dir, examples, collate, monkeypatch):
    policy = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    perturb_lora(policy)  # the reference must still be the base model, not the (moved) policy
    calls = _count_forwards(policy, monkeypatch)

    first = _precomputed(policy, "lora", examples, collate)
    assert first.mode == "precomputed" and not first.loaded
    assert calls[0] == 2  # 6 pairs in batches of 4
    cache_file = R.reference_cache_dir() / f"{first.key}.pt"
    assert cache_file.is_file()
    assert [p.name for p in cache_file.parent.iterdir()] == [cache_file.name]  # no temp files left

    # Looked up by index, in any order and batching.
    adapter_ref = R.AdapterReference(policy)
    shuffled = collate([examples[i] for i in (4, 0, 5, 2)])
    expected = adapter_ref.pair_logps(shuffled)
    calls[0] = 0
    _assert_pairs_close(first.pair_logps(shuffled), expected)
    assert calls[0] == 0

    second = _precomputed(policy, "lora", examples, collate, batch_size=3)  # batch size is not in the key
    assert second.loaded and second.key == first.key
    assert calls[0] == 0  # cache hit: no forward at all
    _assert_pairs_close(second.pair_logps(shuffled), expected)


def test_precomputed_cache_misses_when_inputs_change(tiny_model_dir, examples, collate, monkeypatch):
    policy = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    calls = _count_forwards(policy, monkeypatch)
    key = _precomputed(policy, "lora", examples, collate).key
    assert calls[0] == 2

    keys = {key}
    changed = list(examples)
    changed[3] = TokenizedPair(3, examples[3].prompt_ids, examples[3].chosen_ids + [5], examples[3].rejected_ids)
    for build in (
        lambda: _precomputed(policy, "lora", examples, collate, fingerprint="model-b|256|128"),  # other weights
        lambda: _precomputed(policy, "lora", changed, collate),  # other data / template / truncation
        lambda: _precomputed(policy, "qlora", examples, collate),  # 4-bit base computes other values
        lambda: _precomputed(policy, "lora", examples, collate, autocast=functools.partial(autocast, "bf16", "cpu")),
    ):
        calls[0] = 0
        ref = build()
        assert not ref.loaded and calls[0] == 2
        keys.add(ref.key)
    assert len(keys) == 5


def test_precomputed_full_uses_the_untrained_policy(tiny_model_dir, examples, collate):
    policy = load_model(str(tiny_model_dir), "full")
    batch = collate(examples)
    copy_values = build_reference("copy", policy, "full").pair_logps(batch)
    ref = _precomputed(policy, "full", examples, collate)
    _assert_pairs_close(ref.pair_logps(batch), copy_values)


def test_precomputed_unknown_index_is_an_error(tiny_model_dir, examples, collate):
    policy = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    ref = _precomputed(policy, "lora", examples[:3], collate)
    with pytest.raises(PrefoptError, match="example index 4"):
        ref.pair_logps(collate([examples[1], examples[4]]))
    sparse = _precomputed(policy, "lora", [examples[0], examples[2]], collate)  # index 1 never computed
    with pytest.raises(PrefoptError, match="example index 1"):
        sparse.pair_logps(collate([examples[1]]))


def test_damaged_cache_file_is_recomputed(tiny_model_dir, examples, collate, monkeypatch):
    policy = load_model(str(tiny_model_dir), "lora", SMALL_LORA)
    first = _precomputed(policy, "lora", examples, collate)
    (R.reference_cache_dir() / f"{first.key}.pt").write_bytes(b"garbage")
    again = _precomputed(policy, "lora", examples, collate)
    assert not again.loaded
    batch = collate(examples)
    _assert_pairs_close(again.pair_logps(batch), first.pair_logps(batch))
