"""online-dpo (algorithms/online_dpo.py) and rlaif, which is online DPO with an AI judge.

Which registered losses fit and the one-line refusal of the others; the pure judging and pairing steps
(who is chosen, ties and identical samples skipped, a position-biased judge giving ties); end to end
through prefopt.training.runner.train on the tiny model with a scripted Python reward function as the
judge, with the hand-checked first loss of a fresh LoRA (policy = reference, every log-ratio 0):
DPO -log sigmoid(0) = log 2, IPO (0 - 1/(2 beta))^2 = 1 at beta 0.5.
"""

import math

import pytest
from helpers import online_run_config, read_metrics, write_reward_module

from prefopt.algorithms.online_dpo import (
    JudgedSamples,
    OnlineDPO,
    build_pairs,
    judge_samples,
    make_pair_loss,
    pair_loss_names,
)
from prefopt.algorithms.rlaif import RLAIF
from prefopt.core import registry
from prefopt.errors import PrefoptError
from prefopt.judges import Judge, make_judge
from prefopt.training.lifecycle import SUMMARY_KEYS
from prefopt.training.online import OnlineContext
from prefopt.training.runner import train

PAIR_LOSSES = ["apo-down", "apo-zero", "dpo", "hinge", "ipo", "nca", "orpo", "robust-dpo", "simpo", "sppo-hard"]

REWARDS = '''
def tidy(prompts, completions, **kwargs):
    """Longer replies with more 'e's score higher; the character sum breaks most ties."""
    return [len(c) + c.count("e") + 1e-3 * sum(map(ord, c)) / max(1, len(c)) for c in completions]


def flat(prompts, completions, **kwargs):
    return [1.0 for c in completions]
'''


@pytest.fixture
def rewards(tmp_path, monkeypatch):
    """odpo_rewards.py, importable: judge=python:odpo_rewards:tidy finds it."""
    return write_reward_module(tmp_path / "judge_module", monkeypatch, "odpo_rewards", REWARDS)


def run_config(model_dir, out, **overrides):
    return online_run_config(model_dir, out, **{"batch_size": 4, **overrides})


def step_rows(out):
    return [r for r in read_metrics(out) if "tie_share" in r or "tie_rate" in r]


# ---------------------------------------------------------------- registration and the pair losses


def test_registered_as_an_online_algorithm_and_rlaif_is_one():
    assert registry.get("online-dpo") is OnlineDPO and registry.get("rlaif") is RLAIF
    assert issubclass(RLAIF, OnlineDPO)
    assert OnlineDPO.online and OnlineDPO.inputs == "prompts" and OnlineDPO.needs_reference
    assert OnlineDPO.description().startswith("Online DPO")
    assert OnlineDPO.Config().judge == "gold:qa" and OnlineDPO.Config().gold == ""
    assert RLAIF.Config().judge == "lm:smollm2-135m-instruct" and RLAIF.Config().gold == "gold:qa"
    assert OnlineDPO(OnlineDPO.Config(judge="python:m:f")).reward_source() == "python:m:f"


def test_every_paired_offline_lm_loss_is_accepted():
    assert pair_loss_names() == PAIR_LOSSES
    for name in PAIR_LOSSES:
        assert OnlineDPO(OnlineDPO.Config(loss=name)).objective.__class__ is registry.get(name)
        assert RLAIF(RLAIF.Config(objective=name)).objective.__class__ is registry.get(name)


@pytest.mark.parametrize("name", ["kto", "sft", "reward", "ppo", "grpo", "online-dpo"])
def test_an_unsuitable_loss_is_refused_in_one_line_listing_the_ones_that_fit(name):
    with pytest.raises(PrefoptError) as err:
        OnlineDPO(OnlineDPO.Config(loss=name))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"option 'loss': '{name}' is not a paired offline objective; use one of: apo-down")
    assert message.endswith(", ".join(PAIR_LOSSES))


def test_an_unknown_loss_and_bad_options_are_one_line_errors():
    with pytest.raises(PrefoptError, match=r"^option 'loss': unknown pair loss 'dpp'; use one of: apo-down"):
        OnlineDPO(OnlineDPO.Config(loss="dpp"))
    with pytest.raises(PrefoptError, match=r"option 'loss_options': 'dpo' has no option 'gamma'"):
        OnlineDPO(OnlineDPO.Config(loss_options="gamma=1"))
    with pytest.raises(PrefoptError, match=r"option 'beta': 'orpo' has no beta"):
        OnlineDPO(OnlineDPO.Config(loss="orpo", beta=0.2))
    with pytest.raises(PrefoptError, match=r"beta is also given in 'loss_options'"):
        OnlineDPO(OnlineDPO.Config(loss_options="beta=0.2", beta=0.3))
    with pytest.raises(PrefoptError, match=r"option 'beta': must be > 0"):
        OnlineDPO(OnlineDPO.Config(beta=0.0))  # the loss's own check
    with pytest.raises(PrefoptError, match=r"option 'updates': must be >= 1"):
        OnlineDPO.Config(updates=0)
    with pytest.raises(PrefoptError, match=r"option 'judge'"):
        OnlineDPO.Config(judge=" ")


def test_beta_and_loss_options_reach_the_loss_config():
    dpo = OnlineDPO(OnlineDPO.Config(beta=0.5, loss_options="label_smoothing=0.1")).objective.config
    assert (dpo.beta, dpo.label_smoothing) == (0.5, 0.1)
    assert OnlineDPO(OnlineDPO.Config(loss="ipo")).objective.config.beta == 0.1  # the loss's own default
    assert make_pair_loss("simpo", "gamma=0.25", beta=3.0).config.gamma == 0.25
    assert RLAIF(RLAIF.Config(objective_options="beta=0.2")).objective.config.beta == 0.2


# ---------------------------------------------------------------- judging and pairing


class PositionJudge(Judge):
    """Always prefers whatever is shown first: a pure position bias."""

    def compare(self, prompts, a, b):
        return [1.0] * len(a)


class LengthJudge(Judge):
    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


def test_the_judged_better_sample_is_chosen_whichever_row_it_is_in():
    prompts = ["p0", "p1", "p2"]
    texts = ["a long reply", "short", "tiny", "a longer one", "same", "same"]  # rows 2i, 2i + 1: prompt i
    judged = judge_samples(LengthJudge(), prompts, texts)
    assert judged == JudgedSamples(decisions=[1.0, 0.0, 0.5], scores=[12.0, 5.0, 4.0, 12.0, 4.0, 4.0])
    responses = [[1, 2, 3], [4], [5], [6, 7, 8], [9], [9]]
    assert build_pairs(judged.decisions, responses) == [(0, 1), (3, 2)]  # (chosen row, rejected row); tie skipped


def test_ties_and_identical_samples_are_skipped():
    assert build_pairs([0.5, 0.5], [[1], [2], [3], [4]]) == []
    assert build_pairs([1.0, 0.0], [[1, 2], [1, 2], [3], [4]]) == [(3, 2)]  # identical tokens: nothing to prefer
    with pytest.raises(ValueError, match="two responses per decision"):
        build_pairs([1.0], [[1]])


def test_a_pairwise_judge_is_asked_in_both_orders_so_position_bias_gives_ties():
    judged = judge_samples(PositionJudge(), ["p0", "p1"], ["x", "y", "z", "w"])
    assert judged.decisions == [0.5, 0.5] and judged.scores is None
    assert build_pairs(judged.decisions, [[1], [2], [3], [4]]) == []


def test_a_python_reward_function_judges_pairs(rewards):
    judge = make_judge(f"{rewards}:tidy")
    judged = judge_samples(judge, ["q", "q"], ["eeee", "e", "", "abc"])
    assert judged.decisions == [1.0, 0.0]
    assert build_pairs(judged.decisions, [[1], [2], [3], [4]]) == [(0, 1), (3, 2)]


# ---------------------------------------------------------------- end to end


def count_updates(monkeypatch) -> list:
    calls = []
    real = OnlineContext.update

    def counting(self, loss):
        calls.append(float(loss.detach()))
        return real(self, loss)

    monkeypatch.setattr(OnlineContext, "update", counting)
    return calls


STEP_KEYS = {"tie_share", "pairs", "reward", "preference_margin", "chosen_length", "rejected_length", "loss",
             "grad_norm", "kl", "margin", "accuracy", "reward_chosen", "reward_rejected", "logp_chosen",
             "logp_rejected", "gold", "judge_gold_agreement", "generation_seconds", "judge_seconds",
             "update_seconds", "lr", "tokens", "seconds", "step"}


@pytest.mark.e2e
def test_two_steps_with_a_python_judge_and_dpo_start_at_log_2(rewards, tiny_model_dir, tmp_path, monkeypatch):
    updates = count_updates(monkeypatch)
    algorithm = OnlineDPO(OnlineDPO.Config(judge=f"{rewards}:tidy", gold="gold:qa", max_new_tokens=6))
    out = tmp_path / "odpo"
    summary = train("online-dpo", algorithm, run_config(tiny_model_dir, out))
    assert tuple(sorted(summary)) == tuple(sorted(SUMMARY_KEYS)) and summary["steps"] == 2
    assert {"eval_reward", "eval_kl_k1", "eval_kl_k3"} <= set(summary["eval_after"])
    rows = step_rows(out)
    assert len(rows) == 2 and len(updates) == 2
    first = rows[0]
    assert set(first) == STEP_KEYS
    assert first["pairs"] >= 1 and 0 <= first["tie_share"] <= 1 and 0 <= first["judge_gold_agreement"] <= 1
    # a fresh LoRA is the reference: every log-ratio is 0, the DPO loss -log sigmoid(0) = log 2, kl 0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and updates[0] == pytest.approx(math.log(2), abs=1e-5)
    assert first["kl"] == pytest.approx(0.0, abs=1e-4) and first["margin"] == pytest.approx(0.0, abs=1e-5)
    assert first["preference_margin"] > 0  # the chosen side is the one the judge scored higher
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


@pytest.mark.e2e
def test_two_steps_with_ipo_start_at_its_hand_checked_loss(rewards, tiny_model_dir, tmp_path):
    algorithm = OnlineDPO(OnlineDPO.Config(judge=f"{rewards}:tidy", loss="ipo", beta=0.5, max_new_tokens=6))
    out = tmp_path / "ipo"
    train("online-dpo", algorithm, run_config(tiny_model_dir, out))
    rows = step_rows(out)
    assert len(rows) == 2 and rows[0]["pairs"] >= 1
    assert rows[0]["loss"] == pytest.approx(1.0, abs=1e-5)  # (0 - 1 / (2 * 0.5))^2
    assert "gold" not in rows[0] and "judge_gold_agreement" not in rows[0]


@pytest.mark.e2e
def test_a_judge_that_ties_everything_makes_no_update(rewards, tiny_model_dir, tmp_path, monkeypatch):
    updates = count_updates(monkeypatch)
    algorithm = OnlineDPO(OnlineDPO.Config(judge=f"{rewards}:flat", max_new_tokens=4))
    out = tmp_path / "ties"
    train("online-dpo", algorithm, run_config(tiny_model_dir, out))
    rows = step_rows(out)
    assert updates == [] and [r["tie_share"] for r in rows] == [1.0, 1.0] and [r["pairs"] for r in rows] == [0, 0]
    assert all("loss" not in r for r in rows)


@pytest.mark.e2e
def test_rlaif_keeps_its_log_keys(rewards, tiny_model_dir, tmp_path):
    algorithm = RLAIF(RLAIF.Config(judge=f"{rewards}:tidy", max_new_tokens=4))
    out = tmp_path / "rlaif"
    train("rlaif", algorithm, run_config(tiny_model_dir, out))
    rows = step_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert {"tie_rate", "reward", "judge_reward", "judge_gold_agreement", "pairs"} <= set(row)
        assert "tie_share" not in row and "gold" not in row


@pytest.mark.e2e
def test_pairs_with_each_prompt_once_train_like_padded_pairs(rewards, tiny_model_dir, tmp_path, monkeypatch):
    """share_prompt (on by default on a CPU) runs each judged pair as one [prompt, chosen, rejected] row in the
    policy's and the reference's forwards: two steps log the padded pairs' numbers."""
    from prefopt.core import logprobs

    shared_calls = []
    real = logprobs._shared_token_logps
    monkeypatch.setattr(logprobs, "_shared_token_logps", lambda *a, **k: shared_calls.append(1) or real(*a, **k))
    rows = {}
    for share in (False, True):
        algorithm = OnlineDPO(OnlineDPO.Config(judge=f"{rewards}:tidy", max_new_tokens=6))
        train("online-dpo", algorithm, run_config(tiny_model_dir, tmp_path / str(share), share_prompt=share))
        rows[share] = step_rows(tmp_path / str(share))
        assert (len(shared_calls) > 0) == share  # per step: the reference's forward and the policy's
    assert len(shared_calls) == 4 and len(rows[True]) == len(rows[False]) == 2
    for got, want in zip(rows[True], rows[False], strict=True):
        assert got["pairs"] >= 1
        for key, value in want.items():
            if "seconds" not in key and key not in ("tokens_per_second", "peak_rss_mb"):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
