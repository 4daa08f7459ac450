"""Group policy-gradient methods: grpo, dr-grpo, dapo, gspo (algorithms/grpo.py), rloo, reinforce-pp.

Their loss functions on hand-worked values (each worked in the test's comment), DAPO's dynamic sampling and
truncation masking, the reference left alone at beta = 0, one-line option errors, and every name end to end
through prefopt.training.runner.train on the tiny model (builtin:qa prompts, a Python reward function plus
the qa gold rule as the judge).
"""

import json
import math

import pytest
import torch
from helpers import online_run_config, read_metrics, run_cli, tiny_run_args, write_reward_module

from prefopt import judges
from prefopt.algorithms.grpo import DAPO, GRPO, GSPO, DrGRPO, Samples, dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss
from prefopt.algorithms.reinforce_pp import ReinforcePP, reinforce_pp_advantages, reinforce_pp_loss
from prefopt.algorithms.rloo import RLOO, kl_shaped_rewards, rloo_loss
from prefopt.core import registry
from prefopt.core.advantages import group_advantages, leave_one_out_advantages
from prefopt.errors import PrefoptError
from prefopt.judges import Judge
from prefopt.training.lifecycle import SUMMARY_KEYS
from prefopt.training.online import OnlineContext
from prefopt.training.runner import train

NAMES = {"grpo": GRPO, "dr-grpo": DrGRPO, "dapo": DAPO, "gspo": GSPO, "rloo": RLOO, "reinforce-pp": ReinforcePP}

REWARDS = '''
def letters(prompts, completions, **kwargs):
    return [c.count("e") / max(1, len(c)) for c in completions]
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """grl_rewards.py with a reward function, found by judge=python:grl_rewards:letters."""
    return write_reward_module(tmp_path / "judge_module", monkeypatch, "grl_rewards", REWARDS) + ":letters"


run_config = online_run_config


def step_rows(out):
    return [r for r in read_metrics(out) if "loss" in r]


# ---------------------------------------------------------------- registration and end to end

STEP_KEYS = {"reward", "entropy", "advantage_mean", "advantage_std", "clip_fraction_low", "clip_fraction_high", "ratio_mean",
             "loss", "grad_norm", "updates", "response_length", "truncated_share", "generation_seconds",
             "judge_seconds", "update_seconds", "lr", "tokens", "seconds", "step"}
EXTRA_KEYS = {
    "grpo": {"zero_variance_share", "kl"},
    "dr-grpo": {"zero_variance_share", "kl"},
    "dapo": {"zero_variance_share", "kl", "resampled_groups", "dropped_share"},
    "gspo": {"zero_variance_share", "kl"},
    "rloo": {"zero_variance_share", "kl", "kl_penalty"},  # beta 0.05, KL in the reward
    "reinforce-pp": {"kl"},  # beta 0.01; one completion per prompt, so no groups to have zero variance
}


def test_every_name_is_registered_as_an_online_algorithm():
    for name, cls in NAMES.items():
        assert registry.get(name) is cls
        assert cls.online and cls.inputs == "prompts" and cls.description()
    assert all(registry.get(n)().needs_reference for n in NAMES)  # measure_kl: the KL spent is logged by default
    without = [cls(cls.Config(measure_kl=False)).needs_reference for cls in NAMES.values()]
    assert without == [False, False, False, False, True, True]  # rloo and reinforce-pp train with their KL


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(NAMES))
def test_each_name_trains_two_steps_end_to_end(name, reward_module, tiny_model_dir, tmp_path):
    cls = registry.get(name)
    config = cls.Config(judge=f"{reward_module},gold:qa", judge_weights="1,0.5", gold="gold:qa", max_new_tokens=6)
    algorithm = cls(config)
    assert algorithm.reward_source() == f"{reward_module},gold:qa"
    out = tmp_path / name
    summary = train(name, algorithm, run_config(tiny_model_dir, out))
    assert tuple(sorted(summary)) == tuple(sorted(SUMMARY_KEYS))
    assert summary["steps"] == 2 and summary["algo"] == name
    assert {"eval_reward", "eval_response_length"} <= set(summary["eval_after"])
    assert algorithm.needs_reference and "eval_kl_k3" in summary["eval_after"]  # measure_kl by default
    rows = step_rows(out)
    assert len(rows) == 2
    want = STEP_KEYS | EXTRA_KEYS[name] | {"gold", f"reward/{reward_module}", "reward/gold:qa"}
    assert set(rows[0]) == want and set(rows[1]) == want  # one schema every step (train_last10 averages it)
    for row in rows:
        # the weighted judge's total is the weighted sum of the logged parts
        assert row["reward"] == pytest.approx(row[f"reward/{reward_module}"] + 0.5 * row["reward/gold:qa"], abs=1e-6)
        assert row["gold"] == pytest.approx(row["reward/gold:qa"])
        assert 0 <= row["truncated_share"] <= 1 and 1 <= row["response_length"] <= 6
        assert 0 < row["entropy"] <= math.log(32000)  # a near-uniform tiny model: high, never above log V
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    assert rows[0]["tokens"] > 0 and summary["train_examples"] > 0
    if name == "gspo":  # four minibatches per step (the paper's split)
        assert rows[0]["updates"] == 4
    elif name != "dapo":
        assert rows[0]["updates"] == 1


class ConstantJudge(Judge):
    def score(self, prompts, responses):
        return [1.0] * len(responses)


class FirstDrawConstantJudge(Judge):
    """The step's first draw (8 completions: 2 prompts x 4) all score 1.0; every other call (the evaluation's 4
    completions, the resamples) scores by length, so a resampled group differs unless all four tie."""

    def __init__(self):
        self.first_draw_seen = False

    def score(self, prompts, responses):
        if len(responses) == 8 and not self.first_draw_seen:
            self.first_draw_seen = True
            return [1.0] * 8
        return [float(len(r)) for r in responses]


def count_updates(monkeypatch) -> list:
    calls = []
    real = OnlineContext.update

    def counting(self, loss):
        calls.append(float(loss.detach()))
        return real(self, loss)

    monkeypatch.setattr(OnlineContext, "update", counting)
    return calls


@pytest.mark.e2e
def test_dapo_drops_zero_variance_groups_without_an_update(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setattr(judges, "make_judge", lambda spec, **options: ConstantJudge())
    updates = count_updates(monkeypatch)
    out = tmp_path / "dapo"
    train("dapo", DAPO(DAPO.Config(max_new_tokens=4, max_resample=1)), run_config(tiny_model_dir, out))
    rows = step_rows(out)
    assert len(rows) == 2 and updates == []  # no optimizer step at all
    for row in rows:
        assert row["zero_variance_share"] == 1.0 and row["dropped_share"] == 1.0
        assert row["resampled_groups"] == 2.0  # both groups (batch_size 2) sampled once more, still constant
        assert row["loss"] == 0.0 and row["grad_norm"] == 0.0 and row["updates"] == 0.0


@pytest.mark.e2e
def test_dapo_replaces_a_zero_variance_group_by_the_group_of_a_new_prompt(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setattr(judges, "make_judge", lambda spec, **options: FirstDrawConstantJudge())
    updates = count_updates(monkeypatch)
    trained = []
    real_update = DAPO._update

    def capturing(self, ctx, samples, first_draw):
        trained.append((samples, first_draw))
        return real_update(self, ctx, samples, first_draw)

    monkeypatch.setattr(DAPO, "_update", capturing)
    out = tmp_path / "dapo"
    run = run_config(tiny_model_dir, out, steps=1)
    train("dapo", DAPO(DAPO.Config(max_new_tokens=6, max_resample=2, mask_truncated=False)), run)
    (row,) = step_rows(out)
    assert row["zero_variance_share"] == 1.0  # the first draw: every group constant
    assert row["resampled_groups"] == 2.0  # refilled once; unless both new groups tie on length, kept
    assert row["dropped_share"] < 1.0 and row["updates"] == 1.0 and len(updates) == 1
    ((samples, first),) = trained
    step_prompts = {m[-1]["content"] for m in first.messages}
    new_prompts = {m[-1]["content"] for m in samples.messages}
    assert len(step_prompts) == 2 and new_prompts and not new_prompts & step_prompts  # new prompts, not resamples
    assert len(samples) % 4 == 0 and len(samples) < len(first) + 1


@pytest.mark.e2e
def test_dapo_resume_is_exact_with_resampling(monkeypatch, tiny_model_dir, tmp_path):
    """Resampling attempts draw with seeds of (step, attempt): a resumed run repeats the uninterrupted one."""
    from helpers import interrupt_on_call

    monkeypatch.setattr(judges, "make_judge", lambda spec, **options: LengthBucketJudge())
    common = ("steps=4", "save_every=2", "lr=1e-2", "batch_size=2", "eval_size=4", "max_new_tokens=4",
              "max_resample=2", "--algo", "dapo")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_cli(tiny_run_args(tiny_model_dir, "builtin:qa", straight, *common)) == 0
    undo = interrupt_on_call(monkeypatch, DAPO, "train_step", 3)
    assert run_cli(tiny_run_args(tiny_model_dir, "builtin:qa", broken, *common)) == 130
    undo()
    assert run_cli(["run", "--resume", broken]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
    rows = strip(read_metrics(straight))
    assert rows == strip(read_metrics(broken))
    assert sum(r.get("resampled_groups", 0) for r in rows) > 0  # the resampling path ran


class LengthBucketJudge(Judge):
    """1.0 for a reply of more than 6 characters, else 0.0: groups are often, not always, constant."""

    def score(self, prompts, responses):
        return [float(len(r) > 6) for r in responses]


# ---------------------------------------------------------------- the step's pieces on a hand-built context


@pytest.fixture
def context(tiny_model_dir):
    from prefopt.core.models import load_tokenizer
    from prefopt.training.policy import load_policy

    run = run_config(tiny_model_dir, "unused", adapter="full", reference="copy", lr=1e-2)
    model = load_policy(run, GRPO(), "cpu", "fp32")
    return OnlineContext(run, model, load_tokenizer(run.model), torch.device("cpu"), "fp32")


def test_a_cpu_context_packs_its_shared_rows_unless_padding_free_is_false(tiny_model_dir, context):
    from prefopt.core.models import load_tokenizer
    from prefopt.training.policy import load_policy

    assert context.share_prompt and context.pack_shared_prompts  # the CPU default: packed, span attention
    run = run_config(tiny_model_dir, "unused", adapter="full", reference="copy", padding_free=False)
    rows = OnlineContext(run, load_policy(run, GRPO(), "cpu", "fp32"), load_tokenizer(run.model),
                         torch.device("cpu"), "fp32")  # fmt: skip
    assert rows.share_prompt and not rows.pack_shared_prompts


def prompts_of(ctx, n):
    from prefopt.data.tokenize import render_prompt

    messages = [[{"role": "user", "content": f"Say something about topic {i}."}] for i in range(n)]
    return [render_prompt(ctx.tokenizer, m) for m in messages], messages


class LetterJudge(Judge):
    def score(self, prompts, responses):
        return [r.count("e") / max(1, len(r)) + 0.01 * len(r) for r in responses]


def capture_masks(monkeypatch, algorithm) -> list:
    masks = []
    real = algorithm.loss

    def capturing(logps, old_logps, advantages, mask, ref_logps):
        masks.append(mask.clone())
        return real(logps, old_logps, advantages, mask, ref_logps)

    monkeypatch.setattr(algorithm, "loss", capturing)
    return masks


def test_a_completion_cut_at_max_new_tokens_gets_mask_0(context, monkeypatch):
    algorithm = DAPO(DAPO.Config(max_new_tokens=3))
    algorithm.judge = LetterJudge()
    ids, messages = prompts_of(context, 2)
    samples = algorithm.sample(context, ids, messages)
    assert len(samples) == 8
    # The tiny random model rarely says its stop token within 3 tokens: a cut completion is 3 tokens long.
    assert bool(samples.truncated.any())
    assert all(int(n) == 3 for n in samples.lengths[samples.truncated])
    # Force a known pattern: the first completion of each group was cut, the others stopped.
    samples.truncated = torch.tensor([True, False, False, False] * 2)
    masks = capture_masks(monkeypatch, algorithm)
    metrics = algorithm._update(context, samples, samples)
    (mask,) = masks
    assert metrics["updates"] == 1.0
    assert mask[samples.truncated].sum() == 0  # no loss on a cut completion
    assert (mask[~samples.truncated].sum(-1) > 0).all()  # every other completion keeps its tokens

    masks.clear()
    algorithm.config.mask_truncated = False
    algorithm._update(context, samples, samples)
    assert (masks[0].sum(-1) > 0).all()


def test_when_every_completion_is_masked_there_is_no_update(context, monkeypatch):
    algorithm = DAPO(DAPO.Config(max_new_tokens=3))
    algorithm.judge = LetterJudge()
    ids, messages = prompts_of(context, 2)
    samples = algorithm.sample(context, ids, messages)
    samples.truncated = torch.ones(8, dtype=torch.bool)
    updates = count_updates(monkeypatch)
    metrics = algorithm._update(context, samples, samples)
    assert updates == [] and metrics["updates"] == 0.0 and metrics["loss"] == 0.0


def test_samples_of_two_rollouts_concatenate_row_by_row(context):
    algorithm = GRPO(GRPO.Config(max_new_tokens=4, num_generations=2))
    algorithm.judge = LetterJudge()
    ids, messages = prompts_of(context, 2)
    a = algorithm.sample(context, ids[:1], messages[:1])
    b = algorithm.sample(context, ids[1:], messages[1:], attempt=1)
    both = Samples.cat([a, b], pad_id=0)
    assert len(both) == 4 and both.texts == a.texts + b.texts
    width = both.batch["input_ids"].shape[1]
    for part, rows in ((a, slice(0, 2)), (b, slice(2, 4))):
        w = part.batch["input_ids"].shape[1]
        assert torch.equal(both.batch["input_ids"][rows, :w], part.batch["input_ids"])
        assert both.batch["attention_mask"][rows, w:width].sum() == 0 and both.batch["loss_mask"][rows, w:].sum() == 0


def test_several_updates_per_step_fix_the_old_logps_before_the_first(context):
    algorithm = GRPO(GRPO.Config(max_new_tokens=4, updates_per_batch=3, eps_low=0.2, eps_high=0.2))
    algorithm.judge = LetterJudge()
    ids, messages = prompts_of(context, 2)
    samples = algorithm.sample(context, ids, messages)
    metrics = algorithm._update(context, samples, samples)
    assert metrics["updates"] == 3.0
    assert metrics["ratio_mean"] != 1.0  # later updates see a ratio away from 1: the old log-probs stayed fixed


@pytest.mark.parametrize("cls", [GRPO, RLOO])
def test_a_group_update_with_each_prompt_once_is_the_padded_one(context, cls, monkeypatch):
    """The same samples, one update: with shared prompts (the CPU default) the loss, metrics and gradients are
    those of the padded rows, and the shared forwards did run."""
    from prefopt.core import logprobs

    algorithm = cls(cls.Config(max_new_tokens=5, beta=0.1))  # a reference too: its forward shares as well
    algorithm.judge = LetterJudge()
    ids, messages = prompts_of(context, 2)
    samples = algorithm.sample(context, ids, messages)
    shared_calls, grads = [], []
    real = logprobs._shared_token_logps
    monkeypatch.setattr(logprobs, "_shared_token_logps", lambda *a, **k: shared_calls.append(1) or real(*a, **k))

    def gradients_only(self, loss):  # the update's backward, its gradients kept, no optimizer step
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})
        return 1.0

    monkeypatch.setattr(OnlineContext, "update", gradients_only)
    metrics = {}
    for share in (False, True):
        context.share_prompt = share
        metrics[share] = algorithm._update(context, samples, samples)
    assert len(shared_calls) == 2  # the policy's forward and the reference's, with prompts shared only
    assert metrics[True].keys() == metrics[False].keys()
    for key, value in metrics[False].items():
        assert metrics[True][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    padded, shared = grads
    assert padded.keys() == shared.keys() and len(padded) > 0
    for name, grad in padded.items():
        torch.testing.assert_close(shared[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- the reference only when beta > 0


def count_reference_builds(monkeypatch) -> list:
    """Every reference the online context builds (its mode), through the constructor online.py uses."""
    from prefopt.training import online

    built = []
    real = online.build_reference

    def counting(*args, **kwargs):
        reference = real(*args, **kwargs)
        built.append(reference.mode)
        return reference

    monkeypatch.setattr(online, "build_reference", counting)
    return built


def record_reference_calls(monkeypatch) -> list:
    steps = []
    real = OnlineContext.reference_token_logps

    def recording(self, batch):
        steps.append(self.step)
        return real(self, batch)

    monkeypatch.setattr(OnlineContext, "reference_token_logps", recording)
    return steps


@pytest.mark.e2e
def test_beta_0_builds_no_reference(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setattr(judges, "make_judge", lambda spec, **options: LetterJudge())
    built = count_reference_builds(monkeypatch)
    steps = record_reference_calls(monkeypatch)
    algorithm = GRPO(GRPO.Config(max_new_tokens=4, measure_kl=False))
    assert algorithm.needs_reference is False
    # full fine-tuning: a reference would be a frozen copy of the whole model
    beta0 = train("grpo", algorithm, run_config(tiny_model_dir, tmp_path / "beta0", adapter="full"))
    assert built == [] and steps == []  # none built, none asked for (training or evaluation)
    assert "kl" not in step_rows(tmp_path / "beta0")[0]
    assert beta0["reference"] is None and beta0["steps"] == 2
    for evaluation in (beta0["eval_before"], beta0["eval_after"]):  # evaluation skips the KL, nothing else
        assert set(evaluation) == {"eval_reward", "eval_response_length"}

    steps.clear()
    algorithm = GRPO(GRPO.Config(max_new_tokens=4, beta=0.1, measure_kl=False))
    assert algorithm.needs_reference is True
    beta01 = train("grpo", algorithm, run_config(tiny_model_dir, tmp_path / "beta01", adapter="full"))
    assert built == ["copy"]  # one reference, built once
    assert [s for s in steps if s >= 0] == [0, 1]  # one reference forward per training step
    assert all(r["kl"] >= 0 for r in step_rows(tmp_path / "beta01"))
    assert beta01["reference"] == "copy"
    assert {"eval_kl_k1", "eval_kl_k3"} <= set(beta01["eval_after"])
    assert tuple(sorted(beta0)) == tuple(sorted(beta01)) == tuple(sorted(SUMMARY_KEYS))  # one schema

    # measure_kl (the default): the reference is built to log the KL spent; training is unchanged by it
    algorithm = GRPO(GRPO.Config(max_new_tokens=4))
    assert algorithm.needs_reference is True
    measured = train("grpo", algorithm, run_config(tiny_model_dir, tmp_path / "measured", adapter="full"))
    plain, logged = step_rows(tmp_path / "beta0"), step_rows(tmp_path / "measured")
    assert all(r["kl"] >= 0 for r in logged) and {"eval_kl_k1", "eval_kl_k3"} <= set(measured["eval_after"])
    for a, b in zip(plain, logged, strict=True):
        assert (a["reward"], a["response_length"]) == (b["reward"], b["response_length"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_reference_logps_without_a_reference_is_a_bug():
    ctx = OnlineContext.__new__(OnlineContext)  # as built for an algorithm with needs_reference False
    ctx.reference = None
    batch = {"loss_mask": torch.ones(1, 3)}
    with pytest.raises(PrefoptError, match="no reference model was built"):
        ctx.reference_token_logps(batch)
    with pytest.raises(PrefoptError, match="no reference model was built"):
        ctx.reference_sequence_logps(batch)


# ---------------------------------------------------------------- PPO takes the same weighted judges


@pytest.mark.e2e
def test_ppo_trains_on_a_weighted_judge_and_logs_its_parts(tiny_model_dir, tmp_path, monkeypatch):
    from prefopt.algorithms.ppo import PPO

    spec = write_reward_module(tmp_path / "judge_module", monkeypatch, "ppo_rewards", REWARDS) + ":letters"
    algorithm = PPO(PPO.Config(judge=f"gold:qa,{spec}", judge_weights="1,0.5", max_new_tokens=4, ppo_epochs=1))
    out = tmp_path / "ppo"
    summary = train("ppo", algorithm, run_config(tiny_model_dir, out))
    assert summary["steps"] == 2 and tuple(sorted(summary)) == tuple(sorted(SUMMARY_KEYS))
    rows = step_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert {"reward/gold:qa", f"reward/{spec}"} <= set(row)
        assert row["reward"] == pytest.approx(row["reward/gold:qa"] + 0.5 * row[f"reward/{spec}"], abs=1e-6)
    assert any(row[f"reward/{spec}"] > 0 for row in rows)  # the python part is really scored and weighed in


# ---------------------------------------------------------------- the loss functions, on hand-worked values

# Two sequences (one group of k = 2): the first has two response tokens, the second one (then padding).
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
LOGPS = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1.0]]))


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def test_grpo_loss_on_hand_worked_values():
    # rewards [1, 0]: mean 0.5, sample std sqrt(0.5) = 0.70711, so A = +-0.5 / (0.70711 + 1e-4) = +-0.70700.
    advantages = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert advantages.tolist() == pytest.approx([0.70700, -0.70700], abs=1e-5)
    # On policy (old = logps) every ratio is 1: each sequence's mean is -A_i, their mean -(A_1 + A_2)/2 = 0.
    # Gradient d/dlogp_it = -A_i / (|o_i| * G): row 1 -0.70700 / (2 * 2) = -0.17675 per token,
    # row 2 +0.70700 / (1 * 2) = +0.35350, padding 0.
    logps = leaf(LOGPS)
    loss, stats = grpo_loss(logps, logps.detach(), advantages, MASK)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert logps.grad.flatten().tolist() == pytest.approx([-0.17675, -0.17675, 0.35350, 0.0], abs=1e-5)
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["clip_fraction_high"]) == 0.0
    # beta = 0.1 and the reference half as likely on row 1's first token: pi_ref/pi = 0.5,
    # k3 = 0.5 - 1 - log 0.5 = 0.19315; row 1's mean over its 2 tokens 0.096574, the mean over 2 rows 0.048287,
    # times beta: 0.0048287.
    ref = LOGPS.clone()
    ref[0, 0] = math.log(0.25)
    loss, _ = grpo_loss(leaf(LOGPS), LOGPS, advantages, MASK, beta=0.1, ref_logps=ref)
    assert loss.item() == pytest.approx(0.0048287, abs=1e-6)


def test_dr_grpo_loss_on_hand_worked_values():
    # A = r - mean = [+0.5, -0.5] (no std). Ratio 1; constant denominator G * max_tokens = 2 * 4 = 8:
    # loss = -(0.5 * 2 tokens - 0.5 * 1 token) / 8 = -0.0625, gradient -A_i / 8 = -0.0625 / +0.0625 per token.
    advantages = group_advantages(torch.tensor([1.0, 0.0]), 2, "none")
    logps = leaf(LOGPS)
    loss, _ = dr_grpo_loss(logps, logps.detach(), advantages, MASK, max_tokens=4)
    loss.backward()
    assert loss.item() == pytest.approx(-0.0625)
    assert logps.grad.flatten().tolist() == pytest.approx([-0.0625, -0.0625, 0.0625, 0.0])


def test_dapo_loss_on_hand_worked_values():
    # Row 1: one token, ratio 1.25, A = +1; row 2: two tokens, ratio 1, A = -1. Token mean over 3 tokens.
    # DAPO (eps_high 0.28): 1.25 < 1.28 is not clipped: loss = (-1.25 + 1 + 1) / 3 = 0.25, row 1's gradient
    # -1.25 / 3 = -0.41667. With GRPO's symmetric 0.2 it is clipped at 1.2: loss (-1.2 + 2) / 3 = 0.26667 and
    # row 1 has no gradient.
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    old = torch.zeros(2, 2)
    advantages = torch.tensor([1.0, -1.0])
    logps = leaf(torch.tensor([[math.log(1.25), 0.0], [0.0, 0.0]]))
    loss, stats = dapo_loss(logps, old, advantages, mask)
    loss.backward()
    assert loss.item() == pytest.approx(0.25)
    assert logps.grad.flatten().tolist() == pytest.approx([-1.25 / 3, 0.0, 1 / 3, 1 / 3])
    assert float(stats["clip_fraction_high"]) == 0.0
    logps = leaf(logps)
    loss, stats = dapo_loss(logps, old, advantages, mask, eps_high=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.8 / 3)
    assert logps.grad[0].tolist() == [0.0, 0.0] and float(stats["clip_fraction_high"]) == pytest.approx(1 / 3)


def test_gspo_loss_on_hand_worked_values():
    # Row 1 (A = +1): token log-ratios 0.1 and 0.3, s = exp(0.2) = 1.2214 > 1 + 4e-4: clipped to 1.0004.
    # Row 2 (A = -1): s = 1. loss = -(1.0004 - 1) / 2 = -0.0002; row 1 has no gradient, row 2's token
    # -(-1) / 2 = +0.5.
    advantages = torch.tensor([1.0, -1.0])
    logps = leaf(torch.tensor([[0.1, 0.3], [0.0, 0.0]]))
    loss, stats = gspo_loss(logps, torch.zeros(2, 2), advantages, MASK)
    loss.backward()
    assert loss.item() == pytest.approx(-0.0002, abs=1e-7)
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.5, 0.0])
    assert float(stats["clip_fraction_high"]) == 0.5 and float(stats["ratio_mean"]) == pytest.approx(
        (math.exp(0.2) + 1) / 2, abs=1e-5)


def test_rloo_loss_on_hand_worked_values():
    # k = 2, rewards [1, 0]: leave-one-out baselines [0, 1], A = [+1, -1].
    advantages = leave_one_out_advantages(torch.tensor([1.0, 0.0]), 2)
    assert advantages.tolist() == [1.0, -1.0]
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # On policy (REINFORCE): loss = -(1 * 1 + 1 * -1) / 2 = 0, gradient -A_i / N = [-0.5, +0.5].
    logps = leaf(torch.log(torch.tensor([[0.5, 1.0], [0.25, 1.0]])))
    loss, stats = rloo_loss(logps, logps.detach(), advantages, mask)
    loss.backward()
    assert loss.item() == pytest.approx(0.0)
    assert logps.grad.flatten().tolist() == pytest.approx([-0.5, 0.0, 0.5, 0.0])
    # Off policy, eps 0.2: row 1's ratio 0.5 / (0.5 / 1.5) = 1.5 with A > 0 is clipped to 1.2:
    # loss = -(1.2 - 1) / 2 = -0.1, row 1 gets no gradient, row 2 still +0.5.
    old = logps.detach().clone()
    old[0, 0] = math.log(0.5 / 1.5)
    logps = leaf(logps)
    loss, stats = rloo_loss(logps, old, advantages, mask, eps=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-0.1)
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.5, 0.0])
    assert float(stats["clip_fraction_high"]) == 0.5


def test_rloo_folds_the_kl_into_the_reward():
    # k1 summed: row 1 (-1 + 1.5) + (-2 + 2) = 0.5, row 2 (-1 + 0.5) = -0.5; beta 0.1:
    # R = [1 - 0.05, 0 + 0.05] = [0.95, 0.05].
    old = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, 0.0]])
    rewards = kl_shaped_rewards(torch.tensor([1.0, 0.0]), old, ref, MASK, 0.1)
    assert rewards.tolist() == pytest.approx([0.95, 0.05])


def test_reinforce_pp_advantages_and_loss_on_hand_worked_values():
    # k1 = old - ref: row 1 [0.2, 0.0], row 2 [0.1]; beta 0.1, scores [1, 0] at each row's last token.
    # Token rewards: row 1 [-0.02, 1.0], row 2 [-0.01]; returns (gamma 1): row 1 [0.98, 1.0], row 2 [-0.01].
    # Batch normalisation over the 3 tokens: mean 0.656667, population std 0.471475:
    # A = [0.68579, 0.72821], [-1.41400].
    old = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    ref = torch.tensor([[-1.2, -2.0], [-1.1, 0.0]])
    advantages = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), old, ref, MASK, 0.1)
    assert advantages.flatten().tolist() == pytest.approx([0.68579, 0.72821, -1.41400, 0.0], abs=1e-4)
    # On policy: the token mean of -A is 0 (normalised), gradient -A_t / 3.
    logps = leaf(old)
    loss, _ = reinforce_pp_loss(logps, old, advantages, MASK)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert logps.grad.flatten().tolist() == pytest.approx([-0.22860, -0.24274, 0.47133, 0.0], abs=1e-4)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(("cls", "options", "named"), [
    (GRPO, {"num_generations": 1}, "option 'num_generations'"),
    (RLOO, {"num_generations": 1}, "option 'num_generations'"),
    (ReinforcePP, {"num_generations": 0}, "option 'num_generations'"),
    (GRPO, {"temperature": 0.0}, "option 'temperature'"),
    (GRPO, {"top_p": 0.0}, "option 'top_p'"),
    (GRPO, {"beta": -0.1}, "option 'beta'"),
    (GRPO, {"beta": float("nan")}, "option 'beta'"),
    (GRPO, {"beta": float("inf")}, "option 'beta'"),
    (GRPO, {"eps_low": 1.0}, "option 'eps_low'"),
    (DAPO, {"eps_high": -0.1}, "option 'eps_high'"),
    (DrGRPO, {"eps": 1.5}, "option 'eps'"),
    (GSPO, {"updates_per_batch": 0}, "option 'updates_per_batch'"),
    (GSPO, {"minibatches": 0}, "option 'minibatches'"),
    (GRPO, {"max_new_tokens": 0}, "option 'max_new_tokens'"),
    (GRPO, {"judge": " "}, "option 'judge'"),
    (DAPO, {"max_resample": -1}, "option 'max_resample'"),
    (DAPO, {"overlong_buffer": 64}, "option 'overlong_buffer'"),
])
def test_bad_options_are_one_line_errors(cls, options, named):
    with pytest.raises(PrefoptError) as error:
        cls.Config(**options)
    assert named in str(error.value) and len(str(error.value).splitlines()) == 1


def test_a_bad_option_on_the_command_line_stops_before_any_work(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(tiny_run_args(tiny_model_dir, "builtin:qa", out, "num_generations=1") + ["--algo", "grpo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefopt: error: ") and "option 'num_generations'" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_dapo_overlong_shaping_follows_the_paper():
    # L_max 8, L_cache 4: no penalty up to 4 tokens, then linear to -1 at 8 (Yu et al. 2025, Sec. 3.4).
    algorithm = DAPO(DAPO.Config(max_new_tokens=8, overlong_buffer=4))
    reward, metrics = algorithm.shape_rewards(torch.ones(4), torch.tensor([3, 4, 6, 8]))
    assert reward.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert metrics == {"overlong_penalty": pytest.approx(-0.375)}


def test_config_json_round_trip_of_every_default():
    for cls in NAMES.values():
        config = cls.Config()
        assert json.loads(json.dumps(vars(config))) == vars(config)


# ---------------------------------------------------------------- the prompt stream


def test_the_prompt_stream_jumps_to_a_resume_position_as_if_it_had_stepped_there():
    from itertools import islice

    from prefopt.training.online import _prompt_indices

    n, batch, seed = 10, 4, 3  # 8 prompts per epoch (the last partial batch of 2 left out)
    straight = list(islice(_prompt_indices(n, batch, seed, skip=0), 40))
    for epoch in range(5):  # each epoch a permutation, cut to whole batches
        part = straight[8 * epoch : 8 * epoch + 8]
        assert len(set(part)) == 8 and set(part) <= set(range(n))
    assert straight[:8] != straight[8:16]  # a fresh order each epoch
    for skip in (0, 1, 7, 8, 9, 17, 24):
        assert list(islice(_prompt_indices(n, batch, seed, skip=skip), 40 - skip)) == straight[skip:]


@pytest.mark.e2e
@pytest.mark.parametrize("position", [-1, 2.5, "8", True])
def test_a_corrupt_prompt_position_in_a_checkpoint_is_a_one_line_error(position, tiny_model_dir, tmp_path, capsys):
    from helpers import interrupt_on_call

    from prefopt.training.checkpoint import CHECKPOINTS

    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, "builtin:qa", out, "steps=4", "save_every=2", "batch_size=2",
                         "eval_size=4", "max_new_tokens=4", "--algo", "grpo")
    with pytest.MonkeyPatch.context() as mp:
        interrupt_on_call(mp, GRPO, "train_step", 3)
        assert run_cli(args) == 130
    (state_file,) = (out / CHECKPOINTS).glob("*/state.json")
    state = json.loads(state_file.read_text())
    assert state["prompt_position"] == 4  # two steps of two prompts
    state_file.write_text(json.dumps({**state, "prompt_position": position}))
    capsys.readouterr()
    assert run_cli(["run", "--resume", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err  # one line after the model-loading progress bars
    assert err.splitlines()[-1].endswith(f"the checkpoint's prompt_position must be a whole number >= 0, got {position!r}")
