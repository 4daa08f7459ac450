"""Checkpoints that let `--resume` continue exactly where a run stopped.

A checkpoint holds the trainable parameters, the optimizer and scheduler
states, the RNG states and the step. Data order needs no state: it is a pure
function of (seed, epoch), so the resumed run skips the batches already seen.

Under FSDP every parameter and optimizer state is a shard (a DTensor): saving
gathers each whole (a collective every process joins; process 0 writes) and
loading cuts each back into this process's shard. A checkpoint is therefore
the same file whether the run was sharded, data-parallel or one process, and
any of them can resume it.

Checkpoints are untrusted input when resumed (a run folder may come from someone
else): every file is loaded with ``weights_only=True``, so no pickled code runs.
The two newest checkpoints are kept; a latest one that cannot be read falls back
to the one before it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from prefopt.core.fsdp import is_fsdp_unit
from prefopt.errors import PrefoptError
from prefopt.io import atomic_dir, json_line

CHECKPOINTS = "checkpoints"
KEEP = 2  # checkpoints kept: the newest, and one to fall back to if it cannot be read


def _sharded_tensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without public DTensors has no FSDP2 either
        return ()
    return DTensor


def _whole(t: torch.Tensor) -> torch.Tensor:
    """`t` as one process holds it; an FSDP shard is gathered from every process (a collective)."""
    return t.full_tensor() if isinstance(t, _sharded_tensor_type()) else t


def _shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut like `like` (this process's shard of it when `like` is an FSDP shard)."""
    if not isinstance(like, _sharded_tensor_type()):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)


def _register_shards(model) -> None:
    """Make every FSDP unit of `model` expose its sharded parameters (a no-grad forward can leave the root's
    parameters gathered); the optimizer holds those. Nothing to do for an unsharded model."""
    for module in model.modules():
        if is_fsdp_unit(module):
            module.reshard()


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, whole, on the CPU (a collective under FSDP)."""
    _register_shards(model)
    return {n: _whole(p.detach()).cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with every state tensor whole and on the CPU (a collective under FSDP).
    CPU tensors are the optimizer's own, not copies: write them out before the next step."""
    saved = optimizer.state_dict()
    state = {index: {k: _whole(v).cpu() if torch.is_tensor(v) else v for k, v in entry.items()}
             for index, entry in saved["state"].items()}
    return {"state": state, "param_groups": saved["param_groups"]}


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                    write: bool = True) -> Path | None:
    """Write checkpoints/step-NNNNNN atomically, then drop older ones.

    Under FSDP every process calls it (the weights are gathered from all of
    them) and only the one with `write` writes.
    """
    trainable, optim = trainable_state(model), optimizer_state(optimizer)
    if not write:
        return None
    root = Path(out_dir) / CHECKPOINTS
    path = root / f"step-{step:06d}"
    try:
        with atomic_dir(path) as tmp:
            torch.save(trainable, tmp / "trainable.pt")
            torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            (tmp / "state.json").write_text(json_line({**state, "step": step}))
    except OSError as exc:  # a full disk, a folder made read-only: the checkpoints already there are intact
        kept = latest_checkpoint(out_dir)
        raise PrefoptError(f"cannot write the step-{step} checkpoint in '{root}' ({exc.strerror or exc}); "
                           f"last good checkpoint: {kept or 'none'}") from None
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a temp folder of an interrupted save is not one)."""
    return sorted(p for p in (Path(out_dir) / CHECKPOINTS).glob("step-*") if p.is_dir())


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


def read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read and checked without touching a model: {"state", "trainable", "optim",
    "rng"}. A missing, truncated or foreign file is a PrefoptError naming it; nothing pickled is executed."""
    def load(name: str):
        try:
            return torch.load(path / name, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged or unsafe file
            raise PrefoptError(f"checkpoint file '{path / name}' cannot be read "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise PrefoptError(f"checkpoint file '{path / 'state.json'}' cannot be read ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise PrefoptError(f"checkpoint file '{path / 'state.json'}' holds no step")
    return {"state": state, "trainable": load("trainable.pt"), "optim": load("optim.pt"), "rng": load("rng.pt")}


def load_checkpoint(path: Path, model, optimizer, scheduler, saved: dict | None = None) -> dict:
    """Restore everything saved by save_checkpoint; returns its state.json. Under FSDP every process calls
    it and keeps its own shard of each tensor. `saved`: the checkpoint already read by read_checkpoint."""
    saved = saved or read_checkpoint(path)
    trainable, optim, rng = saved["trainable"], saved["optim"], saved["rng"]
    _register_shards(model)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(trainable) != set(params):
        raise PrefoptError(f"checkpoint {path} does not match the model's trainable parameters")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(_shard_like(value, params[name]))
    in_order = [p for group in optimizer.param_groups for p in group["params"]]  # the state dict's indices
    for index, entry in optim["optimizer"]["state"].items():
        param = in_order[index]
        for key, value in entry.items():
            if torch.is_tensor(value) and value.shape == param.shape:  # moments; not AdamW's scalar step
                entry[key] = _shard_like(value, param)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    torch.set_rng_state(rng["torch"])
    random.setstate(_python_rng_state(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return saved["state"]


def _python_rng_state(state):
    """random.setstate wants (version, tuple of 625 ints, gauss); a weights-only load may give lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def remove_checkpoints(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / CHECKPOINTS, ignore_errors=True)
