import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.algorithms.dpo import DPO, dpo_loss
from prefopt.core.algorithm import PairLogps
from prefopt.core.logprobs import SequenceLogps
from prefopt.errors import PrefoptError


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_zero_margin_is_ln2():
    """policy == reference: logits 0, loss = -log sigmoid(0) = ln 2 for any beta."""
    for beta in (0.1, 0.5):
        losses, rc, rr = dpo_loss(t(-5.0, -9.0), t(-7.0, -2.0), t(-5.0, -9.0), t(-7.0, -2.0), beta=beta)
        assert_close(losses, t(math.log(2.0), math.log(2.0)))
        assert_close(rc, t(0.0, 0.0))
        assert_close(rr, t(0.0, 0.0))


def test_worked_nonzero_case():
    """beta 0.1; chosen log-ratio -10 - (-11) = +1; rejected -12 - (-11) = -1.

    logits = 0.1 * (1 - (-1)) = 0.2; loss = log(1 + e^-0.2) = 0.5981388693...
    rewards: chosen 0.1, rejected -0.1.
    """
    losses, rc, rr = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert_close(losses, t(0.5981388693))
    assert_close(rc, t(0.1))
    assert_close(rr, t(-0.1))


def test_label_smoothing_conservative_form():
    """eps 0.1: 0.9 * log(1 + e^-0.2) + 0.1 * log(1 + e^0.2) = 0.9*0.5981389 + 0.1*0.7981389 = 0.6181389."""
    losses, _, _ = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1, label_smoothing=0.1)
    assert_close(losses, t(0.6181388693))


def test_gradient_by_hand():
    """d loss / d logp_chosen = -beta * sigmoid(-logits) = -0.1 * sigmoid(-0.2) = -0.0450166."""
    chosen = t(-10.0).requires_grad_()
    losses, _, _ = dpo_loss(chosen, t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    losses.sum().backward()
    assert_close(chosen.grad, t(-0.1 / (1 + math.exp(0.2))))


def test_algorithm_metrics_and_accuracy():
    algo = DPO(DPO.Config(beta=0.1))
    policy = PairLogps(SequenceLogps(t(-10.0, -5.0, -3.0), t(2, 2, 2)), SequenceLogps(t(-12.0, -4.0, -3.0), t(2, 2, 2)))
    reference = PairLogps(SequenceLogps(t(-11.0, -5.0, -3.0), t(2, 2, 2)), SequenceLogps(t(-11.0, -5.0, -3.0), t(2, 2, 2)))
    out = algo.loss(policy, reference, {})
    assert_close(out.metrics["margin"], t(0.2, -0.1, 0.0))
    assert_close(out.metrics["accuracy"], t(1.0, 0.0, 0.5))  # a tie counts half
    assert out.losses.shape == (3,)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"label_smoothing": 0.5}, {"label_smoothing": -0.1}])
def test_config_rejects_out_of_range(kwargs):
    with pytest.raises(PrefoptError):
        DPO.Config(**kwargs)
