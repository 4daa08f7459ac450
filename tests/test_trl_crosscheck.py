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

from prefopt.algorithm import PairLogps  # noqa: E402
from prefopt.algorithms.apo import APODown, APOZero  # noqa: E402
from prefopt.algorithms.dpo import DPO  # noqa: E402
from prefopt.algorithms.hinge import Hinge  # noqa: E402
from prefopt.algorithms.ipo import IPO  # noqa: E402
from prefopt.algorithms.nca import NCA  # noqa: E402
from prefopt.algorithms.orpo import ORPO  # noqa: E402
from prefopt.algorithms.robust_dpo import RobustDPO  # noqa: E402
from prefopt.algorithms.simpo import SimPO  # noqa: E402
from prefopt.algorithms.sppo import SPPOHard  # noqa: E402
from prefopt.logprobs import SequenceLogps  # noqa: E402

# Importing trl's experimental trainers trips a torch.jit deprecation inside a dependency; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOL = dict(atol=1e-5, rtol=1e-5)
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

        def model(**kwargs):
            zeros = torch.zeros(2, T - 1)
            return types.SimpleNamespace(
                log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
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
