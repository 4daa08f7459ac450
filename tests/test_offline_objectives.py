"""SFT, reward (Bradley-Terry) and KTO losses against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.algorithms.kto import KTO, kto_loss, kto_reference_point
from prefopt.algorithms.reward import Reward, bradley_terry_loss
from prefopt.algorithms.sft import SFT
from prefopt.core.algorithm import PairRewards, UnpairedLogps
from prefopt.core.logprobs import SequenceLogps
from prefopt.errors import PrefoptError


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_sft_is_per_token_mean_nll():
    """sums -6 over 3 tokens and -2 over 4 tokens -> losses 2.0 and 0.5."""
    out = SFT().loss(SequenceLogps(t(-6.0, -2.0), t(3.0, 4.0)), None, {})
    assert_close(out.losses, t(2.0, 0.5))


def test_bradley_terry_by_hand():
    """r_w 1.0, r_l -1.0: -log sigmoid(2) = log(1 + e^-2) = 0.126928.
    margin 0.5: log(1 + e^-1.5) = 0.201413.
    centering 0.01 with r_w 2, r_l 1: log(1 + e^-1) + 0.01 * 9 = 0.313262 + 0.09 = 0.403262.
    """
    assert_close(bradley_terry_loss(t(1.0), t(-1.0)), t(0.126928), atol=1e-6, rtol=0)
    assert_close(bradley_terry_loss(t(1.0), t(-1.0), margin=0.5), t(0.201413), atol=1e-6, rtol=0)
    assert_close(bradley_terry_loss(t(2.0), t(1.0), center_coefficient=0.01), t(0.403262), atol=1e-6, rtol=0)


def test_bradley_terry_is_blind_to_a_shift_only_without_centering():
    """Adding 5 to both rewards changes nothing unless the centering term is on."""
    assert_close(bradley_terry_loss(t(1.0), t(0.0)), bradley_terry_loss(t(6.0), t(5.0)))
    assert bradley_terry_loss(t(6.0), t(5.0), center_coefficient=0.01) > bradley_terry_loss(t(1.0), t(0.0), center_coefficient=0.01)


def test_reward_algorithm_metrics():
    out = Reward(Reward.Config(center_coefficient=0.0)).loss(PairRewards(t(1.0, 0.0, 2.0), t(-1.0, 0.5, 2.0)), None, {})
    assert_close(out.metrics["accuracy"], t(1.0, 0.0, 0.5))
    assert_close(out.losses[0], t(0.126928)[0], atol=1e-6, rtol=0)


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    policy = t(-5.0, -7.0).requires_grad_()
    # mean(policy - reference) = mean(-1, -1) = -1 -> clamped to 0
    assert kto_reference_point(policy, t(-4.0, -6.0)).item() == 0.0
    # mean(1, 3) = 2
    z0 = kto_reference_point(policy, t(-6.0, -10.0))
    assert z0.item() == 2.0 and not z0.requires_grad


def test_kto_loss_by_hand():
    """beta 0.1, z0 0.5, lambda_D 1, lambda_U 2.
    desirable,   log-ratio  2.5: 1 - sigmoid(0.1 * (2.5 - 0.5))     = 1 - sigmoid(0.2)     = 0.450166
    undesirable, log-ratio -1.5: 2 - 2 * sigmoid(0.1 * (0.5 + 1.5)) = 2 - 2 * sigmoid(0.2) = 0.900332
    undesirable, log-ratio  2.5: 2 - 2 * sigmoid(0.1 * (0.5 - 2.5)) = 2 - 2 * sigmoid(-0.2) = 1.099668
    rewards are beta * log-ratio: 0.25, -0.15, 0.25.
    """
    losses, rewards = kto_loss(
        t(-1.5, -11.5, -1.5), t(-4.0, -10.0, -4.0), torch.tensor([True, False, False]), torch.tensor(0.5),
        beta=0.1, undesirable_weight=2.0,
    )
    assert_close(losses, t(0.450166, 0.900332, 1.099668), atol=1e-6, rtol=0)
    assert_close(rewards, t(0.25, -0.15, 0.25))


def test_kto_weights_apply_to_their_own_label_only():
    """lambda_U 2 doubles the undesirable example's loss and leaves the desirable one alone."""
    args = (t(-1.0, -1.0), t(-1.0, -1.0), torch.tensor([True, False]), torch.tensor(0.0))
    base, _ = kto_loss(*args)
    weighted, _ = kto_loss(*args, undesirable_weight=2.0)
    assert_close(base, t(0.5, 0.5))
    assert_close(weighted, t(0.5, 1.0))


def test_kto_algorithm_uses_the_mismatched_rows_for_z0():
    """Mismatched log-ratios 1 and 3 -> z0 2; desirable log-ratio 2 -> loss 1 - sigmoid(0) = 0.5."""
    algo = KTO(KTO.Config(beta=0.1))
    policy = UnpairedLogps(SequenceLogps(t(-2.0), t(1.0)), SequenceLogps(t(-4.0, -2.0), t(1.0, 1.0)))
    reference = UnpairedLogps(SequenceLogps(t(-4.0), t(1.0)), SequenceLogps(t(-5.0, -5.0), t(1.0, 1.0)))
    # batch of one own completion but z0 is averaged over its mismatched rows
    out = algo.loss(policy, reference, {"label": torch.tensor([True])})
    assert_close(out.losses, t(0.5))
    assert_close(out.metrics["kl"], t(2.0))


@pytest.mark.parametrize("cls, kwargs", [(KTO, {"beta": 0}), (KTO, {"desirable_weight": -1}), (Reward, {"center_coefficient": -0.1})])
def test_config_validation(cls, kwargs):
    with pytest.raises(PrefoptError):
        cls.Config(**kwargs)
