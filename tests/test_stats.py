"""ablation.analysis.stats: paired tests over seeds, Holm, McNemar, and Shapley attribution of the ablation game."""

import itertools
import math
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from ablation.analysis import evidence, stats


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


def _simulated_power(effect_in_sd: float, n: int, level: float, draws: int = 40_000) -> float:
    """How often the paired t-test at `level` rejects n normal differences of mean effect_in_sd (SD 1)."""
    differences = np.random.default_rng(7).normal(effect_in_sd, 1.0, size=(draws, n))
    return float(np.mean(scipy_stats.ttest_1samp(differences, 0.0, axis=1).pvalue < level))


def test_the_detectable_difference_has_its_power_in_simulation():
    # The case: at n = 3 the former formula's difference had power 0.77, not 0.80.
    change = stats.paired_change([0.0, 0.0, 0.0], [1.0, 2.0, 4.0])
    power = _simulated_power(change.mde / change.std, 3, stats.ALPHA)
    assert abs(power - stats.POWER) < 4 * math.sqrt(0.16 / 40_000)  # 4 Monte Carlo SEs of a proportion near 0.8


def test_the_detectable_difference_is_at_the_holm_level_of_each_change():
    # Six changes, 3 seeds, no pooling: the first Holm step tests at 0.05/12 (changes and their equivalence
    # tests), and needs about 8 SD, where the former 0.05-level formula printed 3.1.
    base = [0.0, 0.0, 0.0]
    changes = [stats.paired_change(base, [1.0 + i, 2.0 + i, 4.0 + i]) for i in range(6)]
    judged = stats.with_verdicts(changes, pooled=False)
    first = min(judged, key=lambda change: change.level)
    assert first.level == pytest.approx(stats.ALPHA / 12) and first.mde / first.std > 8.0
    power = _simulated_power(first.mde / first.std, 3, first.level)
    assert abs(power - stats.POWER) < 4 * math.sqrt(0.16 / 40_000)


def test_equal_differences_on_the_test_image_grid_are_not_proof():
    # The inputs: every seed gains one image of 2,000. p was 0 and all six such changes "helped".
    change = stats.paired_change(np.divide([800, 820, 799], 2000), np.divide([801, 821, 800], 2000))
    assert change.p_t == pytest.approx(2 / 8) and change.p_perm == pytest.approx(2 / 8)  # the exact sign-flip floor
    judged = stats.with_verdicts([change] * 6)
    assert [c.verdict for c in judged] == [stats.UNDECIDED] * 6 and min(c.p_test for c in judged) > 0
    two = stats.with_verdicts([stats.paired_change([0.5, 0.5], [0.5005, 0.5005])])[0]
    assert two.verdict == stats.UNDECIDED and two.p_test == pytest.approx(0.5)
    unchanged = stats.paired_change([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert unchanged.p_t == 1.0 and unchanged.mean == 0.0 and unchanged.p_perm == pytest.approx(1.0)
    assert math.isnan(change.mde)  # an SD of zero from three seeds is not a measured spread


def test_equal_differences_say_how_many_seeds_the_sign_flip_floor_needs():
    change = stats.with_verdicts([stats.paired_change([0.5] * 3, [0.52] * 3)])[0]
    # Alone, tested at 0.05/2: the floor 2/2**n is below it from n = 7 on, 4 more than these 3.
    assert change.level == pytest.approx(0.025) and change.more_seeds == 4


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
    judged = stats.with_verdicts([helped, hurt, noise, one_seed], rope=0.5, pooled=False)
    assert [change.verdict for change in judged] == [stats.HELPED, stats.HURT, stats.UNDECIDED, stats.ONE_SEED]
    # Unpooled, each change's own t; Holm over the three t-tests and the three equivalence tests together.
    equivalence = [max(scipy_stats.ttest_1samp(np.subtract(b, base), -0.5, alternative="greater").pvalue,
                       scipy_stats.ttest_1samp(np.subtract(b, base), 0.5, alternative="less").pvalue)
                   for b in (np.add(base, [2.0, 2.5, 3.0, 2.2]), np.subtract(base, [1.0, 1.4, 1.2, 1.1]),
                             np.add(base, [1.0, -1.0, 2.0, -2.0]))]
    expected = stats.holm([helped.p_t, hurt.p_t, noise.p_t, *equivalence])
    assert [change.p_adjusted for change in judged[:3]] == pytest.approx(expected[:3])
    assert [change.p_equivalent for change in judged[:3]] == pytest.approx(expected[3:])
    assert judged[0].p_adjusted > helped.p_t and judged[0].p_test == pytest.approx(helped.p_t)
    assert math.isnan(judged[3].p_adjusted)  # the one-seed change is not in the family
    assert judged[0].mean == helped.mean  # the rest of the change is kept
    assert judged[2].more_seeds is None or judged[2].more_seeds >= 1


def test_pooling_gives_a_quiet_change_the_familys_degrees_of_freedom():
    base = [0.0, 0.0, 0.0]
    quiet = stats.paired_change(base, [1.0, 1.3, 1.9])
    others = [stats.paired_change(base, d) for d in ([0.5, -0.5, 0.2], [0.6, -0.4, -0.1], [-0.5, 0.4, 0.0])]
    alone = stats.with_verdicts([quiet, *others], pooled=False)[0]
    pooled = stats.with_verdicts([quiet, *others])[0]
    sums = [c.std**2 * 2 for c in (quiet, *others)]
    assert pooled.df == 8 and pooled.sd == pytest.approx(math.sqrt(sum(sums) / 8))
    assert pooled.p_test == pytest.approx(2 * scipy_stats.t.sf(quiet.mean / (pooled.sd / math.sqrt(3)), 8))
    assert alone.verdict == stats.UNDECIDED and pooled.verdict == stats.HELPED
    noisy = stats.with_verdicts([stats.paired_change(base, [5.0, -4.0, 2.0]), quiet])[0]
    assert noisy.df == 2 and noisy.sd == pytest.approx(np.std([5.0, -4.0, 2.0], ddof=1))  # its own SD: larger


def test_an_interval_inside_the_margin_is_equivalent():
    base = [0.70, 0.71, 0.72, 0.70, 0.69]
    small = stats.paired_change(base, np.add(base, [0.001, -0.002, 0.0015, 0.0, -0.001]))
    judged = stats.with_verdicts([small], rope=0.01)[0]
    assert -0.01 < judged.low < judged.high < 0.01 and judged.verdict == stats.EQUIVALENT
    assert stats.with_verdicts([small], rope=0.001)[0].verdict == stats.UNDECIDED  # a margin it does not fit in


def test_sign_flip_samples_beyond_sixteen_seeds_in_well_under_a_second_each():
    # 22 integer differences: the exact p by counting the sums of all 2**22 flips (a convolution), against the
    # sampled one. Enumerating them took about 30 s here (1.8 s at 18 seeds, two hours at 30).
    differences = np.random.default_rng(3).integers(-4, 6, size=22)
    counts = {0: 1}
    for d in np.abs(differences):
        new = {}
        for total, ways in counts.items():
            for step in (d, -d):
                new[total + step] = new.get(total + step, 0) + ways
        counts = new
    exact = sum(w for total, w in counts.items() if abs(total) >= abs(differences.sum())) / 2**22
    started = time.perf_counter()
    sampled = stats.paired_change(np.zeros(22), differences).p_perm
    assert time.perf_counter() - started < 5
    assert 0 < sampled and abs(sampled - exact) < 4 * math.sqrt(exact * (1 - exact) / stats.SIGN_FLIP_RESAMPLES)
    assert sampled == stats.sign_flip_p(differences)  # a fixed seed: the same data give the same p
    sixteen = np.arange(1, 17) * np.where(np.arange(16) % 3, 1, -1)
    assert stats.sign_flip_p(sixteen) * 2**16 == pytest.approx(round(stats.sign_flip_p(sixteen) * 2**16))  # exact


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


# --- One seed and the ladder's evidence -------------------------------------------------------------------


def _one_seed_records(accuracies: dict, images: int = 2000, seed: int = 0) -> list[dict]:
    """One run per step, each image right with its step's probability; the same images for every step."""
    generator = np.random.default_rng(seed)
    draws = generator.random(images)
    return [{"step": step, "seed": 0, "test_accuracy": float(np.mean(draws < p)), "best_val_accuracy": p,
             "correct": (draws < p).tolist()} for step, p in accuracies.items()]


def test_one_seed_gives_no_verdict_and_mcnemar_is_holm_adjusted():
    # The README's first screen: one seed, differences of several points, McNemar p 0.000, printed "helped".
    records = _one_seed_records({"a": 0.50, "b": 0.586, "c": 0.632, "d": 0.607})
    changes = evidence.compare_steps(records, [("b", "a"), ("c", "b"), ("d", "c")])
    assert [item.verdict for item in changes] == [stats.ONE_SEED] * 3
    assert all("helped" not in item.verdict and "hurt" not in item.verdict for item in changes)
    raw = [item.mcnemar.p for item in changes]
    assert [item.mcnemar.p_adjusted for item in changes] == pytest.approx(stats.holm(raw))
    assert raw[0] < 0.001  # the test images alone do tell a and b apart: a diagnostic, not a verdict


def test_the_variance_split_separates_seed_churn_and_image():
    records = []
    for seed, shift in enumerate((0.0, 0.02, -0.01)):
        for item in _one_seed_records({"a": 0.6 + shift, "b": 0.62 + shift}, seed=seed):
            records.append({**item, "seed": seed})
    changes = evidence.compare_steps(records, [("b", "a")])
    split = evidence.variance_split(records, changes)
    assert split.images == 2000 and split.seed == pytest.approx(changes[0].change.std)
    # Nested draws: b is right on every image a is, so the churn is the binomial SD of the ~2% extra images.
    assert split.churn == pytest.approx(math.sqrt(0.02 * 0.98 / 2000), rel=0.2)
    assert split.image == pytest.approx(math.sqrt(0.6 * 0.4 / 2000), rel=0.05)
