"""Our DPO-family losses agree with trl's own code on the same inputs (to 1e-5).

trl keeps its losses inside trainer methods, not pure functions. The least
invasive way in is to allocate a trainer with ``object.__new__`` (skipping its
heavy ``__init__``: no model, dataset or accelerator is built) and set only
the attributes the loss code reads, with the values ``__init__`` would copy
from its config. Then:

- DPOTrainer._compute_loss(model, inputs) runs trl's whole loss path for
  ``loss_type`` sigmoid / ipo / robust / hinge / apo_zero / apo_down /
  nca_pair / sppo_hard. ``model`` is a stand-in returning the per-token
  log-probs trl's fused LM head would return (each response's summed log-prob
  placed on its first response token); reference log-probs come in as
  precomputed columns. It returns the batch mean, so it is called once per pair.
- CPOTrainer.cpo_loss (simpo; and sigmoid with label smoothing, fed log-ratios,
  for conservative DPO) and ORPOTrainer.odds_ratio_loss are called directly;
  ORPO's total, nll - mean(odds-ratio term), through get_batch_loss_metrics with
  its forward replaced.

No model download, no network. If a trl upgrade makes the loss code read a new
attribute the stand-in lacks, these tests fail loudly rather than pass vacuously.
"""

import collections
import math
import types

import pytest
import torch
from torch.testing import assert_close

trl = pytest.importorskip("trl", reason="trl not installed: the optional cross-check against trl's losses is skipped")

from prefopt.algorithms.apo import APODown, APOZero
from prefopt.algorithms.dpo import DPO
from prefopt.algorithms.hinge import Hinge
from prefopt.algorithms.ipo import IPO
from prefopt.algorithms.nca import NCA
from prefopt.algorithms.orpo import ORPO
from prefopt.algorithms.robust_dpo import RobustDPO
from prefopt.algorithms.simpo import SimPO
from prefopt.algorithms.sppo import SPPOHard
from prefopt.core.algorithm import PairLogps
from prefopt.core.logprobs import SequenceLogps

# Importing trl's experimental trainers trips a torch.jit deprecation inside a dependency; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOL = {"atol": 1e-5, "rtol": 1e-5}
B, T = 6, 12  # pairs; padded sequence length (position 0 is the prompt)


def _fake_accelerator():
    return types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


@pytest.fixture(scope="module")
def batch():
    """Random pairs with different response lengths on the two sides (so sum vs mean normalisation matters)."""
    g = torch.Generator().manual_seed(0)
    tokens_c = torch.randint(1, T - 1, (B,), generator=g).float()  # (B,)
    tokens_r = torch.randint(1, T - 1, (B,), generator=g).float()  # (B,)

    def sums(tokens):  # per-token log-probs in [-3, -0.05]
        return -(0.05 + 2.95 * torch.rand(B, generator=g)) * tokens

    policy = PairLogps(SequenceLogps(sums(tokens_c), tokens_c), SequenceLogps(sums(tokens_r), tokens_r))
    reference = PairLogps(SequenceLogps(sums(tokens_c), tokens_c), SequenceLogps(sums(tokens_r), tokens_r))
    return policy, reference


# --- DPOTrainer._compute_loss ----------------------------------------------------------------------


def _dpo_trainer(loss_type: str, beta: float, label_smoothing: float = 0.0):
    from trl import DPOTrainer

    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        accelerator=_fake_accelerator(),
        model=types.SimpleNamespace(training=True),
        beta=beta,
        label_smoothing=label_smoothing,
        loss_types=[loss_type],
        loss_weights=[1.0],
        precompute_ref_logps=True,  # reference log-probs come in the batch
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        use_weighting=False,
        aux_loss_enabled=False,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer


def _trl_dpo_losses(loss_type, beta, policy, reference, label_smoothing=0.0):
    """trl's per-pair loss: one _compute_loss call per pair (it returns the batch mean)."""
    trainer = _dpo_trainer(loss_type, beta, label_smoothing)
    out = []
    for i in range(policy.chosen.sum.shape[0]):
        sums = torch.stack([policy.chosen.sum[i], policy.rejected.sum[i]])  # (2,) [chosen, rejected]
        lengths = [int(policy.chosen.tokens[i]), int(policy.rejected.tokens[i])]
        completion_mask = torch.zeros(2, T, dtype=torch.long)
        per_token = torch.zeros(2, T - 1)  # log-probs of tokens 1..T-1
        for row, n in enumerate(lengths):
            completion_mask[row, 1 : 1 + n] = 1
            per_token[row, 0] = sums[row]  # the whole sum on the first response token

        def model(*args, _per_token=per_token, **kwargs):  # this pair's log-probs, bound now
            zeros = torch.zeros(2, T - 1)
            return types.SimpleNamespace(
                log_probs=_per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
            )

        inputs = {
            "input_ids": torch.zeros(2, T, dtype=torch.long),
            "attention_mask": torch.ones(2, T, dtype=torch.long),
            "completion_mask": completion_mask,
            "ref_chosen_logps": reference.chosen.sum[i : i + 1],
            "ref_rejected_logps": reference.rejected.sum[i : i + 1],
        }
        out.append(trainer._compute_loss(model, inputs, return_outputs=False))
    return torch.stack(out)


@pytest.mark.parametrize(
    "algo, loss_type",
    [
        (DPO(DPO.Config(beta=0.1)), "sigmoid"),
        (DPO(DPO.Config(beta=0.5)), "sigmoid"),
        (IPO(IPO.Config(beta=0.1)), "ipo"),
        (IPO(IPO.Config(beta=0.5)), "ipo"),
        (RobustDPO(RobustDPO.Config(beta=0.1, label_smoothing=0.1)), "robust"),
        (RobustDPO(RobustDPO.Config(beta=0.3, label_smoothing=0.3)), "robust"),
        (Hinge(Hinge.Config(beta=0.1)), "hinge"),
        (Hinge(Hinge.Config(beta=1.0)), "hinge"),
        (APOZero(APOZero.Config(beta=0.1)), "apo_zero"),
        (APODown(APODown.Config(beta=0.1)), "apo_down"),
        (NCA(NCA.Config(beta=0.1)), "nca_pair"),
        (SPPOHard(SPPOHard.Config(beta=0.1)), "sppo_hard"),
        (SPPOHard(SPPOHard.Config(beta=0.5)), "sppo_hard"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{type(v).__name__}-{v.config}",
)
def test_dpo_trainer_losses_agree(batch, algo, loss_type):
    policy, reference = batch
    cfg = algo.config
    ours = algo.loss(policy, reference, {}).losses
    theirs = _trl_dpo_losses(loss_type, cfg.beta, policy, reference, getattr(cfg, "label_smoothing", 0.0))
    assert_close(ours, theirs, **TOL)


def test_hinge_crosscheck_exercises_both_sides_of_the_margin(batch):
    """Guard against a vacuous hinge check: with beta 1.0 some pairs are past the margin (loss 0), some not."""
    policy, reference = batch
    losses = Hinge(Hinge.Config(beta=1.0)).loss(policy, reference, {}).losses
    assert (losses == 0).any() and (losses > 0).any()


# --- CPOTrainer.cpo_loss ---------------------------------------------------------------------------


def _cpo_trainer(loss_type: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5):
    cpo = pytest.importorskip("trl.experimental.cpo")
    trainer = object.__new__(cpo.CPOTrainer)
    trainer.__dict__.update(
        accelerator=_fake_accelerator(),
        beta=beta,
        label_smoothing=label_smoothing,
        loss_type=loss_type,
        simpo_gamma=simpo_gamma,
        alpha=0.0,  # AlphaPO off: plain log-prob rewards
    )
    return trainer


@pytest.mark.parametrize("beta, gamma, label_smoothing", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (2.0, 0.5, 0.1)])
def test_simpo_agrees_with_cpo_trainer(batch, beta, gamma, label_smoothing):
    """trl's CPO computes simpo on per-token mean log-probs (get_batch_logps(average_log_prob=True));
    we pass those means. Its CPO-only NLL term (cpo_alpha) is outside cpo_loss and not part of SimPO."""
    policy, _ = batch
    out = SimPO(SimPO.Config(beta=beta, gamma=gamma, label_smoothing=label_smoothing)).loss(policy, None, {})
    trainer = _cpo_trainer("simpo", beta, label_smoothing, simpo_gamma=gamma)
    losses, chosen_rewards, rejected_rewards = trainer.cpo_loss(policy.chosen.mean, policy.rejected.mean)
    assert_close(out.losses, losses, **TOL)
    assert_close(out.metrics["reward_chosen"], chosen_rewards, **TOL)
    assert_close(out.metrics["reward_rejected"], rejected_rewards, **TOL)


def test_conservative_dpo_label_smoothing_agrees_with_trl(batch):
    """trl 1.16's DPOTrainer ``sigmoid`` ignores label_smoothing (only robust/exo_pair read it), so the
    conservative form of our ``dpo label_smoothing=eps`` is checked against CPOTrainer's ``sigmoid``,
    which applies label smoothing to beta * (chosen - rejected): fed the log-ratios, that is cDPO."""
    policy, reference = batch
    ours = DPO(DPO.Config(beta=0.1, label_smoothing=0.2)).loss(policy, reference, {}).losses
    trainer = _cpo_trainer("sigmoid", beta=0.1, label_smoothing=0.2)
    theirs, _, _ = trainer.cpo_loss(
        policy.chosen.sum - reference.chosen.sum, policy.rejected.sum - reference.rejected.sum
    )
    assert_close(ours, theirs, **TOL)


# --- ORPOTrainer -----------------------------------------------------------------------------------


def _orpo_trainer(beta: float):
    orpo = pytest.importorskip("trl.experimental.orpo")
    trainer = object.__new__(orpo.ORPOTrainer)
    trainer.__dict__.update(accelerator=_fake_accelerator(), beta=beta, aux_loss_enabled=False)
    return trainer


def _with_near_certain_row(policy: PairLogps) -> PairLogps:
    """Add a pair whose chosen per-token probability is ~0.999 (log1mexp's expm1 branch)."""
    def extend(seq: SequenceLogps, total: float, tokens: float) -> SequenceLogps:
        return SequenceLogps(torch.cat([seq.sum, torch.tensor([total])]), torch.cat([seq.tokens, torch.tensor([tokens])]))

    return PairLogps(extend(policy.chosen, -0.004, 4.0), extend(policy.rejected, -0.3, 2.0))


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_odds_ratio_term_agrees(batch, lam):
    """trl's odds_ratio_loss returns beta * log sigmoid(log odds ratio) (<= 0) and the trainer minimises
    nll - mean(that); our per-example loss minus our nll must equal minus trl's term."""
    policy = _with_near_certain_row(batch[0])
    out = ORPO(ORPO.Config(lam=lam)).loss(policy, None, {})
    trainer = _orpo_trainer(lam)
    term, _, _, mean_ratio, mean_log_odds = trainer.odds_ratio_loss(policy.chosen.mean, policy.rejected.mean)
    assert_close(out.losses - out.metrics["nll"], -term, **TOL)
    assert_close(out.metrics["log_odds_ratio"].mean(), mean_log_odds, **TOL)
    assert_close(torch.nn.functional.logsigmoid(out.metrics["log_odds_ratio"]).mean(), mean_ratio, **TOL)


def test_orpo_total_loss_sign_and_scale_agree(batch, monkeypatch):
    """trl's full ORPO loss through get_batch_loss_metrics, with its forward replaced by our log-probs.

    Deliberate difference: trl's NLL is cross-entropy over prompt AND response tokens, a token-level mean
    over the batch; ours is the per-example mean over response tokens (the paper's L_SFT). So trl is handed
    our NLL here, and the check covers how trl combines it with the odds-ratio term (nll - mean(term)).
    """
    policy = _with_near_certain_row(batch[0])
    out = ORPO(ORPO.Config(lam=0.1)).loss(policy, None, {})
    trainer = _orpo_trainer(0.1)
    dummy_logits = torch.zeros(1, 1, 1)
    forward = (policy.chosen.mean, policy.rejected.mean, dummy_logits, dummy_logits, out.metrics["nll"].mean())
    monkeypatch.setattr(trainer, "concatenated_forward", lambda model, batch: forward, raising=False)
    loss, metrics = trainer.get_batch_loss_metrics(model=None, batch={})
    assert_close(out.losses.mean(), loss, **TOL)
    assert math.isclose(metrics["nll_loss"], out.metrics["nll"].mean().item(), rel_tol=1e-6)


# --- KTOTrainer._compute_loss ----------------------------------------------------------------------
#
# trl 1.16 keeps KTO in trl/trainer/kto_trainer.py (trl.experimental.kto only re-exports it with a deprecation
# warning). Its _compute_loss takes the batch mean of [desirable losses..., undesirable losses...], so per-example
# losses are read by calling it once per example: a 1-row main batch with the FULL batch's mismatched ("KL") rows,
# so every call estimates the same z0 from all B mismatched completions, as ours does.

from prefopt.algorithms.kto import KTO, kto_loss, kto_reference_point
from prefopt.algorithms.reward import Reward, bradley_terry_loss
from prefopt.algorithms.sft import SFT, sft_loss
from prefopt.core.algorithm import PairRewards, UnpairedLogps
from prefopt.core.logprobs import forward_logps

KTO_LABELS = [True, False, True, True, False, False]


def _kto_trainer(beta: float, desirable_weight: float, undesirable_weight: float):
    from trl import KTOTrainer

    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        accelerator=_fake_accelerator(),
        model=types.SimpleNamespace(training=True),
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        loss_type="kto",
        calculate_KL=True,
        precompute_ref_logps=True,  # reference log-probs (own and mismatched) come in the batch
        aux_loss_enabled=False,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer


def _per_token(sums: torch.Tensor) -> torch.Tensor:
    """(N, T-1) per-token log-probs as trl's fused head returns them: each row's sum on its first response token."""
    out = torch.zeros(sums.shape[0], T - 1)
    out[:, 0] = sums
    return out


def _trl_kto(trainer, policy: UnpairedLogps, reference: UnpairedLogps, labels: torch.Tensor, rows):
    """One KTOTrainer._compute_loss call on main rows `rows` (KL rows: the whole batch). Returns (loss, metrics)."""
    rows = torch.as_tensor(rows)
    n, n_kl = rows.shape[0], policy.mismatched.sum.shape[0]
    main_ids = torch.zeros(n, T, dtype=torch.long)  # 0 marks the main forward, 1 the KL forward
    kl_ids = torch.ones(n_kl, T, dtype=torch.long)

    def model(input_ids, **kwargs):
        assert kwargs.get("fused_lm_head"), "trl no longer asks for the fused LM head: stand-in out of date"
        if bool((input_ids == 1).all()):
            return types.SimpleNamespace(log_probs=_per_token(policy.mismatched.sum))
        zeros = torch.zeros(n, T - 1)
        return types.SimpleNamespace(
            log_probs=_per_token(policy.completion.sum[rows]), entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    def completion_mask(tokens):
        mask = torch.zeros(tokens.shape[0], T, dtype=torch.long)
        for i, t in enumerate(tokens.tolist()):
            mask[i, 1 : 1 + int(t)] = 1
        return mask

    inputs = {
        "input_ids": main_ids,
        "attention_mask": torch.ones(n, T, dtype=torch.long),
        "completion_mask": completion_mask(policy.completion.tokens[rows]),
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones(n_kl, T, dtype=torch.long),
        "KL_completion_mask": completion_mask(policy.mismatched.tokens),
        "label": labels[rows],
        "ref_logps": reference.completion.sum[rows],
        "ref_KL_logps": reference.mismatched.sum,
    }
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, dict(trainer._metrics["train"])


def _kto_batch(kl_shift: float, seed: int = 1):
    """Own and mismatched log-probs; the mismatched policy-minus-reference log-ratios average about kl_shift."""
    g = torch.Generator().manual_seed(seed)
    n = len(KTO_LABELS)
    tokens = torch.randint(1, T - 1, (n,), generator=g).float()
    tokens_kl = torch.randint(1, T - 1, (n,), generator=g).float()

    def sums(tok):
        return -(0.05 + 2.95 * torch.rand(n, generator=g)) * tok

    ref_own, ref_kl = sums(tokens), sums(tokens_kl)
    pol_own = ref_own + 4.0 * torch.randn(n, generator=g)  # log-ratios of both signs, a few nats
    pol_kl = ref_kl + kl_shift + torch.randn(n, generator=g)
    policy = UnpairedLogps(SequenceLogps(pol_own, tokens), SequenceLogps(pol_kl, tokens_kl))
    reference = UnpairedLogps(SequenceLogps(ref_own, tokens), SequenceLogps(ref_kl, tokens_kl))
    return policy, reference, torch.tensor(KTO_LABELS)


@pytest.mark.parametrize("kl_shift", [3.0, -3.0], ids=["kl-positive", "kl-negative-clamped"])
@pytest.mark.parametrize(
    "beta, desirable_weight, undesirable_weight", [(0.1, 1.0, 1.0), (0.1, 1.33, 1.0), (0.5, 1.0, 0.7)]
)
def test_kto_agrees_with_kto_trainer(kl_shift, beta, desirable_weight, undesirable_weight):
    policy, reference, labels = _kto_batch(kl_shift)
    raw_kl = (policy.mismatched.sum - reference.mismatched.sum).mean()
    assert (raw_kl > 1.0) if kl_shift > 0 else (raw_kl < -1.0)  # guard: the case is what its id says

    cfg = KTO.Config(beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    out = KTO(cfg).loss(policy, reference, {"label": labels})
    # The pure functions give what the class gives.
    z0 = kto_reference_point(policy.mismatched.sum, reference.mismatched.sum)
    losses, rewards = kto_loss(
        policy.completion.sum, reference.completion.sum, labels, z0, beta, desirable_weight, undesirable_weight
    )
    assert_close(out.losses, losses, **TOL)
    assert_close(out.metrics["reward"], rewards, **TOL)

    trainer = _kto_trainer(beta, desirable_weight, undesirable_weight)
    for i, desirable in enumerate(KTO_LABELS):
        loss, metrics = _trl_kto(trainer, policy, reference, labels, [i])
        assert_close(out.losses[i], loss, **TOL)
        assert math.isclose(metrics["kl"][0], z0.item(), rel_tol=1e-6, abs_tol=1e-6)
        side = "chosen" if desirable else "rejected"
        assert math.isclose(metrics[f"rewards/{side}"][0], out.metrics["reward"][i].item(), rel_tol=1e-5, abs_tol=1e-6)
    if kl_shift < 0:
        assert z0.item() == 0.0  # trl clamps too (checked above against its logged kl)

    # The whole batch in one call: trl regroups desirable-first, its mean is ours.
    loss, _ = _trl_kto(trainer, policy, reference, labels, list(range(len(KTO_LABELS))))
    assert_close(out.losses.mean(), loss, **TOL)


def test_kto_reference_point_moves_the_loss():
    """Guard against a vacuous KL check: with z0 > 0, the losses differ from those with z0 = 0 by far more than TOL."""
    policy, reference, labels = _kto_batch(3.0)
    z0 = kto_reference_point(policy.mismatched.sum, reference.mismatched.sum)
    with_z0, _ = kto_loss(policy.completion.sum, reference.completion.sum, labels, z0, 0.1)
    without, _ = kto_loss(policy.completion.sum, reference.completion.sum, labels, torch.tensor(0.0), 0.1)
    assert (with_z0 - without).abs().min() > 1e-3


# --- RewardTrainer.compute_loss --------------------------------------------------------------------


def _reward_trainer(center_rewards_coefficient):
    from trl import RewardTrainer

    trainer = object.__new__(RewardTrainer)
    trainer.__dict__.update(
        accelerator=_fake_accelerator(),
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(center_rewards_coefficient=center_rewards_coefficient),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer


@pytest.mark.parametrize("margin, center", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.01), (0.7, 0.05)])
def test_bradley_terry_agrees_with_reward_trainer(margin, center):
    """trl: -mean(logsigmoid(r_w - r_l - margin)) + c * mean((r_w + r_l)^2), with a per-pair "margin" column
    (here constant) and no margin key when there is none; c = None (its default) when we use 0."""
    g = torch.Generator().manual_seed(2)
    chosen, rejected = 2.0 * torch.randn(B, generator=g) + 1.0, 2.0 * torch.randn(B, generator=g)
    out = Reward(Reward.Config(margin=margin, center_coefficient=center)).loss(PairRewards(chosen, rejected), None, {})
    assert_close(out.losses, bradley_terry_loss(chosen, rejected, margin, center), **TOL)

    def model(**kwargs):
        assert kwargs["input_ids"].shape[0] == 2 * B
        return types.SimpleNamespace(logits=torch.cat([chosen, rejected])[:, None])  # (2B, 1): chosen rows first

    inputs = {"input_ids": torch.zeros(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T, dtype=torch.long)}
    if margin:
        inputs["margin"] = torch.full((B,), margin)
    trainer = _reward_trainer(center if center else None)
    theirs = trainer.compute_loss(model, inputs)
    assert_close(out.losses.mean(), theirs, **TOL)
    assert math.isclose(trainer._metrics["train"]["margin"][0], out.metrics["margin"].mean().item(), rel_tol=1e-5)
    assert math.isclose(trainer._metrics["train"]["accuracy"][0], out.metrics["accuracy"].mean().item())


# --- SFTTrainer.compute_loss -----------------------------------------------------------------------
#
# Driven end to end through a tiny randomly initialised Llama (no download) with trl's own fused LM head
# (add_fused_lm_head, as SFTTrainer.__init__ installs it): trl shifts and masks via labels=-100, we via
# prefopt.core.logprobs.forward_logps on the same model's ordinary logits. So this also checks the two agree on
# which position predicts which token.


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).float().eval()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    return model


def _sft_trainer(model):
    from trl import SFTTrainer

    trainer = object.__new__(SFTTrainer)
    accelerator = _fake_accelerator()
    accelerator.parallelism_config = None
    trainer.__dict__.update(
        accelerator=accelerator,
        model=model,
        args=types.SimpleNamespace(loss_type="nll", average_tokens_across_devices=False, max_length=None),
        compute_loss_func=None,
        label_smoother=None,
        aux_loss_enabled=False,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer


def _sft_batch(rows):
    """rows: (prompt_len, completion_len) per sequence, right-padded to a common length."""
    g = torch.Generator().manual_seed(3)
    width = max(p + c for p, c in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    loss_mask = torch.zeros_like(input_ids)
    for i, (p, c) in enumerate(rows):
        input_ids[i, : p + c] = torch.randint(1, 48, (p + c,), generator=g)
        attention_mask[i, : p + c] = 1
        loss_mask[i, p : p + c] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def _trl_sft_loss(model, batch):
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100),
    }
    with torch.no_grad():
        return _sft_trainer(model).compute_loss(model, inputs)


def test_sft_single_sequence_agrees_with_sft_trainer(tiny_lm):
    batch = _sft_batch([(4, 7)])
    with torch.no_grad():
        logps = forward_logps(tiny_lm, batch)
    ours = SFT().loss(logps, None, batch).losses
    assert_close(ours, sft_loss(logps), **TOL)
    assert logps.tokens.item() == 7
    assert_close(ours[0], _trl_sft_loss(tiny_lm, batch), **TOL)


def test_sft_batch_differs_from_sft_trainer_only_by_token_weighting(tiny_lm):
    """Deliberate difference (algorithms/sft.py): trl averages over all tokens of the batch, we average per example.
    trl's batch loss is therefore the token-weighted mean of our per-example losses, not their plain mean."""
    batch = _sft_batch([(3, 2), (2, 9), (5, 4)])
    with torch.no_grad():
        logps = forward_logps(tiny_lm, batch)
    ours = sft_loss(logps)  # (3,)
    theirs = _trl_sft_loss(tiny_lm, batch)
    assert_close((ours * logps.tokens).sum() / logps.tokens.sum(), theirs, **TOL)
