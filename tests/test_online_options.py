"""Online runs honour every run option, or refuse it in one line before any work.

Each test names the option it checks. PPO stands in for every online method: the
options act in the shared lifecycle and OnlineContext, not in the algorithm.
"""

import json

import pytest
from helpers import LetterJudge, read_metrics, run_cli, tiny_run_args, write_prompts

from prefopt import judges
from prefopt.errors import PrefoptError
from prefopt.training.config import RunConfig
from prefopt.training.lifecycle import SUMMARY_KEYS, lr_factor
from prefopt.training.online import check_online_options

pytestmark = pytest.mark.e2e

SHORT = ("steps=2", "batch_size=4", "max_new_tokens=4", "lr=1e-2", "eval_size=4")


@pytest.fixture(autouse=True)
def letter_judge(monkeypatch):
    monkeypatch.setattr(judges, "make_judge", lambda spec, **options: LetterJudge())


@pytest.fixture
def prompts(tmp_path):
    return write_prompts(tmp_path / "prompts.jsonl", 24)


def ppo(model_dir, prompts, out, *options):
    return run_cli(tiny_run_args(model_dir, prompts, out, *SHORT, *options) + ["--algo", "ppo"])


def without_seconds(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


@pytest.mark.parametrize(("option", "named"), [
    ("grad_accum=2", "option 'grad_accum'"),
    ("reference=precomputed", "option 'reference'"),
])
def test_options_an_online_method_cannot_honour_are_refused_before_any_work(
        tiny_model_dir, prompts, tmp_path, capsys, option, named):
    out = tmp_path / "run"
    assert ppo(tiny_model_dir, prompts, out, option) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefopt: error: ") and named in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing written


def test_several_processes_are_refused_for_online_methods():
    with pytest.raises(PrefoptError, match="runs in one process"):
        check_online_options("ppo", RunConfig(), world=2)
    check_online_options("ppo", RunConfig(), world=1)  # the defaults are all honoured


def test_eval_every_adds_held_out_metrics_to_those_steps(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "run"
    assert ppo(tiny_model_dir, prompts, out, "steps=4", "eval_every=2") == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 4]  # before, 4 steps, after
    with_eval = [r["step"] for r in rows if "eval_reward" in r]
    assert with_eval == [0, 2, 4]  # step 4's held-out metrics are the final evaluation's row
    assert "kl" in rows[2] and "eval_kl_k3" in rows[2]  # the step's own metrics and the evaluation together


def test_schedule_warmup_and_lr_reach_the_online_optimizer(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "run"
    assert ppo(tiny_model_dir, prompts, out, "steps=4", "schedule=linear", "warmup_ratio=0.25", "lr=0.02") == 0
    lrs = [r["lr"] for r in read_metrics(out) if "lr" in r]
    assert lrs == pytest.approx([0.02 * lr_factor(s, 4, 1, "linear") for s in range(4)])


def test_reference_option_selects_the_shared_reference(tiny_model_dir, prompts, tmp_path, capsys):
    modes = {}
    for name, options in {"lora-auto": (), "lora-copy": ("reference=copy",), "full-auto": ("adapter=full",)}.items():
        out = tmp_path / name
        assert ppo(tiny_model_dir, prompts, out, *options) == 0
        modes[name] = json.loads((out / "summary.json").read_text())["reference"]
    assert modes == {"lora-auto": "adapter", "lora-copy": "copy", "full-auto": "copy"}
    # A LoRA run scores the same rollouts against the same starting model either way.
    adapter, copy = read_metrics(tmp_path / "lora-auto"), read_metrics(tmp_path / "lora-copy")
    assert [r.get("kl") for r in adapter] == pytest.approx([r.get("kl") for r in copy], abs=1e-5)
    capsys.readouterr()
    assert ppo(tiny_model_dir, prompts, tmp_path / "bad", "adapter=full", "reference=adapter") == 2
    assert "reference 'adapter' needs adapter=lora" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_online_run(tiny_model_dir, prompts, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    assert ppo(tiny_model_dir, prompts, plain) == 0
    assert ppo(tiny_model_dir, prompts, checkpointed, "gradient_checkpointing=true") == 0
    a, b = without_seconds(read_metrics(plain)), without_seconds(read_metrics(checkpointed))
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for row_a, row_b in zip(a, b):
        assert list(row_b.values()) == pytest.approx(list(row_a.values()), rel=1e-4, abs=1e-5)


def test_offline_and_online_summaries_share_one_schema(tiny_model_dir, prompts, tmp_path):
    from helpers import write_learnable_pairs

    online, offline = tmp_path / "online", tmp_path / "offline"
    assert ppo(tiny_model_dir, prompts, online) == 0
    pairs = write_learnable_pairs(tmp_path / "pairs.jsonl", n=16)
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, offline, "steps=2") + ["--algo", "dpo"]) == 0
    for out in (online, offline):
        summary = json.loads((out / "summary.json").read_text())
        assert tuple(sorted(summary)) == tuple(sorted(SUMMARY_KEYS))
    assert json.loads((online / "summary.json").read_text())["train_examples"] == 20  # 24 prompts, 4 held out
