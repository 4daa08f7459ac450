"""Our group policy-gradient losses and RLOO advantages agree with trl's own code on the same inputs (to 1e-5).

As in tests/test_trl_crosscheck.py, a trainer is allocated with ``object.__new__`` (skipping ``__init__``: no
model, dataset or accelerator is built) and given only the attributes the code under test reads, with the values
``__init__`` would copy from its config (``args`` holds GRPOConfig's / RLOOConfig's own field defaults). Then:

- GRPOTrainer._compute_loss(model, inputs), trl's whole loss path, runs for ``loss_type`` grpo, dr_grpo, dapo and
  bnpo with ``importance_sampling_level="token"``, and grpo with ``"sequence"`` (GSPO), with beta 0 and 0.04 (the
  k3 KL to the reference, with ``use_bias_correction_kl=False``: trl 1.16's default, True, multiplies the KL by
  the token ratio, a DeepSeek-V3.2 variant we do not implement; that difference is pinned down exactly). Its ``_get_per_token_logps_and_entropies`` (the model forward) is replaced on the
  instance by a stub that returns fixed per-token log-probs; old and reference log-probs, advantages, the
  completion mask and ``num_items_in_batch`` come in ``inputs`` as trl's ``_generate_and_score_completions``
  would hand them over. The loss *and its gradient* with respect to the log-probs are compared with
  grpo_loss / dr_grpo_loss / dapo_loss / gspo_loss, and trl's logged clip ratios with our clip fractions.
- RLOOTrainer._generate_and_score_completions(inputs), the method in which trl 1.16 computes RLOO's advantages
  inline (KL-in-reward with the k1 estimate summed per sequence, then the leave-one-out baseline), runs for real
  with its generation (``_generate``), scoring (``_calculate_rewards``) and forward stubbed; its ``advantages``
  are compared with leave_one_out_advantages(kl_shaped_rewards(...)). RLOOTrainer._compute_loss is compared
  with rloo_loss (the clipped, unnormalised sequence ratio).

The batch has completions of different lengths, one fully masked (as DAPO's overlong filtering leaves it) and
finite nonsense at padding positions, and ratios both inside and outside the clip range (checked, so no
comparison passes vacuously). No model download, no network. If a trl upgrade makes this code read an attribute
the stand-in lacks, these tests fail loudly rather than pass vacuously.
"""

import collections
import dataclasses
import types

import pytest
import torch
from torch.testing import assert_close

trl = pytest.importorskip("trl", reason="trl not installed: the optional cross-check against trl's losses is skipped")

from prefopt.algorithms.grpo import dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss
from prefopt.algorithms.rloo import kl_shaped_rewards, rloo_loss
from prefopt.core.advantages import leave_one_out_advantages, token_loss
from prefopt.core.rl import kl_estimate

# Importing trl's trainers trips a torch.jit deprecation inside a dependency; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOL = {"atol": 1e-5, "rtol": 1e-5}
K = 4  # group size (num_generations)
LENGTHS = [7, 3, 5, 1, 0, 6, 2, 4]  # completion lengths; one completion fully masked
N, T, P = len(LENGTHS), max(LENGTHS), 3  # completions, completion width, prompt width
MAX_COMPLETION_LENGTH = 10  # Dr. GRPO's constant, wider than this batch's longest completion


def _fake_accelerator():
    return types.SimpleNamespace(
        device=torch.device("cpu"),
        num_processes=1,
        process_index=0,
        sync_gradients=True,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )


def _config_defaults(config_cls, **overrides):
    """A config's dataclass field defaults (without running its __post_init__), with overrides."""
    fields = {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
    return types.SimpleNamespace(**{**fields, **overrides})


def _mask():
    mask = torch.zeros(N, T)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
    return mask


def _batch(seed: int, scale: float):
    """old, current and reference per-token log-probs (N, T), the mask, and advantages (N,).

    The current log-probs are the old ones plus noise of the given scale (so the ratios straddle the clip range);
    padding positions hold finite nonsense that differs between the three, which must be masked out."""
    g = torch.Generator().manual_seed(seed)
    mask = _mask()
    old = -(0.05 + 2.5 * torch.rand(N, T, generator=g))
    new = old + scale * torch.randn(N, T, generator=g)
    ref = old + 0.3 * torch.randn(N, T, generator=g)
    pad = mask == 0
    old[pad], new[pad], ref[pad] = -7.0, 1.5, -0.5
    advantages = torch.randn(N, generator=g)
    return old, new, ref, mask, advantages


def _stub_forward(per_token_logps):
    """Stands in for trl's ``_get_per_token_logps_and_entropies`` (set on the instance: called without self)."""

    def forward(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        assert input_ids.shape == (N, P + T) and attention_mask.shape == (N, P + T) and logits_to_keep == T
        return per_token_logps, torch.zeros_like(per_token_logps), None

    return forward


def _prompt_and_completion(mask):
    return {
        "prompt_ids": torch.ones(N, P, dtype=torch.long),
        "prompt_mask": torch.ones(N, P, dtype=torch.long),
        "completion_ids": torch.ones(N, T, dtype=torch.long),
        "completion_mask": mask.long(),
    }


# --- GRPOTrainer._compute_loss ---------------------------------------------------------------------


def _grpo_trainer(loss_type, eps_low, eps_high, beta, level, kl_bias_correction=False):
    from trl import GRPOConfig, GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    trainer.__dict__.update(
        # as GRPOTrainer.__init__ copies them from GRPOConfig
        args=_config_defaults(GRPOConfig, loss_type=loss_type, epsilon=eps_low, epsilon_high=eps_high, beta=beta,
                              importance_sampling_level=level, max_completion_length=MAX_COMPLETION_LENGTH,
                              steps_per_generation=1, use_bias_correction_kl=kl_bias_correction),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        beta=beta,
        importance_sampling_level=level,
        max_completion_length=MAX_COMPLETION_LENGTH,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        # training state: one process, no gradient accumulation
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=_fake_accelerator(),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
    )
    return trainer


def _trl_grpo(loss_type, eps_low, eps_high, beta, level, old, new, ref, mask, advantages, kl_bias_correction=False):
    """trl's loss, its gradient with respect to the current log-probs, and its logged metrics."""
    trainer = _grpo_trainer(loss_type, eps_low, eps_high, beta, level, kl_bias_correction)
    logps = new.clone().requires_grad_(True)
    trainer._get_per_token_logps_and_entropies = _stub_forward(logps)
    inputs = {
        **_prompt_and_completion(mask),
        "old_per_token_logps": old,
        "advantages": advantages,
        "num_items_in_batch": mask.sum(),  # trl: accelerator.gather(loss_mask.sum()).sum()
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), logps.grad, trainer._metrics["train"]


def _ours(fn, new, *args, **kwargs):
    logps = new.clone().requires_grad_(True)
    loss, stats = fn(logps, *args, **kwargs)
    loss.backward()
    return loss.detach(), logps.grad, stats


TOKEN_CASES = [  # (trl loss_type, eps_low, eps_high, our loss as a function of (new, old, ref, mask, adv, beta))
    ("grpo", 0.2, 0.2, lambda n, o, r, m, a, b: _ours(grpo_loss, n, o, a, m, 0.2, 0.2, b, r)),
    ("grpo", 0.2, 0.28, lambda n, o, r, m, a, b: _ours(grpo_loss, n, o, a, m, 0.2, 0.28, b, r)),
    ("dr_grpo", 0.2, 0.2,
     lambda n, o, r, m, a, b: _ours(dr_grpo_loss, n, o, a, m, MAX_COMPLETION_LENGTH, 0.2, b, r)),
    ("dapo", 0.2, 0.28, lambda n, o, r, m, a, b: _ours(dapo_loss, n, o, a, m, 0.2, 0.28, b, r)),
    # bnpo is the same token-level mean, normalised by this batch's token count rather than the generation batch's
    ("bnpo", 0.2, 0.28, lambda n, o, r, m, a, b: _ours(dapo_loss, n, o, a, m, 0.2, 0.28, b, r)),
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("case", TOKEN_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_token_level_losses_agree_with_grpo_trainer(case, beta):
    loss_type, eps_low, eps_high, ours_fn = case
    old, new, ref, mask, advantages = _batch(seed=1, scale=0.3)
    loss, grad, stats = ours_fn(new, old, ref, mask, advantages, beta)
    trl_loss, trl_grad, metrics = _trl_grpo(loss_type, eps_low, eps_high, beta, "token", old, new, ref, mask,
                                            advantages)
    assert_close(loss, trl_loss, **TOL)
    assert_close(grad, trl_grad, **TOL)  # also zero on padding and on clipped tokens, in both
    assert stats["clip_fraction_low"].item() == pytest.approx(metrics["clip_ratio/low_mean"][0], abs=1e-6)
    assert stats["clip_fraction_high"].item() == pytest.approx(metrics["clip_ratio/high_mean"][0], abs=1e-6)
    # not vacuous: some tokens are clipped on each side, most are not
    assert 0 < metrics["clip_ratio/low_mean"][0] and 0 < metrics["clip_ratio/high_mean"][0]
    assert metrics["clip_ratio/region_mean"][0] < 0.5


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_agrees_with_grpo_trainer_sequence_level(beta):
    """trl's GSPO: loss_type "grpo" with importance_sampling_level "sequence" (GRPOConfig's documented setup),
    clipped at GSPO's 3e-4 / 4e-4. Per-token noise 1e-3 puts some sequence ratios inside that range, some out."""
    old, new, ref, mask, advantages = _batch(seed=2, scale=1e-3)
    loss, grad, stats = _ours(gspo_loss, new, old, advantages, mask, 3e-4, 4e-4, beta, ref)
    trl_loss, trl_grad, metrics = _trl_grpo("grpo", 3e-4, 4e-4, beta, "sequence", old, new, ref, mask, advantages)
    assert_close(loss, trl_loss, **TOL)
    assert_close(grad, trl_grad, **TOL)
    # trl's clip ratios at sequence level are shares of all N sequences, ours of the sequences with a response
    # token (an empty one is never clipped: its ratio is exp(0 / 1) = 1 in trl).
    nonempty = sum(n > 0 for n in LENGTHS)
    for side in ("low", "high"):
        ours_share = stats[f"clip_fraction_{side}"].item() * nonempty / N
        assert ours_share == pytest.approx(metrics[f"clip_ratio/{side}_mean"][0], abs=1e-6)
    assert 0 < metrics["clip_ratio/region_mean"][0] < 1


def test_trl_default_kl_bias_correction_is_the_only_difference():
    """trl 1.16 defaults to ``use_bias_correction_kl=True`` (DeepSeek-V3.2): its per-token k3 KL is multiplied by
    the (differentiable) token ratio rho before aggregating. Ours is DeepSeekMath's plain k3 (Eq. 4), trl's
    ``use_bias_correction_kl=False``, checked above. Here the difference is pinned down exactly: trl's default
    equals our clipped term (beta 0) plus beta * sequence_mean(k3 * rho), in value and gradient. The two agree in
    value when rho = 1 (one update per batch) but not in gradient there: d(k3 * rho) = rho dk3 + k3 drho."""
    old, new, ref, mask, advantages = _batch(seed=1, scale=0.3)
    beta = 0.04
    logps = new.clone().requires_grad_(True)
    policy, _ = grpo_loss(logps, old, advantages, mask, 0.2, 0.2)
    rho = torch.exp(torch.where(mask > 0, logps - old, torch.zeros_like(logps)))
    corrected = policy + beta * token_loss(kl_estimate(logps, ref, "k3") * rho, mask, "sequence_mean")
    corrected.backward()
    trl_loss, trl_grad, _ = _trl_grpo("grpo", 0.2, 0.2, beta, "token", old, new, ref, mask, advantages,
                                      kl_bias_correction=True)
    assert_close(corrected.detach(), trl_loss, **TOL)
    assert_close(logps.grad, trl_grad, **TOL)
    plain, _, _ = _ours(grpo_loss, new, old, advantages, mask, 0.2, 0.2, beta, ref)
    assert abs(plain.item() - trl_loss.item()) > 1e-5  # the default does differ from our (and trl's off) k3


# --- RLOOTrainer: advantages (inline in _generate_and_score_completions) and _compute_loss ----------


def _rloo_trainer(beta, scores, old, ref):
    from trl import RLOOConfig, RLOOTrainer

    policy, reference = types.SimpleNamespace(training=True, is_gradient_checkpointing=False), object()
    completion_ids_list = [[5] * n for n in LENGTHS]

    def forward(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        assert input_ids.shape == (N, P + T) and logits_to_keep == T
        assert model is policy or model is reference
        return (old if model is policy else ref), None, None

    trainer = object.__new__(RLOOTrainer)
    trainer.__dict__.update(
        args=_config_defaults(RLOOConfig, beta=beta, num_generations=K, per_device_train_batch_size=N),
        beta=beta,
        num_generations=K,
        normalize_advantages=False,  # RLOOConfig's default
        reward_clip_range=None,
        mask_truncated_completions=False,
        pad_to_multiple_of=None,
        reward_weights=torch.ones(1),
        reward_func_names=["score"],
        model=policy,
        ref_model=reference if beta else None,
        accelerator=_fake_accelerator(),
        _tokenizer=types.SimpleNamespace(pad_token_id=0),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _logs={"prompt": [], "completion": [], "advantages": [], "rewards": collections.defaultdict(list),
               "extra": collections.defaultdict(list)},
        _pending_extra_logs=collections.defaultdict(list),
        _pending_metrics=collections.defaultdict(list),
        # the rollout and the judge, stubbed
        _generate=lambda prompts: ([[1] * P for _ in prompts], completion_ids_list, ["text"] * len(prompts)),
        _calculate_rewards=lambda inputs, prompts, completions, ids: scores.unsqueeze(1).clone(),
        _get_per_token_logps_and_entropies=forward,
    )
    return trainer


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_rloo_advantages_agree_with_rloo_trainer(beta):
    old, _, ref, mask, _ = _batch(seed=3, scale=0.0)
    scores = torch.randn(N, generator=torch.Generator().manual_seed(4))
    trainer = _rloo_trainer(beta, scores, old, ref)
    out = trainer._generate_and_score_completions([{"prompt": f"p{i // K}"} for i in range(N)])
    assert_close(out["completion_mask"].float(), mask)  # the stubbed rollout gave the intended lengths
    rewards = kl_shaped_rewards(scores, old, ref, mask, beta) if beta else scores
    ours = leave_one_out_advantages(rewards, K)
    assert_close(ours, out["advantages"], **TOL)
    assert_close((old * mask).sum(-1), out["old_logps"], **TOL)
    if beta:  # not vacuous: the KL penalty moved the advantages
        assert (ours - leave_one_out_advantages(scores, K)).abs().max() > 1e-2


def test_rloo_loss_agrees_with_rloo_trainer():
    """RLOOTrainer always clips its sequence ratio exp(sum_t logp - old_logp) at epsilon (0.2); our rloo_loss
    clips when given eps (several updates per batch). Per-token noise 0.1 puts sequence ratios on both sides."""
    from trl import RLOOConfig, RLOOTrainer

    old, new, _, mask, advantages = _batch(seed=5, scale=0.1)
    loss, grad, stats = _ours(rloo_loss, new, old, advantages, mask, 0.2)
    trainer = object.__new__(RLOOTrainer)
    logps = new.clone().requires_grad_(True)
    trainer.__dict__.update(
        args=_config_defaults(RLOOConfig),
        epsilon_low=0.2,
        epsilon_high=0.2,
        aux_loss_enabled=False,
        model=types.SimpleNamespace(training=True),
        accelerator=_fake_accelerator(),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _get_per_token_logps_and_entropies=_stub_forward(logps),
    )
    inputs = {**_prompt_and_completion(mask), "old_logps": (old * mask).sum(-1), "advantages": advantages}
    trl_loss = trainer._compute_loss(None, inputs)
    trl_loss.backward()
    assert_close(loss, trl_loss.detach(), **TOL)
    assert_close(grad, logps.grad, **TOL)
    metrics = trainer._metrics["train"]
    assert stats["clip_fraction_low"].item() == pytest.approx(metrics["clip_ratio/low_mean"][0], abs=1e-6)
    assert stats["clip_fraction_high"].item() == pytest.approx(metrics["clip_ratio/high_mean"][0], abs=1e-6)
    assert 0 < metrics["clip_ratio/region_mean"][0] < 1
