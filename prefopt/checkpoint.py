"""Checkpoints that let `--resume` continue exactly where a run stopped.

A checkpoint holds the trainable parameters, the optimizer and scheduler
states, the RNG states and the step. Data order needs no state: it is a pure
function of (seed, epoch), so the resumed run skips the batches already seen.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from prefopt.io import atomic_dir

CHECKPOINTS = "checkpoints"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, state: dict) -> Path:
    """Write checkpoints/step-NNNNNN atomically, then drop older ones."""
    root = Path(out_dir) / CHECKPOINTS
    path = root / f"step-{step:06d}"
    with atomic_dir(path) as tmp:
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    for old in root.glob("step-*"):
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((Path(out_dir) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore everything saved by save_checkpoint; returns its state.json."""
    saved = torch.load(path / "trainable.pt", map_location="cpu")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise RuntimeError(f"checkpoint {path} does not match the model's trainable parameters")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def remove_checkpoints(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / CHECKPOINTS, ignore_errors=True)
