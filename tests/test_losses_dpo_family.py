"""DPO-family objectives against values worked out by hand.

Notation: lr = log pi(y) - log pi_ref(y) (a log-ratio), h = lr_w - lr_l,
sp(z) = log(1 + e^z) = -log sigmoid(-z), sig(z) = 1 / (1 + e^-z). Handy values:
sp(-0.2) = 0.5981388694, sp(0.2) = sp(-0.2) + 0.2 = 0.7981388694,
sp(-1) = 0.3132616875, sp(1) = 1.3132616875, sp(-0.5) = 0.4740769842,
sig(1) = 0.7310585786, sig(2) = 0.8807970780, sig(-1) = 0.2689414214.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.algorithms.apo import APODown, APOZero, apo_down_loss, apo_zero_loss
from prefopt.algorithms.dpo import dpo_loss
from prefopt.algorithms.hinge import Hinge, hinge_loss
from prefopt.algorithms.ipo import IPO, ipo_loss
from prefopt.algorithms.nca import NCA, nca_pair_loss
from prefopt.algorithms.orpo import ORPO, log_odds, orpo_loss
from prefopt.algorithms.robust_dpo import RobustDPO, robust_dpo_loss
from prefopt.algorithms.simpo import SimPO, simpo_loss
from prefopt.algorithms.sppo import SPPOHard, sppo_hard_loss
from prefopt.core.algorithm import PairLogps
from prefopt.core.logprobs import SequenceLogps
from prefopt.errors import PrefoptError

ALGORITHMS = [IPO, RobustDPO, Hinge, SimPO, ORPO, APOZero, APODown, NCA, SPPOHard]


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def pair(chosen_sum, rejected_sum, chosen_tokens, rejected_tokens) -> PairLogps:
    return PairLogps(SequenceLogps(t(*chosen_sum), t(*chosen_tokens)), SequenceLogps(t(*rejected_sum), t(*rejected_tokens)))


# --- IPO -------------------------------------------------------------------------------------------


def test_ipo_uses_per_token_mean_not_sum():
    """tau = 0.1: target 1/(2*0.1) = 5.

    chosen: policy -10, ref -16 over 2 tokens -> mean lr = 6/2 = +3
    rejected: policy -20, ref -16 over 4 tokens -> mean lr = -4/4 = -1
    mean form: h = 3 - (-1) = 4, loss = (4 - 5)^2 = 1
    summed form (NOT IPO here): h = 6 - (-4) = 10, loss = (10 - 5)^2 = 25
    rewards tau * mean lr: +0.3 and -0.1, margin 0.4.
    """
    policy, reference = pair([-10.0], [-20.0], [2], [4]), pair([-16.0], [-16.0], [2], [4])
    out = IPO(IPO.Config(beta=0.1)).loss(policy, reference, {})
    assert_close(out.losses, t(1.0))
    assert_close(ipo_loss(t(6.0), t(-4.0), beta=0.1), t(25.0))  # what a summed form would give
    assert_close(out.metrics["reward_chosen"], t(0.3))
    assert_close(out.metrics["reward_rejected"], t(-0.1))
    assert_close(out.metrics["margin"], t(0.4))


def test_ipo_zero_at_target_and_gradient_by_hand():
    """h = 5 = 1/(2 tau) gives 0. At h = 4: d loss / d policy_chosen_sum = 2 (h - 5) * (1 / 2 tokens) = -1."""
    assert_close(ipo_loss(t(3.0), t(-2.0), beta=0.1), t(0.0))
    chosen = t(-10.0).requires_grad_()
    policy = PairLogps(SequenceLogps(chosen, t(2.0)), SequenceLogps(t(-20.0), t(4.0)))
    IPO(IPO.Config(beta=0.1)).loss(policy, pair([-16.0], [-16.0], [2], [4]), {}).losses.sum().backward()
    assert_close(chosen.grad, t(-1.0))


# --- robust DPO ------------------------------------------------------------------------------------


def test_robust_dpo_unbiased_form_differs_from_conservative():
    """beta 0.1, lr_w = +1, lr_l = -1: z = beta * h = 0.2, eps = 0.1.

    Using sp(0.2) = sp(-0.2) + 0.2:
    robust (unbiased): (0.9 sp(-0.2) - 0.1 sp(0.2)) / 0.8 = sp(-0.2) - 0.1*0.2/0.8 = 0.5981389 - 0.025 = 0.5731389
    conservative (dpo label_smoothing=0.1): 0.9 sp(-0.2) + 0.1 sp(0.2) = sp(-0.2) + 0.02 = 0.6181389
    eps = 0 is plain DPO: sp(-0.2) = 0.5981389.
    """
    robust = robust_dpo_loss(t(1.0), t(-1.0), beta=0.1, label_smoothing=0.1)
    conservative, _, _ = dpo_loss(t(1.0), t(-1.0), t(0.0), t(0.0), beta=0.1, label_smoothing=0.1)
    assert_close(robust, t(0.5731388694))
    assert_close(conservative, t(0.6181388694))
    assert_close(robust_dpo_loss(t(1.0), t(-1.0), beta=0.1, label_smoothing=0.0), t(0.5981388694))


def test_robust_dpo_is_unbiased_under_label_flips():
    """Flipped pair: z = -0.2 -> (0.9 sp(0.2) - 0.1 sp(-0.2)) / 0.8 = sp(-0.2) + 0.225 = 0.8231389.

    Expectation over flips: 0.9 * 0.5731389 + 0.1 * 0.8231389 = 0.5158250 + 0.0823139 = 0.5981389,
    exactly the clean DPO loss sp(-0.2).
    """
    as_labelled = robust_dpo_loss(t(1.0), t(-1.0), beta=0.1, label_smoothing=0.1)
    flipped = robust_dpo_loss(t(-1.0), t(1.0), beta=0.1, label_smoothing=0.1)
    assert_close(flipped, t(0.8231388694))
    assert_close(0.9 * as_labelled + 0.1 * flipped, t(0.5981388694))


# --- hinge -----------------------------------------------------------------------------------------


def test_hinge_values_and_zero_beyond_margin():
    """beta 0.1 (margin 1/beta = 10 nats): relu(1 - 0.1 h).

    h = 2 -> 0.8;  h = -5 -> 1.5;  h = 10 -> 0 (exactly at the margin);  h = 15 -> 0.
    """
    losses = hinge_loss(t(1.0, -2.0, 4.0, 9.0), t(-1.0, 3.0, -6.0, -6.0), beta=0.1)
    assert_close(losses, t(0.8, 1.5, 0.0, 0.0))


def test_hinge_gradient_is_minus_beta_inside_and_zero_beyond():
    """Inside the margin d loss / d lr_w = -beta = -0.1; beyond it (h = 15) the gradient is 0."""
    chosen = t(1.0, 9.0).requires_grad_()
    hinge_loss(chosen, t(-1.0, -6.0), beta=0.1).sum().backward()
    assert_close(chosen.grad, t(-0.1, 0.0))


# --- SimPO -----------------------------------------------------------------------------------------


def test_simpo_value_gamma_and_length_normalisation():
    """beta 2, chosen sum -3 over 3 tokens (mean -1), rejected sum -6 over 4 tokens (mean -1.5).

    gamma 0.5: z = 2*(-1) - 2*(-1.5) - 0.5 = 0.5 -> sp(-0.5) = 0.4740770
    gamma 0:   z = 1                            -> sp(-1)   = 0.3132617
    summed log-probs would give z = 2*(-3) - 2*(-6) - 0.5 = 5.5 -> sp(-5.5) = 0.0040784 (not SimPO)
    rewards beta * mean: -2 and -3; margin +1 (gamma is not part of the reward).
    """
    policy = pair([-3.0], [-6.0], [3], [4])
    out = SimPO(SimPO.Config(beta=2.0, gamma=0.5)).loss(policy, None, {})
    assert_close(out.losses, t(0.4740769842))
    assert_close(SimPO(SimPO.Config(beta=2.0, gamma=0.0)).loss(policy, None, {}).losses, t(0.3132616875))
    assert_close(simpo_loss(t(-3.0), t(-6.0), beta=2.0, gamma=0.5), t(0.0040784433))
    assert_close(out.metrics["reward_chosen"], t(-2.0))
    assert_close(out.metrics["margin"], t(1.0))


def test_simpo_label_smoothing():
    """eps 0.1, z = 0.5: 0.9 sp(-0.5) + 0.1 sp(0.5) = sp(-0.5) + 0.1 * 0.5 = 0.4740770 + 0.05 = 0.5240770."""
    assert_close(simpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=0.5, label_smoothing=0.1), t(0.5240769842))


# --- ORPO ------------------------------------------------------------------------------------------


def test_orpo_worked_case():
    """Chosen mean log-prob ln 0.5 (3 tokens), rejected ln 0.2 (2 tokens), lambda 0.1.

    odds: 0.5/0.5 = 1 -> log odds 0;  0.2/0.8 = 0.25 -> log odds ln 0.25
    log odds ratio = 0 - ln 0.25 = ln 4;  -log sigmoid(ln 4) = ln(1 + 1/4) = ln 1.25 = 0.2231436
    nll = -ln 0.5 = 0.6931472;  loss = 0.6931472 + 0.1 * 0.2231436 = 0.7154615
    A plain log-prob difference would give ln 0.5 - ln 0.2 = ln 2.5 and -log sigmoid(ln 2.5) = ln 1.4 = 0.3364722.
    """
    policy = pair([3 * math.log(0.5)], [2 * math.log(0.2)], [3], [2])
    out = ORPO(ORPO.Config(lam=0.1)).loss(policy, None, {})
    assert_close(out.losses, t(0.7154615357))
    assert_close(out.metrics["nll"], t(math.log(2.0)))
    assert_close(out.metrics["log_odds_ratio"], t(math.log(4.0)))
    assert_close(out.metrics["margin"], t(math.log(4.0)))  # ORPO's rewards are the log odds
    assert_close(out.metrics["reward_chosen"], t(0.0), atol=1e-6, rtol=0)
    odds_term = (out.losses - out.metrics["nll"]) / 0.1
    assert_close(odds_term, t(math.log(1.25)))
    assert not torch.allclose(odds_term, t(math.log(1.4)))


def test_orpo_odds_ratio_is_not_a_log_prob_difference():
    """Same mean log-prob difference (0.1 nats), different levels: the odds ratio tells them apart.

    (-0.1, -0.2): log odds = x - ln(1 - e^x): -0.1 - ln(0.0951626) = 2.2521684, -0.2 - ln(0.1812692) = 1.5077718
    -> ratio 0.7443966.  (-2.1, -2.2): -2.1 - ln(0.8775436) = -1.9693716, -2.2 - ln(0.8891968) = -2.0825654
    -> ratio 0.1131938.
    """
    _, _, ratio = orpo_loss(t(-0.1, -2.1), t(-0.2, -2.2), lam=0.1)
    assert_close(ratio, t(0.7443966, 0.1131938), atol=1e-5, rtol=1e-5)


def test_orpo_log_odds_stable_and_gradient_finite_near_certainty():
    """Near P = 1 the expm1 branch is accurate: x = -1e-4 -> log odds = x - ln(1 - e^x) = 9.2102904.

    At x = 0 (certain or empty response) the odds are capped instead of infinite and the gradient is finite.
    """
    assert_close(log_odds(t(-1e-4)), t(-1e-4 - math.log(-math.expm1(-1e-4))), atol=1e-4, rtol=1e-6)
    chosen = t(0.0, -0.5).requires_grad_()
    losses, _, _ = orpo_loss(chosen, t(-1.0, -1.0))
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(chosen.grad).all()


# --- APO -------------------------------------------------------------------------------------------


def test_apo_values():
    """beta 0.1, lr_w = +10, lr_l = -10: rewards r_w = 1, r_l = -1.

    APO-zero: (1 - sig(1)) + sig(-1) = 2 * 0.2689414 = 0.5378828
    APO-down: sig(1) + 1 - sig(2) = 0.7310586 + 1 - 0.8807971 = 0.8502615
    both at zero rewards: 1 - 0.5 + 0.5 = 1 and 0.5 + 1 - 0.5 = 1.
    """
    assert_close(apo_zero_loss(t(10.0, 0.0), t(-10.0, 0.0), beta=0.1), t(0.5378828427, 1.0))
    assert_close(apo_down_loss(t(10.0, 0.0), t(-10.0, 0.0), beta=0.1), t(0.8502615007, 1.0))


def test_apo_zero_and_down_push_the_chosen_likelihood_opposite_ways():
    """d/d lr_w at r = (1, -1), beta 0.1 (sig'(z) = sig(z) sig(-z): sig'(1) = 0.1966119, sig'(2) = 0.1049936):

    APO-zero: -beta sig'(1) = -0.0196612 (raise chosen)
    APO-down: beta (sig'(1) - sig'(2)) = 0.1 * 0.0916184 = +0.0091618 (lower chosen)
    """
    grads = []
    for loss_fn in (apo_zero_loss, apo_down_loss):
        chosen = t(10.0).requires_grad_()
        loss_fn(chosen, t(-10.0), beta=0.1).sum().backward()
        grads.append(chosen.grad)
    assert_close(grads[0], t(-0.0196611933))
    assert_close(grads[1], t(0.0091618348))


# --- NCA -------------------------------------------------------------------------------------------


def test_nca_values_depend_on_absolute_rewards():
    """beta 0.1. Rewards (1, -1): sp(-1) + 0.5 sp(1) + 0.5 sp(-1) = 0.3132617 + 0.6566308 + 0.1566308 = 1.1265234.

    Rewards (2, 0), the same margin: sp(-2) + 0.5 sp(2) + 0.5 sp(0) = 0.1269280 + 1.0634640 + 0.3465736 = 1.5369656.
    DPO would give sp(-2) = 0.1269280 for both.
    """
    assert_close(nca_pair_loss(t(10.0, 20.0), t(-10.0, 0.0), beta=0.1), t(1.1265233750, 1.5369656068))


# --- SPPO-hard -------------------------------------------------------------------------------------


def test_sppo_hard_anchors_each_side():
    """beta 0.1: targets +5 and -5. lr_w = 3, lr_l = -1: (3 - 5)^2 + (-1 + 5)^2 = 4 + 16 = 20.

    lr = (5, -5) -> 0. Shifting both by +1 keeps h = 10 (IPO-sum would not change) but costs 1 + 1 = 2.
    """
    assert_close(sppo_hard_loss(t(3.0, 5.0, 6.0), t(-1.0, -5.0, -4.0), beta=0.1), t(20.0, 0.0, 2.0))


# --- Algorithm classes: metrics, gradients, flags, config, registration ----------------------------

POLICY = pair([-4.0, -9.0], [-7.0, -5.0], [2, 3], [3, 2])  # row 0 prefers y_w, row 1 y_l, for every objective
REFERENCE = pair([-4.5, -8.0], [-5.5, -5.0], [2, 3], [3, 2])


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_metrics_contract(cls):
    algo = cls()
    out = algo.loss(POLICY, REFERENCE if cls.needs_reference else None, {})
    assert out.losses.shape == (2,)
    for name in ("margin", "accuracy", "reward_chosen", "reward_rejected"):
        assert out.metrics[name].shape == (2,) and not out.metrics[name].requires_grad
    assert_close(out.metrics["margin"], out.metrics["reward_chosen"] - out.metrics["reward_rejected"])
    assert_close(out.metrics["accuracy"], t(1.0, 0.0))
    assert cls.description() and cls.inputs == "pairs" and cls.head == "lm"


def test_reference_flags():
    assert not SimPO.needs_reference and not ORPO.needs_reference
    assert all(cls.needs_reference for cls in ALGORITHMS if cls not in (SimPO, ORPO))


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_gradient_direction(cls):
    """At a small positive margin (lr_w = +0.5, lr_l = -0.5), raising the chosen log-prob lowers the loss
    (APO-down: the opposite, by design) and raising the rejected log-prob raises it."""
    chosen = t(-4.0).requires_grad_()
    rejected = t(-6.0).requires_grad_()
    policy = PairLogps(SequenceLogps(chosen, t(2.0)), SequenceLogps(rejected, t(3.0)))
    reference = pair([-4.5], [-5.5], [2], [3]) if cls.needs_reference else None
    cls().loss(policy, reference, {}).losses.sum().backward()
    assert (chosen.grad > 0) if cls is APODown else (chosen.grad < 0)
    assert rejected.grad > 0


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (IPO, {"beta": 0.0}),
        (RobustDPO, {"beta": -1.0}),
        (RobustDPO, {"label_smoothing": 0.5}),
        (RobustDPO, {"label_smoothing": -0.1}),
        (Hinge, {"beta": 0.0}),
        (SimPO, {"beta": 0.0}),
        (SimPO, {"gamma": -0.1}),
        (SimPO, {"label_smoothing": 0.5}),
        (ORPO, {"lam": -0.1}),
        (APOZero, {"beta": 0.0}),
        (APODown, {"beta": float("nan")}),
        (NCA, {"beta": 0.0}),
        (SPPOHard, {"beta": 0.0}),
    ],
)
def test_config_rejects_out_of_range(cls, kwargs):
    with pytest.raises(PrefoptError, match=next(iter(kwargs))):
        cls.Config(**kwargs)


def test_each_class_is_registered_under_its_name():
    """The entry points in pyproject.toml resolve to these classes, one name each."""
    from prefopt.core import registry

    expected = {"ipo": IPO, "robust-dpo": RobustDPO, "hinge": Hinge, "simpo": SimPO, "orpo": ORPO,
                "apo-zero": APOZero, "apo-down": APODown, "nca": NCA, "sppo-hard": SPPOHard}
    for name, cls in expected.items():
        assert registry.get(name) is cls
    assert set(expected.values()) == set(ALGORITHMS)
