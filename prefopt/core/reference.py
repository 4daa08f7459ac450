"""Reference log-probs: log pi_ref(y|x) of the frozen starting model.

Three ways to get them, all returning :class:`PairLogps` for a collated pair
batch (see ``prefopt.data.collate_pairs``):

- ``adapter``: the policy itself with its LoRA adapters disabled. LoRA leaves
  the base weights frozen, so "adapters off" *is* the starting model: no
  second copy in memory, one extra no-grad forward per batch.
- ``copy``: a frozen deep copy of the starting model (full fine-tuning, where
  the base weights move). Costs one model's memory.
- ``precomputed``: one pass over the whole dataset before training, cached on
  disk keyed by model + tokenised data; training then does no reference
  forward at all, and a rerun on the same data does not even do that pass.

All shifting and masking happens in ``prefopt.core.logprobs.forward_logps``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from prefopt.core.algorithm import PairLogps
from prefopt.core.logprobs import SequenceLogps, forward_logps, forward_token_logps
from prefopt.core.models import is_peft
from prefopt.errors import PrefoptError

REFERENCE_MODES = ("auto", "adapter", "copy", "precomputed")
_CACHE_VERSION = "1"  # bump when the stored format or the computation changes


class Reference:
    """Gives reference log-probs for a collated batch; never trains."""

    mode: str = ""

    def pair_logps(self, batch: dict) -> PairLogps:
        """Detached (B,) chosen/rejected sums and token counts for the batch's B pairs."""
        raise NotImplementedError

    def token_logps(self, batch: dict) -> torch.Tensor:
        """(N, K) detached token log-probs of N rows, columns as forward_token_logps (online methods)."""
        raise PrefoptError(f"reference '{self.mode}' cannot score new samples")


def resolve_reference_mode(mode: str, adapter: str) -> str:
    """"auto" -> "adapter" when only LoRA weights train (free), "copy" for full fine-tuning."""
    if mode not in REFERENCE_MODES:
        raise PrefoptError(f"reference must be one of {', '.join(REFERENCE_MODES)}, got '{mode}'")
    if mode == "auto":
        return "copy" if adapter == "full" else "adapter"
    if mode == "adapter" and adapter == "full":
        raise PrefoptError(
            "reference 'adapter' needs adapter=lora or qlora (full fine-tuning has no adapter to disable); "
            "use reference=copy or reference=precomputed"
        )
    return mode


@contextlib.contextmanager
def starting_model(policy):
    """The policy as it was at step 0: adapters disabled for LoRA, itself otherwise.

    Only valid for full fine-tuning before the first optimizer step.
    """
    if is_peft(policy):
        with policy.disable_adapter():
            yield policy
    else:
        yield policy


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class AdapterReference(Reference):
    """The policy with LoRA disabled: exactly the frozen base, no extra memory.

    The module's train/eval mode is left as the trainer set it. With adapters
    disabled the LoRA dropout is bypassed too, so the only dropout that could
    still act in train mode is the base model's own (zero for Llama-family
    models); a trainer that wants it off should disable it in the model.
    """

    mode = "adapter"

    def __init__(self, policy, autocast: Callable = contextlib.nullcontext):
        if not is_peft(policy):
            raise PrefoptError("reference 'adapter' needs a LoRA/QLoRA policy")
        self.policy, self.autocast = policy, autocast

    def pair_logps(self, batch: dict) -> PairLogps:
        with self.policy.disable_adapter(), torch.no_grad(), self.autocast():
            seq = forward_logps(self.policy, batch)  # (2B,)
        return PairLogps.from_concatenated(seq.detach())

    def token_logps(self, batch: dict) -> torch.Tensor:
        with self.policy.disable_adapter(), torch.no_grad(), self.autocast():
            return forward_token_logps(self.policy, batch)[0]  # (N, K)


class FrozenCopyReference(Reference):
    """A deep copy of the starting model, frozen and in eval mode (one model of extra memory)."""

    mode = "copy"

    def __init__(self, policy, autocast: Callable = contextlib.nullcontext):
        self.model = copy.deepcopy(policy).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.autocast = autocast

    def pair_logps(self, batch: dict) -> PairLogps:
        with torch.no_grad(), self.autocast():
            seq = forward_logps(self.model, batch)  # (2B,)
        return PairLogps.from_concatenated(seq.detach())

    def token_logps(self, batch: dict) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return forward_token_logps(self.model, batch)[0]  # (N, K)


class PrecomputedReference(Reference):
    """Reference log-probs for every example, computed once and looked up by index.

    Tensors are indexed by ``TokenizedPair.index`` (unknown indices are an
    error, never a silent zero) and kept on the CPU: 4 floats per pair.
    """

    mode = "precomputed"

    def __init__(self, table: dict[str, torch.Tensor], key: str, loaded: bool):
        self.table = table  # chosen_sum, chosen_tokens, rejected_sum, rejected_tokens, known: each (N,)
        self.key = key  # cache file name stem
        self.loaded = loaded  # True when read from the cache (no forward was done)

    def pair_logps(self, batch: dict) -> PairLogps:
        index = batch["index"].cpu()  # (B,)
        if len(index) and (int(index.max()) >= len(self.table["known"]) or not bool(self.table["known"][index].all())):
            missing = [int(i) for i in index if i >= len(self.table["known"]) or not self.table["known"][i]]
            raise PrefoptError(f"no precomputed reference log-probs for example index {missing[0]}; "
                               "pass every example that is trained or evaluated to build_reference")
        device = batch["input_ids"].device
        t = {k: v[index].to(device) for k, v in self.table.items() if k != "known"}  # each (B,)
        return PairLogps(
            chosen=SequenceLogps(t["chosen_sum"], t["chosen_tokens"]),
            rejected=SequenceLogps(t["rejected_sum"], t["rejected_tokens"]),
        )


def build_reference(
    mode: str,
    policy,
    adapter: str,
    *,
    examples=None,
    collate=None,
    batch_size: int = 8,
    fingerprint: str | None = None,
    autocast: Callable = contextlib.nullcontext,
    progress: bool = True,
) -> Reference:
    """Make the reference for `mode` from the policy *before* any training step.

    ``autocast`` is a zero-argument callable returning a context manager (e.g.
    ``functools.partial(prefopt.core.models.autocast, precision, device)``).
    "precomputed" also needs ``examples`` (every pair that will be trained or
    evaluated), ``collate`` (list of examples -> batch) and ``fingerprint``
    (identifies the model and tokenisation settings; the token ids are hashed
    here, so data, chat template and truncation are covered anyway).
    """
    mode = resolve_reference_mode(mode, adapter)
    if mode == "adapter":
        return AdapterReference(policy, autocast)
    if mode == "copy":
        return FrozenCopyReference(policy, autocast)
    if examples is None or collate is None or fingerprint is None:
        raise ValueError("reference 'precomputed' needs examples, collate and fingerprint")
    return _precompute(policy, adapter, list(examples), collate, batch_size, fingerprint, autocast, progress)


# ---------------------------------------------------------------------------
# Precomputed reference: key, compute, cache
# ---------------------------------------------------------------------------


def reference_cache_dir() -> Path:
    from prefopt.core.models import prefopt_home

    return prefopt_home() / "reference"


def _chunks(examples: list, batch_size: int):
    for start in range(0, len(examples), batch_size):
        yield examples[start : start + batch_size]


def _autocast_tag(autocast: Callable, device: torch.device) -> str:
    """What precision the forward will run in: bf16 and fp32 values differ, so they are cached apart."""
    with autocast():
        if torch.is_autocast_enabled(device.type):
            return f"autocast-{torch.get_autocast_dtype(device.type)}"
    return "no-autocast"


def cache_key(fingerprint: str, adapter: str, precision_tag: str, batches: list[dict]) -> str:
    """sha256 of the model fingerprint, what computes the values and every pair's token ids.

    Each row is hashed without its padding, so the key does not depend on the
    batch size used to compute it. QLoRA's 4-bit base differs from the float
    base, hence the adapter in the key.
    """
    h = hashlib.sha256(f"v{_CACHE_VERSION}\0{fingerprint}\0{'qlora' if adapter == 'qlora' else 'float'}\0{precision_tag}\0".encode())
    for batch in batches:
        n = batch["index"].shape[0]
        for i in range(n):  # pair by pair: the same bytes whatever the batching
            h.update(int(batch["index"][i]).to_bytes(8, "little", signed=True))
            for row in (i, n + i):  # chosen, rejected
                keep = batch["attention_mask"][row].bool()  # (T,)
                h.update(batch["input_ids"][row][keep].to(torch.int64).numpy().tobytes())
                h.update(batch["loss_mask"][row][keep].to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _precompute(policy, adapter, examples, collate, batch_size, fingerprint, autocast, progress) -> PrecomputedReference:
    if not examples:
        raise PrefoptError("reference 'precomputed' needs at least one example")
    device = _model_device(policy)
    batches = [collate(chunk) for chunk in _chunks(examples, batch_size)]
    key = cache_key(fingerprint, adapter, _autocast_tag(autocast, device), batches)
    path = reference_cache_dir() / f"{key}.pt"
    table = _load_table(path)
    if table is not None:
        return PrecomputedReference(table, key, loaded=True)
    table = _compute_table(policy, batches, device, autocast, progress)
    _save_table(path, table)
    return PrecomputedReference(table, key, loaded=False)


def _compute_table(policy, batches, device, autocast, progress) -> dict[str, torch.Tensor]:
    """One no-grad pass of the starting model over every batch.

    For full fine-tuning the policy has not been trained yet, so it is its own
    reference: unlike "copy", no second model is ever held in memory.
    """
    from tqdm.auto import tqdm

    size = 1 + max(int(b["index"].max()) for b in batches)
    table = {k: torch.zeros(size) for k in ("chosen_sum", "chosen_tokens", "rejected_sum", "rejected_tokens")}
    table["known"] = torch.zeros(size, dtype=torch.bool)
    total = sum(int(b["index"].shape[0]) for b in batches)
    with tqdm(total=total, desc="reference log-probs", unit="pair", disable=not progress) as bar:
        for batch in batches:
            with starting_model(policy) as model, torch.no_grad(), autocast():
                pair = PairLogps.from_concatenated(forward_logps(model, _to_device(batch, device)))
            index = batch["index"]  # (B,)
            table["chosen_sum"][index] = pair.chosen.sum.float().cpu()
            table["chosen_tokens"][index] = pair.chosen.tokens.float().cpu()
            table["rejected_sum"][index] = pair.rejected.sum.float().cpu()
            table["rejected_tokens"][index] = pair.rejected.tokens.float().cpu()
            table["known"][index] = True
            bar.update(int(index.shape[0]))
    return table


def _load_table(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached table, or None when absent or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, not fatal
        return None
    return table if isinstance(table, dict) and "known" in table else None


def _save_table(path: Path, table: dict[str, torch.Tensor]) -> None:
    """Write to a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
