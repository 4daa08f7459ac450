"""A third-party algorithm, pip-installed as its own package, trains through `prefopt run`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_run_args, write_learnable_pairs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prefopt-example-plugin"
PREFOPT = os.path.join(os.path.dirname(sys.executable), "prefopt")


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    build = tmp_path_factory.mktemp("plugin-build")
    # --no-build-isolation: build with the setuptools already installed (works offline)
    pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE), "--cache-dir", str(build))
    yield
    pip("uninstall", "--yes", "prefopt-example-plugin")


def test_plugin_is_listed_and_trains(installed_plugin, tiny_model_dir, tmp_path):
    listed = subprocess.run([PREFOPT, "list"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in listed.splitlines() if line.startswith("example-lndpo"))
    assert "prefopt-example-plugin" in line and "per-token average" in line

    data = write_learnable_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, data, out, "steps=12", "lr=1e-2", "beta=2.0")
    env = {**os.environ}
    proc = subprocess.run([PREFOPT, *map(str, args), "--algo", "example-lndpo"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "example-lndpo"
    assert summary["eval_after"]["eval_accuracy"] > summary["eval_before"]["eval_accuracy"]
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses[-1] < losses[0]
