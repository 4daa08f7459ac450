"""RL pieces against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.core.rl import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_estimate,
    token_rewards,
    whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_by_hand():
    """gamma 1, lambda 0.5. Row 1: rewards [0, 0, 1], values [0.5, 0.6, 0.7].
    delta_2 = 1 - 0.7 = 0.3                 A_2 = 0.3
    delta_1 = 0 + 0.7 - 0.6 = 0.1           A_1 = 0.1 + 0.5 * 0.3 = 0.25
    delta_0 = 0 + 0.6 - 0.5 = 0.1           A_0 = 0.1 + 0.5 * 0.25 = 0.225
    returns = A + V = [0.725, 0.85, 1.0]
    Row 2 (last position is padding; its value 9 must be ignored): rewards [0, 2, 0], values [1, 1, 9].
    delta_1 = 2 + 0 - 1 = 1                 A_1 = 1
    delta_0 = 0 + 1 - 1 = 0                 A_0 = 0 + 0.5 * 1 = 0.5
    returns = [1.5, 2.0, 0]
    """
    rewards = t([0, 0, 1], [0, 2, 0])
    values = t([0.5, 0.6, 0.7], [1, 1, 9])
    mask = t([1, 1, 1], [1, 1, 0])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert_close(advantages, t([0.225, 0.25, 0.3], [0.5, 1.0, 0.0]))
    assert_close(returns, t([0.725, 0.85, 1.0], [1.5, 2.0, 0.0]))


def test_gae_with_discount():
    """gamma 0.5, lambda 1 on rewards [0, 1], values 0: A_1 = 1, A_0 = 0 + 0.5 * 1 = 0.5 (the discounted return)."""
    advantages, _ = gae(t([0, 1]), t([0, 0]), t([1, 1]), gamma=0.5, lam=1.0)
    assert_close(advantages, t([0.5, 1.0]))


def test_whiten_by_hand():
    """x = [1, 2, 3, 4, pad]: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, std 1.2909944."""
    x, mask = t([1, 2, 3, 4, 100]), t([1, 1, 1, 1, 0])
    s = math.sqrt(5 / 3)
    assert_close(whiten(x, mask), t([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 0.0]))
    assert_close(whiten(x, mask, shift_mean=False), t([-1.5 / s + 2.5, -0.5 / s + 2.5, 0.5 / s + 2.5, 1.5 / s + 2.5, 0.0]))


def test_kl_estimators_on_one_token():
    """pi(x) = 0.5, pi_ref(x) = 0.25: log r = -ln 2.
    k1 = ln 2 = 0.693147;  k2 = (ln 2)^2 / 2 = 0.240227;  k3 = (0.5 - 1) + ln 2 = 0.193147."""
    logp, ref = t(math.log(0.5)), t(math.log(0.25))
    assert_close(kl_estimate(logp, ref, "k1"), t(math.log(2)))
    assert_close(kl_estimate(logp, ref, "k2"), t(math.log(2) ** 2 / 2))
    assert_close(kl_estimate(logp, ref, "k3"), t(math.log(2) - 0.5))
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_kl_estimators_on_a_known_distribution():
    """pi = [0.5, 0.5], pi_ref = [0.25, 0.75]: KL = 0.5 ln 2 + 0.5 ln(2/3) = 0.1438410.
    k1 and k3 are unbiased: their expectations under pi equal KL exactly; k2's is
    0.5 * (0.5 (ln 2)^2 + 0.5 (ln 1.5)^2) = 0.1612135, biased. Monte Carlo agrees."""
    kl = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    p, q = t(0.5, 0.5), t(0.25, 0.75)
    exact = {k: float((p * kl_estimate(p.log(), q.log(), k)).sum()) for k in ("k1", "k2", "k3")}
    assert exact["k1"] == pytest.approx(kl, abs=1e-6)
    assert exact["k3"] == pytest.approx(kl, abs=1e-6)
    assert exact["k2"] == pytest.approx(0.1612135, abs=1e-6)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for k in ("k1", "k3"):
        assert float(kl_estimate(p.log()[samples], q.log()[samples], k).mean()) == pytest.approx(kl, abs=0.005)
    assert bool((kl_estimate(p.log(), q.log(), "k3") >= 0).all())


def test_adaptive_kl_controller():
    """coef 0.1, target 6, horizon 10000, 256 steps: KL 12 -> error clipped to 0.2 -> x1.00512;
    KL 3 -> error -0.5 clipped to -0.2 -> x0.99488; KL 6 -> unchanged; no target -> fixed."""
    ctl = AdaptiveKLController(coef=0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 256) == pytest.approx(0.1 * 1.00512)
    ctl = AdaptiveKLController(coef=0.1, target=6.0, horizon=10000)
    assert ctl.update(3.0, 256) == pytest.approx(0.1 * 0.99488)
    assert ctl.update(6.0, 256) == pytest.approx(0.1 * 0.99488)
    fixed = AdaptiveKLController(coef=0.1, target=None)
    assert fixed.update(100.0, 256) == 0.1


def test_token_rewards():
    """score 2, KL [0.1, 0.2, pad], coef 0.5: [-0.05, -0.1 + 2, 0]."""
    rewards = token_rewards(t(2.0), t([0.1, 0.2, 0.3]), t([1, 1, 0]), kl_coef=0.5)
    assert_close(rewards, t([-0.05, 1.9, 0.0]))
    # responses that follow a prompt (masked) still get the score on their own last token
    rewards = token_rewards(t(2.0, 1.0), t([9, 0.1, 0.2], [9, 9, 0.4]), t([0, 1, 1], [0, 0, 1]), kl_coef=0.5)
    assert_close(rewards, t([0.0, -0.05, 1.9], [0.0, 0.0, 0.8]))


def test_clipped_policy_loss_by_hand():
    """clip 0.2, four tokens (ratio, A):
    (1.5, +1): max(-1.5, -1.2) = -1.2  clipped
    (1.5, -1): max( 1.5,  1.2) =  1.5
    (0.5, +1): max(-0.5, -0.8) = -0.5
    (0.5, -1): max( 0.5,  0.8) =  0.8  clipped
    loss = mean = 0.6 / 4 = 0.15; clip fraction 0.5."""
    old = t([0.0, 0.0, 0.0, 0.0])
    logp = t([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)])
    loss, stats = clipped_policy_loss(logp, old, t([1.0, -1.0, 1.0, -1.0]), t([1, 1, 1, 1]), clip=0.2)
    assert loss.item() == pytest.approx(0.15)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("p, q", [(0.7, 0.5), (0.5, 0.7)])
def test_approx_kl_is_unbiased_for_kl_old_new(p, q):
    """PPO's tokens are sampled from pi_old, so approx_kl must estimate KL(old || new) = E_old[(r - 1) - log r],
    r = pi_new / pi_old. Two outcomes, pi_old = (p, 1 - p), pi_new = (q, 1 - q):
      p = 0.7, q = 0.5: KL(old || new) = 0.7 ln 1.4 + 0.3 ln 0.6 = 0.0822829
      p = 0.5, q = 0.7: KL(old || new) = 0.5 ln(5/7) + 0.5 ln(5/3) = 0.0871767
    The exact expectation weights the two outcomes by p and 1 - p (no sampling). The inverted ratio,
    E_old[(1/r - 1) + log r] = sum old^2/new - 1 - KL = chi^2(old || new) - KL, gives 0.16 - 0.0822829 = 0.0777171
    (5.5% low) and 0.1904762 - 0.0871767 = 0.1032995 (18.5% high) instead."""
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    chi2 = p**2 / q + (1 - p) ** 2 / (1 - q) - 1
    old, new = torch.tensor([p, 1 - p], dtype=torch.float64).log(), torch.tensor([q, 1 - q], dtype=torch.float64).log()
    weights = torch.tensor([p, 1 - p], dtype=torch.float64)
    r = (new - old).exp()
    assert float((weights * ((r - 1) - r.log())).sum()) == pytest.approx(kl, abs=1e-6)
    inverted = float((weights * ((1 / r - 1) + r.log())).sum())  # the formula before the fix
    assert inverted == pytest.approx(chi2 - kl, abs=1e-6)
    assert abs(inverted - kl) > 0.05 * kl  # 5.5% and 18.5% off

    # The real function: 10 tokens drawn in exact proportion (10p of outcome 0, the rest outcome 1), plus two
    # padding positions holding nonsense, so its masked mean is the exact expectation under pi_old.
    n0 = round(10 * p)
    outcome = torch.tensor([0] * n0 + [1] * (10 - n0) + [0, 0])  # (12,)
    mask = torch.tensor([1.0] * 10 + [0.0, 0.0], dtype=torch.float64)[None]  # (1, 12)
    old_logp = old[outcome][None].clone()
    logp = new[outcome][None].clone()
    logp[0, 10:], old_logp[0, 10:] = 5.0, -30.0  # padding: a huge ratio, masked out
    advantages = torch.linspace(-1, 1, 12, dtype=torch.float64)[None]
    _, stats = clipped_policy_loss(logp, old_logp, advantages, mask, clip=0.2)
    assert stats["approx_kl"].item() == pytest.approx(kl, abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(float((weights * ((r - 1) - r.log())).sum()), abs=1e-9)


def test_clipped_value_loss_by_hand():
    """V 1.0, old V 0.5, return 2.0, clip 0.2: V_clip 0.7; max((1 - 2)^2, (0.7 - 2)^2) = 1.69; loss 0.845."""
    loss, stats = clipped_value_loss(t([1.0]), t([0.5]), t([2.0]), t([1.0]), clip=0.2)
    assert loss.item() == pytest.approx(0.845)
    assert stats["value_clip_fraction"].item() == 1.0

