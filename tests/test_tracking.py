"""report_to: the same metrics as metrics.jsonl in an experiment tracker (prefopt.training.tracking)."""

from __future__ import annotations

import json

import pytest

import prefopt
from prefopt.errors import PrefoptError
from prefopt.training.config import RunConfig
from prefopt.training.tracking import parse_report_to


def test_report_to_is_checked_before_a_run_starts(monkeypatch):
    assert parse_report_to("none") == [] and parse_report_to("") == []
    with pytest.raises(PrefoptError, match="option 'report_to': unknown tracker 'comet'"):
        RunConfig(report_to="comet")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(PrefoptError, match=r"report_to': wandb is not installed \(pip install wandb\)"):
        RunConfig(report_to="tensorboard,wandb")


@pytest.mark.e2e
def test_tensorboard_gets_every_metrics_row_and_the_options(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from helpers import write_learnable_pairs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    prefopt.run(algo="dpo", data=str(write_learnable_pairs(tmp_path / "p.jsonl", 24)), model=str(tiny_model_dir),
                output_dir=str(out), steps=3, batch_size=4, eval_size=4, max_length=48, precision="fp32",
                progress=False, lora_r=4, lora_alpha=8, report_to="tensorboard")  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (events,) = [p.parent for p in (out / "tracking").rglob("events.out.tfevents.*") if p.parent.name == "run"]
    acc = EventAccumulator(str(events))
    acc.Reload()
    losses = {e.step: e.value for e in acc.Scalars("loss")}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in rows if "loss" in r}, rel=1e-6)
    assert len(losses) == 3
    hparams = list((out / "tracking" / "run").glob("*/hparams.yml"))
    assert hparams and "lr: 0.0002" in hparams[0].read_text()  # the run's options as its configuration


def _wandb_records(path) -> list:
    """The records of an offline wandb run file (run-*.wandb): a 7-byte header, then LevelDB-log blocks of 32 KiB
    whose chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) hold serialised Records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block trailer or padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


@pytest.mark.e2e
def test_wandb_offline_gets_every_metrics_row_and_the_options(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    from helpers import write_learnable_pairs

    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account: the run is written under WANDB_DIR
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    prefopt.run(algo="dpo", data=str(write_learnable_pairs(tmp_path / "p.jsonl", 24)), model=str(tiny_model_dir),
                output_dir=str(out), steps=3, batch_size=4, eval_size=4, max_length=48, precision="fp32",
                progress=False, lora_r=4, lora_alpha=8, report_to="wandb")  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    losses = {h["_step"]: h["loss"] for h in history if "loss" in h}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in rows if "loss" in r}, rel=1e-6)
    assert len(losses) == 3
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}  # fmt: skip
    assert config["lr"] == 0.0002 and config["steps"] == 3 and config["algo"] == "dpo"  # the run's options
