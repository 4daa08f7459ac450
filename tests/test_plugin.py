"""A third-party algorithm, pip-installed as its own package, trains through `prefopt run`.

The plugin goes into a throwaway folder (pip --target), never the live environment; the CLI runs in a
subprocess with that folder on PYTHONPATH, so its entry points are discovered from there.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_run_args, write_learnable_pairs

pytestmark = pytest.mark.plugin

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prefopt-example-plugin"
DIST = "prefopt-example-plugin"


def live_has_plugin() -> bool:
    return any(d.metadata["Name"] == DIST for d in importlib.metadata.distributions())


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    work = tmp_path_factory.mktemp("plugin")
    # a copy: setuptools builds in the source folder (build/, *.egg-info), which must stay clean
    source = shutil.copytree(EXAMPLE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # --no-build-isolation: build with the setuptools already installed (works offline)
    subprocess.run([sys.executable, "-m", "pip", "--quiet", "install", "--no-deps", "--no-build-isolation",
                    "--no-cache-dir", "--target", str(work / "site"), str(source)],
                   check=True, capture_output=True, text=True)
    return work / "site"


def prefopt(site: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    """`python -m prefopt ...` with the plugin's folder first on PYTHONPATH (cwd: not the source tree)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "prefopt", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, check=False)


def test_plugin_is_listed_and_trains(plugin_site, tiny_model_dir, tmp_path):
    assert not live_has_plugin()
    listed = prefopt(plugin_site, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("example-lndpo"))
    assert "prefopt-example-plugin" in line and "per-token average" in line

    data = write_learnable_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, data, out, "steps=12", "lr=1e-2", "beta=2.0")
    proc = prefopt(plugin_site, tmp_path, *args, "--algo", "example-lndpo")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "example-lndpo"
    assert summary["eval_after"]["eval_accuracy"] > summary["eval_before"]["eval_accuracy"]
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses[-1] < losses[0]
    assert not live_has_plugin()  # the live environment never saw the plugin
