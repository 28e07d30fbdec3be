"""ablation.stats: paired tests over seeds, Holm, McNemar, and Shapley attribution of the ablation game."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from ablation import stats


# --- Summaries and paired changes -------------------------------------------------------------------


def test_summarize_matches_the_t_interval():
    summary = stats.summarize([0.70, 0.72, 0.71, 0.75])
    values = np.array([0.70, 0.72, 0.71, 0.75])
    low, high = scipy_stats.t.interval(0.95, 3, loc=values.mean(), scale=scipy_stats.sem(values))
    assert summary.n == 4
    assert summary.mean == pytest.approx(0.72)
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert (summary.low, summary.high) == (pytest.approx(low), pytest.approx(high))


def test_summarize_one_value_has_no_spread():
    summary = stats.summarize([0.8])
    assert (summary.n, summary.mean) == (1, 0.8)
    assert math.isnan(summary.std) and math.isnan(summary.low) and math.isnan(summary.high)
    with pytest.raises(ValueError):
        stats.summarize([])


# Percentage points; b - a = [1, 2, 3, -1, 4] exactly.
A = [60.0, 64.0, 58.0, 66.0, 61.0]
B = [61.0, 66.0, 61.0, 65.0, 65.0]


def test_sign_flip_p_derived_by_hand():
    # |d| = {1, 1, 2, 3, 4}, total 11; negating a set F of them gives sum 11 - 2*sum(F). The observed
    # sum is 9, so |sum| >= 9 iff sum(F) <= 1 or sum(F) >= 10: F = {}, {1}, {1'} and their three
    # complements, 6 of the 32 sign vectors.
    expected = Fraction(6, 32)
    differences = np.subtract(B, A)
    extreme = sum(abs(np.dot(signs, differences)) >= abs(differences.sum())
                  for signs in itertools.product((1, -1), repeat=len(differences)))
    assert Fraction(int(extreme), 2 ** len(differences)) == expected
    assert stats.paired_change(A, B).p_perm == pytest.approx(float(expected), abs=1e-12)


def test_paired_change_agrees_with_scipy():
    change = stats.paired_change(A, B)
    reference = scipy_stats.ttest_rel(B, A)
    interval = reference.confidence_interval()
    assert change.n == 5
    assert change.mean == pytest.approx(1.8)
    assert change.std == pytest.approx(np.std([1, 2, 3, -1, 4], ddof=1))
    assert (change.low, change.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert change.p_t == pytest.approx(reference.pvalue)
    assert change.min_p_perm == 2 / 32
    assert math.isnan(change.p_adjusted) and change.verdict == ""  # not filled until with_verdicts


def test_differences_1_2_3_4_reach_the_permutation_floor():
    change = stats.paired_change([0, 0, 0, 0], [1, 2, 3, 4])
    assert change.p_perm == pytest.approx(2 / 16)
    assert change.p_perm == pytest.approx(change.min_p_perm)


def test_mde_uses_both_t_quantiles():
    change = stats.paired_change(A, B)
    # t(0.975, 4) = 2.7764451, t(0.8, 4) = 0.9409646 from a t table.
    assert change.mde == pytest.approx((2.7764451 + 0.9409646) * change.std / math.sqrt(5), rel=1e-6)


def test_identical_differences_are_not_noise():
    change = stats.paired_change([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert change.p_t == 0.0
    assert (change.mean, change.std, change.low, change.high, change.mde) == (0.5, 0.0, 0.5, 0.5, 0.0)
    assert change.p_perm == pytest.approx(2 / 8)  # the all-positive flip and its mirror
    unchanged = stats.paired_change([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert unchanged.p_t == 1.0 and unchanged.mean == 0.0
    assert unchanged.p_perm == pytest.approx(1.0)


def test_one_seed_has_no_test_over_seeds():
    change = stats.paired_change([0.7], [0.8])
    assert change.n == 1 and change.mean == pytest.approx(0.1)
    assert change.min_p_perm == 1.0
    for field in ("std", "low", "high", "p_t", "p_perm", "mde"):
        assert math.isnan(getattr(change, field)), field
    assert stats.paired_change([], []).min_p_perm == 1.0


def test_paired_change_rejects_unpaired_or_nan():
    with pytest.raises(ValueError, match="lengths"):
        stats.paired_change([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_change([0.1, float("nan")], [0.1, 0.2])


# --- Holm and verdicts ------------------------------------------------------------------------------


def test_holm_hand_worked():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_holm_nan_is_outside_the_family():
    adjusted = stats.holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])
    with pytest.raises(ValueError):
        stats.holm([0.5, 1.5])


@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), max_size=12))
def test_holm_properties(p_values):
    adjusted = stats.holm(p_values)
    assert len(adjusted) == len(p_values)
    assert [math.isnan(p) for p in adjusted] == [math.isnan(p) for p in p_values]
    pairs = [(p, q) for p, q in zip(p_values, adjusted) if not math.isnan(p)]
    assert all(p <= q <= 1.0 for p, q in pairs)
    # Monotone: a smaller raw p never gets a larger adjusted one.
    assert all(q1 <= q2 for (p1, q1), (p2, q2) in itertools.product(pairs, pairs) if p1 < p2)


def test_with_verdicts():
    base = [70.0, 71.0, 72.0, 73.0]
    helped = stats.paired_change(base, np.add(base, [2.0, 2.5, 3.0, 2.2]))
    hurt = stats.paired_change(base, np.subtract(base, [1.0, 1.4, 1.2, 1.1]))
    noise = stats.paired_change(base, np.add(base, [1.0, -1.0, 2.0, -2.0]))
    one_seed = stats.paired_change([70.0], [75.0])
    judged = stats.with_verdicts([helped, hurt, noise, one_seed])
    assert [change.verdict for change in judged] == [
        "helped", "hurt", "not distinguishable from noise", "one seed: no test over seeds"]
    expected = stats.holm([helped.p_t, hurt.p_t, noise.p_t])  # the one-seed change is not in the family
    assert [change.p_adjusted for change in judged[:3]] == pytest.approx(expected)
    assert judged[0].p_adjusted > helped.p_t  # adjusted for a family of three
    assert math.isnan(judged[3].p_adjusted)
    assert judged[0].mean == helped.mean  # the rest of the change is kept


def test_holm_can_turn_a_raw_win_into_noise():
    # Raw p just under ALPHA alone, but not once a family of four is accounted for.
    marginal = stats.paired_change([0.0, 0.0, 0.0], [1.0, 1.3, 1.9])
    assert marginal.p_t < stats.ALPHA
    unchanged = stats.paired_change([0.0, 0.0, 0.0], [1.0, -1.0, 0.5])
    judged = stats.with_verdicts([marginal, unchanged, unchanged, unchanged])
    assert judged[0].verdict == "not distinguishable from noise"
    assert stats.with_verdicts([marginal])[0].verdict == "helped"


# --- McNemar --------------------------------------------------------------------------------------


def test_mcnemar_hand_made_table():
    # 1 image right under a only, 9 under b only, 5 right under both, 3 wrong under both.
    correct_a = [True] * 1 + [False] * 9 + [True] * 5 + [False] * 3
    correct_b = [False] * 1 + [True] * 9 + [True] * 5 + [False] * 3
    result = stats.mcnemar_exact(correct_a, correct_b)
    assert (result.only_a, result.only_b) == (1, 9)
    # 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024.
    assert result.p == pytest.approx(22 / 1024, rel=1e-12)
    assert stats.mcnemar_exact(correct_b, correct_a).p == pytest.approx(22 / 1024, rel=1e-12)


def test_mcnemar_without_discordant_pairs():
    result = stats.mcnemar_exact([True, False, True], [True, False, True])
    assert (result.only_a, result.only_b, result.p) == (0, 0, 1.0)


def test_mcnemar_rejects_labels_and_unequal_lengths():
    with pytest.raises(ValueError):
        stats.mcnemar_exact([3, 1, 0], [1, 1, 0])
    with pytest.raises(ValueError):
        stats.mcnemar_exact([True, False], [True])


def test_sampling_verdict():
    significant = stats.McNemar(only_a=1, only_b=9, p=22 / 1024)
    assert stats.sampling_verdict(significant, 0.008) == "helped (test-set sampling only)"
    assert stats.sampling_verdict(stats.McNemar(9, 1, 22 / 1024), -0.008) == "hurt (test-set sampling only)"
    assert stats.sampling_verdict(stats.McNemar(4, 6, 0.75), 0.002) == \
        "not distinguishable from test-set sampling noise"


@given(st.lists(st.integers(-5, 5), min_size=2, max_size=8))
@settings(max_examples=50, deadline=None)
def test_permutation_p_never_below_its_floor(differences):
    change = stats.paired_change([0] * len(differences), differences)
    assert change.min_p_perm - 1e-12 <= change.p_perm <= 1.0


# --- Attribution ----------------------------------------------------------------------------------

W = np.array([[0.02, 0.03, 0.01], [0.05, 0.04, 0.06], [-0.01, 0.00, -0.02], [0.003, 0.001, 0.002]])  # per seed
BASE = np.array([0.70, 0.71, 0.69])


def additive(subset):
    return BASE + sum((W[i] for i in subset), np.zeros(3))


def with_interaction(subset, a=0.02, b=0.03, c=0.04, d=0.01):
    return 0.7 + a * (0 in subset) + b * (1 in subset) + c * ({0, 1} <= subset) + d * (2 in subset)


def interacting_four(subset):
    # Pairwise and three-way interactions, one of them negative, per seed.
    seeds = np.array([1.0, 1.1, 0.9])
    return seeds * (0.6 + 0.02 * (0 in subset) + 0.05 * (1 in subset) + 0.01 * (3 in subset)
                    + 0.04 * ({0, 1} <= subset) - 0.03 * ({2, 3} <= subset) + 0.06 * ({0, 2, 3} <= subset))


def test_subsets_order():
    assert stats.subsets(3) == [frozenset(s) for s in
                                [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]]
    assert len(set(stats.subsets(5))) == 32


def test_shapley_of_an_additive_game_is_each_weight():
    shapley = stats.shapley_exact(4, additive)
    assert shapley.shape == (4, 3)
    np.testing.assert_allclose(shapley, W, atol=1e-12)
    np.testing.assert_allclose(stats.leave_one_out(4, additive), W, atol=1e-12)
    np.testing.assert_allclose(stats.add_one_in(4, additive), W, atol=1e-12)


def test_shapley_splits_an_interaction_in_half():
    shapley = stats.shapley_exact(3, with_interaction)
    assert shapley.shape == (3,)
    np.testing.assert_allclose(shapley, [0.02 + 0.02, 0.03 + 0.02, 0.01], atol=1e-12)
    # The one-at-a-time views give all of the interaction, or none of it, to each of the pair.
    np.testing.assert_allclose(stats.leave_one_out(3, with_interaction), [0.06, 0.07, 0.01], atol=1e-12)
    np.testing.assert_allclose(stats.add_one_in(3, with_interaction), [0.02, 0.03, 0.01], atol=1e-12)
    np.testing.assert_allclose(stats.shapley_exact(2, with_interaction), [0.04, 0.05], atol=1e-12)


def test_shapley_calls_value_once_per_subset():
    calls = []
    stats.shapley_exact(4, lambda subset: calls.append(subset) or len(subset))
    assert sorted(calls, key=lambda s: (len(s), sorted(s))) == stats.subsets(4)


@given(st.integers(1, 5).flatmap(
    lambda k: st.tuples(st.just(k), st.lists(st.floats(-1, 1), min_size=2 ** k, max_size=2 ** k))))
@settings(deadline=None)
def test_shapley_efficiency(k_and_table):
    k, table = k_and_table
    values = dict(zip(stats.subsets(k), table))
    shapley = stats.shapley_exact(k, values.__getitem__)
    assert shapley.sum() == pytest.approx(values[frozenset(range(k))] - values[frozenset()], abs=1e-9)


def test_efficiency_per_seed():
    shapley = stats.shapley_exact(4, interacting_four)
    np.testing.assert_allclose(shapley.sum(axis=0),
                               interacting_four(frozenset(range(4))) - interacting_four(frozenset()), atol=1e-12)


def test_permutation_orders():
    orders = stats.permutation_orders(5, 10, seed=7)
    assert len(orders) == 10
    assert all(sorted(order) == list(range(5)) for order in orders)
    assert [orders[i + 1] for i in range(0, 10, 2)] == [orders[i][::-1] for i in range(0, 10, 2)]
    assert orders == stats.permutation_orders(5, 10, seed=7)
    assert orders != stats.permutation_orders(5, 10, seed=8)
    with pytest.raises(ValueError):
        stats.permutation_orders(5, 3, seed=7)


def test_subsets_of_orders():
    every_order = list(itertools.permutations(range(4)))
    assert len(every_order) == 24
    assert stats.subsets_of_orders(every_order) == set(stats.subsets(4))
    chain = stats.subsets_of_orders([(2, 0, 3, 1)])
    assert chain == {frozenset(), frozenset({2}), frozenset({0, 2}), frozenset({0, 2, 3}), frozenset(range(4))}


def test_sampling_every_order_once_is_exact():
    estimate, standard_error = stats.shapley_sampled(4, interacting_four, list(itertools.permutations(range(4))))
    np.testing.assert_allclose(estimate, stats.shapley_exact(4, interacting_four), atol=1e-12)
    assert standard_error.shape == (4, 3)


def test_sampled_estimate_converges_to_the_exact_one():
    exact = stats.shapley_exact(4, interacting_four)
    orders = stats.permutation_orders(4, 2000, seed=0)
    estimate, standard_error = stats.shapley_sampled(4, interacting_four, orders)
    assert estimate.shape == standard_error.shape == (4, 3)
    assert (standard_error[[0, 2, 3]] > 0).all()  # players in interactions vary with the order
    assert (np.abs(estimate - exact) <= 3 * standard_error + 1e-12).all()
    np.testing.assert_allclose(estimate, exact, atol=0.003)
    # Every order's contributions sum to the total change, so the estimate is efficient too.
    np.testing.assert_allclose(estimate.sum(axis=0), exact.sum(axis=0), atol=1e-12)


def test_antithetic_standard_error_is_over_pair_means():
    def pure_interaction(subset):
        return 0.1 * ({0, 1} <= subset)

    # Over an order and its reverse, each player gets the interaction once: every pair mean is 0.05.
    estimate, standard_error = stats.shapley_sampled(2, pure_interaction, stats.permutation_orders(2, 10, seed=1))
    np.testing.assert_allclose(estimate, [0.05, 0.05])
    assert (standard_error == 0).all()
    # The same orders not in antithetic pairs: the SE is over single orders, which vary.
    estimate, standard_error = stats.shapley_sampled(2, pure_interaction, [(0, 1), (0, 1), (1, 0), (1, 0)])
    np.testing.assert_allclose(estimate, [0.05, 0.05])
    np.testing.assert_allclose(standard_error, [0.1 / math.sqrt(3) / 2] * 2)


def test_shapley_sampled_rejects_bad_orders():
    with pytest.raises(ValueError):
        stats.shapley_sampled(3, with_interaction, [(0, 1)])
    with pytest.raises(ValueError):
        stats.shapley_sampled(3, with_interaction, [])
