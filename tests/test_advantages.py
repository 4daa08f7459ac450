"""Group-based policy-gradient estimators against values worked out by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.core.advantages import (
    batch_normalised_advantages,
    clipped_surrogate,
    group_advantages,
    leave_one_out_advantages,
    overlong_penalty,
    sequence_ratio_surrogate,
    token_loss,
    zero_variance_groups,
)
from prefopt.core.rl import kl_estimate
from prefopt.errors import PrefoptError

INF = float("inf")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- advantages


def test_group_advantages_std_and_none_by_hand():
    """rewards [1, 0, 0 | 1, 1, 1], k = 3.
    Group 1: mean 1/3; deviations [2/3, -1/3, -1/3];
      sample var (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3, std = 0.5773503 (trl's nanstd divides by n - 1);
      "std":  2/3 / (0.5773503 + 1e-4) = 1.1545006,  -1/3 / 0.5774503 = -0.5772503
      (a population std, sqrt(2/9) = 0.4714045, would give 1.4139 and -0.7070 instead).
      "none" (Dr. GRPO): [0.6666667, -0.3333333, -0.3333333].
    Group 2: all equal: deviations 0, so 0 under both scales (0 / (0 + 1e-4) = 0, no NaN)."""
    rewards = t(1, 0, 0, 1, 1, 1)
    assert_close(group_advantages(rewards, 3), t(1.1545006, -0.5772503, -0.5772503, 0, 0, 0))
    assert_close(group_advantages(rewards, 3, scale="none"), t(2 / 3, -1 / 3, -1 / 3, 0, 0, 0))


def test_group_advantages_eps_and_single_completion():
    """eps 0 on group [3, 1]: mean 2, sample std sqrt((1 + 1) / 1) = 1.4142136 -> [0.7071068, -0.7071068].
    k = 1: every completion is its own group -> advantage 0 (trl treats the std as 0)."""
    assert_close(group_advantages(t(3, 1), 2, eps=0.0), t(0.7071068, -0.7071068))
    assert_close(group_advantages(t(5, -2), 1), t(0, 0))


def test_leave_one_out_k3_by_hand():
    """rewards [1, 0, 0 | 1, 1, 1], k = 3. Baseline of i = mean of the other two:
    group 1: 1 - (0 + 0)/2 = 1;  0 - (1 + 0)/2 = -0.5;  0 - (1 + 0)/2 = -0.5
    group 2: 1 - (1 + 1)/2 = 0 for all three.
    Also k/(k-1) * (r - mean): 3/2 * [2/3, -1/3, -1/3] = [1, -0.5, -0.5]."""
    rewards = t(1, 0, 0, 1, 1, 1)
    assert_close(leave_one_out_advantages(rewards, 3), t(1, -0.5, -0.5, 0, 0, 0))
    assert_close(leave_one_out_advantages(rewards, 3), 1.5 * group_advantages(rewards, 3, scale="none"))


def test_leave_one_out_k2_by_hand():
    """rewards [3, 1 | 0, 2], k = 2: each baseline is the other completion's reward.
    3 - 1 = 2, 1 - 3 = -2 | 0 - 2 = -2, 2 - 0 = 2."""
    assert_close(leave_one_out_advantages(t(3, 1, 0, 2), 2), t(2, -2, -2, 2))


def test_leave_one_out_needs_two_completions():
    with pytest.raises(PrefoptError, match="k >= 2"):
        leave_one_out_advantages(t(1, 0), 1)


def test_batch_normalised_by_hand():
    """[1, 2, 3, 4]: mean 2.5; population var (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25 (OpenRLHF divides by n);
    std 1.1180340 -> [-1.5, -0.5, 0.5, 1.5] / 1.1180340 = [-1.3416408, -0.4472136, 0.4472136, 1.3416408]."""
    assert_close(batch_normalised_advantages(t(1, 2, 3, 4)), t(-1.3416408, -0.4472136, 0.4472136, 1.3416408))


def test_batch_normalised_per_token_by_hand():
    """Per-token advantages, OpenRLHF's form: rows [1, 1, 1] and [3, 3, pad 100].
    Masked tokens 1, 1, 1, 3, 3: mean 9/5 = 1.8; var (3 * 0.8^2 + 2 * 1.2^2) / 5 = (1.92 + 2.88) / 5 = 0.96;
    std 0.9797959 -> 1: -0.8 / 0.9797959 = -0.8164966;  3: 1.2 / 0.9797959 = 1.2247449;  pad: 0.
    (The longer sequence weighs more: per sequence, [1, 3] would normalise to [-1, 1].)"""
    adv, mask = t([1, 1, 1], [3, 3, 100]), t([1, 1, 1], [1, 1, 0])
    a, b = -0.8164966, 1.2247449
    assert_close(batch_normalised_advantages(adv, mask), t([a, a, a], [b, b, 0]))
    assert_close(batch_normalised_advantages(t(1, 3)), t(-1, 1))


def test_batch_normalised_constant_batch_is_zero():
    """A constant batch: var 0, floored at eps, so (x - mean) = 0 gives 0, not NaN."""
    assert_close(batch_normalised_advantages(t(2, 2, 2)), t(0, 0, 0))


def test_zero_variance_groups():
    """k = 3: [1, 0, 0] mixed; [1, 1, 1] all right; [0, 0, 0] all wrong; [0.5, 0.5, 0.2] mixed.
    DAPO's dynamic sampling drops groups 2 and 3 (their advantages are all 0)."""
    rewards = t(1, 0, 0, 1, 1, 1, 0, 0, 0, 0.5, 0.5, 0.2)
    flags = zero_variance_groups(rewards, 3)
    assert flags.dtype == torch.bool
    assert flags.tolist() == [False, True, True, False]
    dropped = group_advantages(rewards, 3).view(4, 3)[flags]
    assert bool((dropped == 0).all())


# ---------------------------------------------------------------- aggregation


def test_the_three_aggregations_differ_on_unequal_lengths():
    """per-token loss rows [1, 2, 3, 4] (4 tokens) and [6, pad 9, pad 9, pad 9] (1 token).
    sequence_mean (GRPO):     mean(2.5, 6) = 4.25
    token_mean (DAPO):        (1 + 2 + 3 + 4 + 6) / 5 = 16 / 5 = 3.2
    constant (Dr. GRPO, 8):   16 / (2 sequences * 8) = 1.0
    The padding 9s never count."""
    per_token, mask = t([1, 2, 3, 4], [6, 9, 9, 9]), t([1, 1, 1, 1], [1, 0, 0, 0])
    assert token_loss(per_token, mask, "sequence_mean").item() == pytest.approx(4.25)
    assert token_loss(per_token, mask, "token_mean").item() == pytest.approx(3.2)
    assert token_loss(per_token, mask, "constant", max_tokens=8).item() == pytest.approx(1.0)


def test_constant_aggregation_needs_a_large_enough_max_tokens():
    per_token, mask = t([1, 2, 3, 4]), t([1, 1, 1, 1])
    with pytest.raises(PrefoptError, match="max_tokens"):
        token_loss(per_token, mask, "constant")
    with pytest.raises(PrefoptError, match="more than max_tokens=3"):
        token_loss(per_token, mask, "constant", max_tokens=3)
    with pytest.raises(PrefoptError, match="unknown loss aggregation"):
        token_loss(per_token, mask, "sum")


# ---------------------------------------------------------------- clipped surrogates


def _surrogate_case():
    """Two sequences, ratios (A):  seq 1 (A = +1): 1.5, 1.25, 0.5;  seq 2 (A = -1): 0.5, 1.5, pad.
    old log-probs 0, so log-prob = ln(ratio); the pad holds -inf and must be ignored."""
    logps = t([math.log(1.5), math.log(1.25), math.log(0.5)], [math.log(0.5), math.log(1.5), -INF])
    old = torch.zeros(2, 3)
    mask = t([1, 1, 1], [1, 1, 0])
    return logps.requires_grad_(), old, t(1, -1), mask


def test_clipped_surrogate_decoupled_clip_by_hand():
    """eps_low 0.2, eps_high 0.28 (DAPO Clip-Higher): clip range [0.8, 1.28]; l = -min(r A, clip(r) A).
    seq 1, A = +1:  1.5  -> -min(1.5, 1.28)   = -1.28   clipped high
                    1.25 -> -min(1.25, 1.25)  = -1.25   (inside 1.28)
                    0.5  -> -min(0.5, 0.8)    = -0.5    (below, but A > 0: the min keeps 0.5, not clipped)
    seq 2, A = -1:  0.5  -> -min(-0.5, -0.8)  =  0.8    clipped low
                    1.5  -> -min(-1.5, -1.28) =  1.5    (above, but A < 0: not clipped)
    token_mean    = (-1.28 - 1.25 - 0.5 + 0.8 + 1.5) / 5 = -0.73 / 5 = -0.146
    sequence_mean = (-3.03 / 3 + 2.3 / 2) / 2 = (-1.01 + 1.15) / 2 = 0.07
    constant (4)  = -0.73 / (2 * 4) = -0.09125
    clip_fraction_low = 1/5 = 0.2, clip_fraction_high = 1/5 = 0.2,
    ratio_mean = (1.5 + 1.25 + 0.5 + 0.5 + 1.5) / 5 = 5.25 / 5 = 1.05."""
    logps, old, adv, mask = _surrogate_case()
    loss, stats = clipped_surrogate(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, aggregation="token_mean")
    assert loss.item() == pytest.approx(-0.146)
    assert stats["clip_fraction_low"].item() == pytest.approx(0.2)
    assert stats["clip_fraction_high"].item() == pytest.approx(0.2)
    assert stats["ratio_mean"].item() == pytest.approx(1.05)
    seq, _ = clipped_surrogate(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, aggregation="sequence_mean")
    assert seq.item() == pytest.approx(0.07)
    const, _ = clipped_surrogate(logps, old, adv, mask, 0.2, 0.28, aggregation="constant", max_tokens=4)
    assert const.item() == pytest.approx(-0.09125)


def test_clipped_surrogate_symmetric_clip_by_hand():
    """eps_high defaults to eps_low = 0.2: range [0.8, 1.2]. Now 1.25 is clipped too:
    seq 1: -1.2, -1.2, -0.5;  seq 2: 0.8, 1.5.  token_mean = (-2.9 + 2.3) / 5 = -0.12;
    clip_fraction_high = 2/5 = 0.4, clip_fraction_low = 1/5 = 0.2."""
    logps, old, adv, mask = _surrogate_case()
    loss, stats = clipped_surrogate(logps, old, adv, mask, eps_low=0.2, aggregation="token_mean")
    assert loss.item() == pytest.approx(-0.12)
    assert stats["clip_fraction_high"].item() == pytest.approx(0.4)
    assert stats["clip_fraction_low"].item() == pytest.approx(0.2)


def test_clipped_tokens_get_zero_gradient():
    """token_mean over 5 tokens, eps 0.2 / 0.28. An unclipped token's loss is -A r / 5 with
    dr/dlogp = r, so its gradient is -A r / 5; a clipped token's is 0; so is the pad's.
    seq 1 (A = +1): clipped 0;  -1.25 / 5 = -0.25;  -0.5 / 5 = -0.1
    seq 2 (A = -1): clipped 0;  +1.5 / 5 = 0.3;  pad 0."""
    logps, old, adv, mask = _surrogate_case()
    loss, _ = clipped_surrogate(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, aggregation="token_mean")
    loss.backward()
    assert_close(logps.grad, t([0.0, -0.25, -0.1], [0.0, 0.3, 0.0]))


def test_clipped_surrogate_per_token_advantages_equal_broadcast():
    """Advantages (N, K) equal to the (N,) ones broadcast give the same loss."""
    logps, old, adv, mask = _surrogate_case()
    a, _ = clipped_surrogate(logps, old, adv, mask, 0.2, 0.28, aggregation="token_mean")
    b, _ = clipped_surrogate(logps, old, adv.unsqueeze(-1).expand(2, 3), mask, 0.2, 0.28, aggregation="token_mean")
    assert a.item() == pytest.approx(b.item())


def _gspo_case(adv):
    """seq 1: 3 tokens, log-ratios [0.3, 0, 0] -> mean 0.1 -> s = e^0.1 = 1.1051709;
    seq 2: 1 token, log-ratio -0.2 (pads hold garbage) -> s = e^-0.2 = 0.8187308."""
    logps = t([0.3, 0.0, 0.0], [-0.2, 5.0, -INF]).requires_grad_()
    return logps, torch.zeros(2, 3), t(*adv), t([1, 1, 1], [1, 0, 0])


def test_gspo_sequence_ratio_both_clipped_by_hand():
    """eps_low 0.1, eps_high 0.05: clip range [0.9, 1.05].
    seq 1, A = +1: -min(1.1051709, 1.05)    = -1.05   clipped high
    seq 2, A = -1: -min(-0.8187308, -0.9)   =  0.9    clipped low
    loss = (-1.05 + 0.9) / 2 = -0.075; both sequences clipped -> every gradient 0.
    clip fractions 1/2 each; ratio_mean (1.1051709 + 0.8187308) / 2 = 0.9619508.
    (Token-level, seq 1's first token alone, e^0.3 = 1.35, would be the only one clipped.)"""
    logps, old, adv, mask = _gspo_case([1, -1])
    loss, stats = sequence_ratio_surrogate(logps, old, adv, mask, eps_low=0.1, eps_high=0.05)
    assert loss.item() == pytest.approx(-0.075)
    assert stats["clip_fraction_low"].item() == pytest.approx(0.5)
    assert stats["clip_fraction_high"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(0.9619508)
    loss.backward()
    assert_close(logps.grad, torch.zeros(2, 3))


def test_gspo_length_normalised_gradient_by_hand():
    """Same ratios, A = [-1, +1]: neither clipped in its direction.
    seq 1: -min(-1.1051709, -1.05) = 1.1051709;  seq 2: -min(0.8187308, 0.9) = -0.8187308.
    loss = (1.1051709 - 0.8187308) / 2 = 0.1432201.
    d loss / d logp_1t = -A s / |y_1| / N = 1.1051709 / 3 / 2 = 0.1841952 for each of seq 1's 3 tokens;
    d loss / d logp_21 = -0.8187308 / 1 / 2 = -0.4093654; pads 0. The 1/|y| spreads a sequence's
    gradient evenly over its tokens."""
    logps, old, adv, mask = _gspo_case([-1, 1])
    loss, stats = sequence_ratio_surrogate(logps, old, adv, mask, eps_low=0.1, eps_high=0.05)
    assert loss.item() == pytest.approx(0.1432201)
    assert stats["clip_fraction_low"].item() == 0.0
    assert stats["clip_fraction_high"].item() == 0.0
    loss.backward()
    g = 0.1841952
    assert_close(logps.grad, t([g, g, g], [-0.4093654, 0.0, 0.0]))


# ---------------------------------------------------------------- KL and length


def test_grpo_kl_is_rl_k3():
    """GRPO's per-token KL (Shao et al. 2024, Eq. 4): pi_ref/pi - log(pi_ref/pi) - 1, as trl writes it,
    is rl.kl_estimate(..., "k3"); not duplicated in advantages.py.
    pi = 0.5, pi_ref = 0.25: 0.5 - ln 0.5 - 1 = 0.1931472;  pi = 0.25, pi_ref = 0.5: 2 - ln 2 - 1 = 0.3068528."""
    logp, ref = t(math.log(0.5), math.log(0.25)), t(math.log(0.25), math.log(0.5))
    assert_close(kl_estimate(logp, ref, "k3"), t(0.1931472, 0.3068528))
    assert_close(kl_estimate(logp, ref, "k3"), torch.exp(ref - logp) - (ref - logp) - 1)


def test_overlong_penalty_three_regimes():
    """max 10, buffer 4: free up to 10 - 4 = 6 tokens.
    L = 5, 6 -> 0;  L = 7 -> (6 - 7) / 4 = -0.25;  L = 8 -> -0.5;  L = 10 -> (6 - 10) / 4 = -1;  L = 12 -> -1."""
    lengths = torch.tensor([5, 6, 7, 8, 10, 12])
    assert_close(overlong_penalty(lengths, 10, 4), t(0, 0, -0.25, -0.5, -1, -1))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: group_advantages(t(1, 0, 0, 1), 3), "does not divide"),
        (lambda: group_advantages(t(1, 0), 0), "positive integer"),
        (lambda: group_advantages(t(1, 0), 2, eps=-1.0), "eps must be >= 0"),
        (lambda: group_advantages(t(1, 0), 2, scale="batch"), "unknown advantage scale"),
        (lambda: group_advantages(t([1, 0]), 2), "1-D"),
        (lambda: group_advantages(torch.tensor([1, 0]), 2), "float"),
        (lambda: zero_variance_groups(t(1, 0, 0), 2), "does not divide"),
        (lambda: batch_normalised_advantages(t(1, 2), eps=-1e-8), "eps must be >= 0"),
        (lambda: batch_normalised_advantages(t([1, 2]), t([1, 1, 1])), "shape"),
        (lambda: token_loss(t([1, 2]), t([1, 1, 1]), "token_mean"), "shape"),
        (lambda: clipped_surrogate(t([0, 0]), t([0, 0]), t(1, 2), t([1, 1])), "advantages must be"),
        (lambda: clipped_surrogate(t([0, 0]), t([0, 0]), t(1), t([1, 1]), eps_high=-0.1), "eps_high"),
        (lambda: sequence_ratio_surrogate(t([0, 0]), t([0, 0]), t([1, 1]), t([1, 1]), 0.1, 0.1), "advantages"),
        (lambda: overlong_penalty(torch.tensor([3]), 4, 5), "must not exceed"),
        (lambda: overlong_penalty(torch.tensor([3]), 4, 0), "positive integer"),
    ],
)
def test_bad_inputs_raise_one_line_errors(call, message):
    with pytest.raises(PrefoptError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
