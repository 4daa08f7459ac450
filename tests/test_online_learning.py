"""Every online algorithm learns: on the tiny model, with a scripted Python reward function as the judge, the
mean reward of the rollouts rises and the KL to the reference stays finite.

The reward is the share of the reply's characters that are 'e' (helpers.letter_share), a rule the tiny random
model can be taught in a few dozen steps. As in test_online.py the whole model is trained (adapter=full): the
tiny model's frozen final norm bounds how far LoRA alone can sharpen its near-uniform output.
"""

import json
import math

import pytest
from helpers import read_metrics, run_cli, tiny_run_args, write_prompts, write_reward_module

REWARDS = '''
def letter_e(prompts, completions, **kwargs):
    return [c.count("e") / max(1, len(c)) for c in completions]
'''

LEARN = ("adapter=full", "lr=3e-3", "schedule=constant", "batch_size=8", "max_new_tokens=6", "steps=24")

# Each algorithm's own options for the test; the rest are its defaults. GSPO's paper clip (3e-4 / 4e-4 on the
# sequence ratio) leaves only the first of its four minibatches unclipped at this learning rate; one minibatch
# keeps every update on-policy. The tiny model seldom says its stop token within 6 tokens, so DAPO's overlong
# filtering would mask nearly every completion (that masking is tested in test_group_rl.py). Online DPO learns from one pair per prompt, so it gets more prompts per step.
OPTIONS = {
    "grpo": (),
    "dr-grpo": (),
    "dapo": ("mask_truncated=false",),
    "gspo": ("minibatches=1",),
    "rloo": (),
    "reinforce-pp": ("num_generations=4",),
    "online-dpo": ("batch_size=16",),
}


def thirds(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows]
    third = len(values) // 3
    return sum(values[:third]) / third, sum(values[-third:]) / third


@pytest.mark.e2e
@pytest.mark.parametrize("algo", list(OPTIONS))
def test_reward_rises_with_finite_kl(algo, tiny_model_dir, tmp_path, monkeypatch):
    spec = write_reward_module(tmp_path / "judge_module", monkeypatch, "learn_rewards", REWARDS) + ":letter_e"
    prompts = write_prompts(tmp_path / "prompts.jsonl", 48)
    out = tmp_path / algo
    args = tiny_run_args(tiny_model_dir, prompts, out, *LEARN, f"judge={spec}", *OPTIONS[algo])
    assert run_cli(args + ["--algo", algo]) == 0
    rows = [r for r in read_metrics(out) if "generation_seconds" in r]  # the training steps
    assert len(rows) == 24
    first, last = thirds(rows, "reward")
    assert last > first + 0.05, f"{algo}: mean reward {first:.3f} in the first third, {last:.3f} in the last"
    kls = [r["kl"] for r in rows if "kl" in r]  # online DPO: on the steps with a judged pair
    assert len(kls) >= 20 and all(math.isfinite(v) and abs(v) < 100 for v in kls)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_after"]["eval_reward"] > summary["eval_before"]["eval_reward"]
    assert math.isfinite(summary["eval_after"]["eval_kl_k3"])

