"""Length-controlled win rates (AlpacaEval 2 LC): the joint GLM on hand-computed and simulated cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefopt.evaluation.length_control import fit_length_glm, length_controlled_win_rates


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _columns(rows):
    """(model, instruction, decision, len_model, len_ref) rows -> the five columns."""
    return [list(c) for c in zip(*rows)]


# ---------------------------------------------------------------- hand-computed fits


def test_two_point_case_is_the_hand_computed_maximum_likelihood():
    # One model, no difficulty term, no penalty: with two distinct length differences the MLE fits the
    # two observed win rates exactly. dlen = +1 (wins 3 of 4) and -1 (wins 2 of 4); sd = sqrt(8/7).
    dlen = [1, 1, 1, 1, -1, -1, -1, -1]
    y = [1, 1, 1, 0, 1, 0, 1, 0]
    fit = fit_length_glm(["m"] * 8, list(range(8)), y, dlen, [0] * 8, l2_model=0.0, difficulty=False)
    t = math.tanh(1 / math.sqrt(8 / 7))
    # logit(3/4) = ln 3 = theta + phi t, logit(1/2) = 0 = theta - phi t
    assert fit.converged
    assert fit.sd[0] == pytest.approx(math.sqrt(8 / 7))
    assert fit.theta[0] == pytest.approx(math.log(3) / 2, abs=1e-9)
    assert fit.phi[0] == pytest.approx(math.log(3) / 2 / t, abs=1e-9)
    lc = length_controlled_win_rates(["m"] * 8, list(range(8)), y, dlen, [0] * 8, l2_model=0.0, difficulty=False,
                                     bootstrap=0)["m"]  # fmt: skip
    assert lc.lc == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-9)  # sigmoid(ln 3 / 2)
    assert lc.raw == pytest.approx(5 / 8) and math.isnan(lc.low)


def test_equal_lengths_without_penalty_give_the_raw_win_rate():
    # No length variation: tanh term is 0, theta = logit(raw), the LC win rate is the raw one.
    y = [1, 1, 0, 0.5, 1]
    r = length_controlled_win_rates(["m"] * 5, list(range(5)), y, [7] * 5, [7] * 5, l2_model=0.0,
                                    difficulty=False, bootstrap=0)["m"]  # fmt: skip
    assert r.lc == pytest.approx(0.7, abs=1e-9) and r.raw == pytest.approx(0.7)


def test_a_tie_is_half_a_win_half_a_loss():
    base = [("m", 0, 1.0, 12, 10), ("m", 1, 0.0, 8, 10), ("n", 0, 0.0, 10, 10), ("n", 1, 1.0, 11, 10)]
    # One win and one loss on instruction 2, against two ties there: the same log-likelihood, the same fit.
    split = _columns(base + [("m", 2, 1.0, 10, 10), ("m", 2, 0.0, 10, 10), ("n", 2, 1.0, 9, 10)])
    ties = _columns(base + [("m", 2, 0.5, 10, 10), ("m", 2, 0.5, 10, 10), ("n", 2, 1.0, 9, 10)])
    a = fit_length_glm(*split, difficulty=True)
    b = fit_length_glm(*ties, difficulty=True)
    assert a.converged and b.converged
    for x, y in [(a.theta, b.theta), (a.phi, b.phi), (a.psi, b.psi)]:
        assert np.allclose(x, y, atol=1e-9)


def test_ref_vs_ref_only_gives_one_half():
    rows = [("reference", i, [1.0, 0.0, 0.5][i % 3], 100 + (i % 5), 100 + (i % 7)) for i in range(30)]
    rows += [("reference", i, [0.0, 1.0, 0.5][i % 3], 100 + (i % 7), 100 + (i % 5)) for i in range(30, 60)]
    r = length_controlled_win_rates(*_columns(rows), bootstrap=20)["reference"]
    assert r.raw == pytest.approx(0.5)
    assert r.lc == pytest.approx(0.5, abs=0.02) and r.low < 0.5 < r.high


# ---------------------------------------------------------------- simulated cases


def _simulate(seed: int, n: int = 400):
    """A model that wins only by being longer, one better at equal length, and reference-vs-reference rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dl = rng.normal(60, 50)  # longer than the reference on average; the win probability follows length only
        rows.append(("long", i, float(rng.random() < _sigmoid(2 * np.tanh(dl / 50))), 100 + dl, 100))
        dl = rng.normal(0, 50)  # as long as the reference; wins 75% whatever the length
        rows.append(("better", i, float(rng.random() < _sigmoid(1.1)), 100 + dl, 100))
        dl = rng.normal(0, 50)
        rows.append(("reference", i, float(rng.random() < 0.5), 100 + dl, 100))
    return _columns(rows)


@pytest.fixture(scope="module")
def simulated():
    return length_controlled_win_rates(*_simulate(0), bootstrap=100, seed=0)


def test_a_model_that_wins_only_by_length_is_controlled_to_one_half(simulated):
    long = simulated["long"]
    assert long.raw > 0.75 and long.raw_low > 0.7  # the raw win rate is far above 1/2 ...
    assert long.lc == pytest.approx(0.5, abs=0.06)  # ... the length-controlled one is not
    assert long.low < 0.5 < long.high
    assert long.phi > 1.0  # the length slope took the wins


def test_a_genuinely_better_model_keeps_its_win_rate(simulated):
    better, reference = simulated["better"], simulated["reference"]
    assert better.lc == pytest.approx(better.raw, abs=0.02)
    assert better.lc == pytest.approx(_sigmoid(1.1), abs=0.04) and better.low > 0.65
    assert reference.low < 0.5 < reference.high and reference.lc == pytest.approx(0.5, abs=0.05)
    assert better.n == 400 and better.bootstrap == 100


def _hard_instructions(seed: int, models: int = 4, n: int = 200):
    """A quarter of the instructions are hard: every model loses them, with a short response (gives up).
    Elsewhere each model wins 75% whatever the length: length has no effect, the losses are difficulty."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for k in range(models):
            if i % 4 == 0:
                rows.append((f"m{k}", i, 0.0, 100 - abs(rng.normal(80, 20)), 100))
            else:
                rows.append((f"m{k}", i, float(rng.random() < 0.75), 100 + rng.normal(0, 60), 100))
    return _columns(rows)


def test_instructions_everyone_loses_are_difficulty_not_length():
    cols = _hard_instructions(0)
    with_psi = fit_length_glm(*cols)
    without = fit_length_glm(*cols, difficulty=False)
    lc = length_controlled_win_rates(*cols, bootstrap=0)
    lc_without = length_controlled_win_rates(*cols, bootstrap=0, difficulty=False)
    for k, name in enumerate(with_psi.models):
        # Without the difficulty term the short losses on hard instructions make length look decisive, and
        # setting the length difference to 0 inflates the win rate; with it, the losses go to psi.
        assert without.phi[k] > 0.7
        assert abs(with_psi.phi[k]) < 0.6 * without.phi[k]
        assert lc_without[name].lc > lc[name].raw + 0.04
        assert lc[name].lc == pytest.approx(lc[name].raw, abs=0.03)
    hard = [j for j, x in enumerate(with_psi.instructions) if x % 4 == 0]
    easy = [j for j, x in enumerate(with_psi.instructions) if x % 4 != 0]
    assert with_psi.psi[hard].mean() < with_psi.psi[easy].mean() - 2


def test_a_model_missing_the_hard_instructions_is_put_on_the_same_footing():
    # "A" and "B" do the same on the ordinary instructions; "B" was never judged on the hard ones, which
    # every judged model lost. Raw win rates differ; the joint fit attributes the gap to the instructions.
    rng = np.random.default_rng(1)
    rows = []
    for i in range(200):
        hard = i % 4 == 0
        outcome = float(rng.random() < 0.7)
        for name in ("A", "B", "C", "D", "E"):
            dl = rng.normal(0, 40)
            if hard and name != "B":
                rows.append((name, i, 0.0, 100 + dl, 100))
            elif not hard:
                y = outcome if name in ("A", "B") else float(rng.random() < 0.5)
                rows.append((name, i, y, 100 + dl, 100))
    cols = _columns(rows)
    lc = length_controlled_win_rates(*cols, bootstrap=0)
    plain = length_controlled_win_rates(*cols, bootstrap=0, difficulty=False)
    assert lc["B"].raw - lc["A"].raw > 0.15
    assert abs(plain["B"].lc - plain["A"].lc) > 0.15  # without psi the gap stays
    # The penalty keeps psi of an all-lost instruction finite, so a little of the loss stays with the models
    # that were judged there: the theta gap shrinks to a quarter (0.19 against 0.78 here), not to 0.
    assert abs(lc["B"].theta - lc["A"].theta) < 0.3 * abs(plain["B"].theta - plain["A"].theta)
    assert abs(lc["B"].lc - lc["A"].lc) < 0.04


# ---------------------------------------------------------------- determinism and inputs


def test_the_bootstrap_is_deterministic_given_its_seed():
    cols = _hard_instructions(3, models=2, n=60)
    one = length_controlled_win_rates(*cols, bootstrap=30, seed=7)
    two = length_controlled_win_rates(*cols, bootstrap=30, seed=7)
    other = length_controlled_win_rates(*cols, bootstrap=30, seed=8)
    assert one == two
    assert all(one[m].lc == other[m].lc for m in one)  # the point estimate does not depend on the seed
    assert any((one[m].low, one[m].high) != (other[m].low, other[m].high) for m in one)


def test_models_and_instructions_may_be_any_hashable_and_order_does_not_matter():
    cols = _hard_instructions(4, models=3, n=40)
    order = np.random.default_rng(0).permutation(len(cols[0]))
    shuffled = [[c[i] for i in order] for c in cols]
    a = length_controlled_win_rates(*cols, bootstrap=0)
    b = length_controlled_win_rates(*shuffled, bootstrap=0)
    for m in a:
        assert a[m].lc == pytest.approx(b[m].lc, abs=1e-8) and a[m].theta == pytest.approx(b[m].theta, abs=1e-8)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one value per row"):
        length_controlled_win_rates(["m", "m"], [0], [1, 0], [1, 2], [1, 2])
    with pytest.raises(ValueError, match=r"decisions must be in \[0, 1\]"):
        length_controlled_win_rates(["m"], [0], [2.0], [1], [1])
    with pytest.raises(ValueError, match="at least one comparison"):
        length_controlled_win_rates([], [], [], [], [])
    with pytest.raises(ValueError, match="l2_difficulty must be > 0"):
        fit_length_glm(["m"], [0], [1.0], [1], [1], l2_difficulty=0.0)
