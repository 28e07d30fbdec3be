"""Calibration by simulation: the verdicts' family-wise error and power (ablation.analysis.simulation), and the
coverage of the attribution's intervals."""

import math

import numpy as np
import pytest

from ablation.analysis import simulation, stats
from ablation.engine import designs
from ablation.report import attribution_tables

# --- Sampled Shapley intervals --------------------------------------------------------------------------------

K = 6
ORDERS = 8  # four antithetic pairs: a standard error with 3 degrees of freedom
SEEDS = (0, 1, 2)


def _true_value(subset) -> float:
    """A game whose three-way interactions no antithetic pair of orders splits exactly."""
    s = frozenset(subset)
    return (0.6 + 0.02 * len(s) + 0.06 * ({0, 1, 2} <= s) - 0.04 * ({1, 3} <= s) + 0.05 * ({0, 2, 3} <= s)
            + 0.03 * ({3, 4, 5} <= s) - 0.02 * ({1, 4, 5} <= s))


def _coverage_of_sampled_shapley(replicates: int) -> float:
    """How often the 95% interval of each sampled Shapley value holds the true one, over simulated studies."""
    truth = stats.shapley_exact(K, _true_value)
    game = designs.Game("ladder", "base", None, "full", None,
                        tuple(designs.Component(f"c{i}", f"s{i}", {}) for i in range(K)))
    generator = np.random.default_rng(11)
    covered = []
    for replicate in range(replicates):
        orders = stats.permutation_orders(K, ORDERS, seed=replicate)  # a fresh draw of orders each study
        effects = generator.normal(0.0, 0.005, size=(len(SEEDS), K))  # each seed's own effect per component
        values = {(subset, seed): _true_value(subset) + effects[seed, sorted(subset)].sum()
                  for subset in stats.subsets_of_orders(orders) for seed in SEEDS}
        measured = designs.measure(K, values, list(SEEDS), orders)
        plan = designs.Plan("shapley", 2**K, tuple(stats.subsets_of_orders(orders)), tuple(orders))
        result = designs.summarize_measures("s", "smoke", game, plan, list(SEEDS), measured)
        for component, true in zip(result["measures"]["shapley"]["components"], truth, strict=True):
            covered.append(component["low"] <= true <= component["high"])
    return float(np.mean(covered))


def test_sampled_shapley_intervals_cover_the_true_value():
    # With the seeds' spread alone the intervals held the true value about half the time: the orders' sampling
    # error, shared by every seed, was left out. 1,800 intervals give a Monte Carlo SE of 0.005 around 0.95;
    # the bound also leaves 0.03 for the Welch-Satterthwaite approximation of a 3-df standard error.
    assert _coverage_of_sampled_shapley(300) >= 0.90


# --- The verdicts' error rates ---------------------------------------------------------------------------------

LADDERS = 1000  # per cell here; the tables of docs/statistics.md use 2,000 (python -m ablation.calibration)
# A rate estimated from 1,000 ladders exceeds its true value by more than 3 binomial SEs (0.021 at 0.05) with
# probability about 0.001, so a failure here is a real excess, not bad luck; the draws are fixed by their seed.
BOUND = simulation.monte_carlo_bound(stats.ALPHA, LADDERS)


@pytest.mark.parametrize("scenario", simulation.SCENARIOS, ids=lambda s: s.name.split(":")[0])
@pytest.mark.parametrize("seeds", simulation.SEEDS)
def test_the_family_wise_error_of_null_ladders_is_within_alpha(scenario, seeds):
    generator = np.random.default_rng(simulation.SEED + seeds)
    assert simulation.family_wise_error(scenario, seeds, LADDERS, generator) <= BOUND
    assert simulation.false_equivalence(scenario, seeds, LADDERS, generator) <= BOUND


def test_simulated_differences_have_the_scenarios_mean_and_spread():
    scenario = simulation.SCENARIOS[0]
    draws = simulation.differences(scenario, np.full(simulation.CHANGES, 0.02), 5, 4000, np.random.default_rng(1))
    assert draws.shape == (4000, simulation.CHANGES, 5)
    assert np.allclose(draws * simulation.TEST_IMAGES, np.round(draws * simulation.TEST_IMAGES))  # the image grid
    assert draws.mean() == pytest.approx(0.02, abs=3 * scenario.sd()[0] / math.sqrt(draws.size))
    assert draws.std() == pytest.approx(scenario.sd()[0], rel=0.03)


def test_pooling_gains_power_over_each_changes_own_t():
    scenario, generator = simulation.SCENARIOS[0], np.random.default_rng(5)
    pooled = simulation.power(scenario, 3, LADDERS, 3.0, generator)
    alone = simulation.power(scenario, 3, LADDERS, 3.0, generator, pooled=False)
    assert pooled > alone + 4 * math.sqrt(0.25 / LADDERS)


@pytest.mark.parametrize("scenario", simulation.SCENARIOS, ids=lambda s: s.name.split(":")[0])
def test_the_sequential_design_keeps_the_family_wise_error_within_alpha(scenario):
    # Looks at 3, 5, 7 and 8 seeds, each at alpha / 4, seeds only for the changes still open.
    generator = np.random.default_rng(simulation.SEED)
    null, seeds = simulation.sequential(scenario, np.zeros(simulation.CHANGES), LADDERS, generator)
    assert np.mean(np.any(null <= stats.VERDICTS.index(stats.HURT), axis=1)) <= BOUND
    assert seeds.min() >= 3 and seeds.max() <= 8
    margin = stats.ROPE * np.where(np.arange(simulation.CHANGES) % 2, -1.0, 1.0)
    edge, _ = simulation.sequential(scenario, margin, LADDERS, generator)
    assert np.mean(np.any(edge == stats.VERDICTS.index(stats.EQUIVALENT), axis=1)) <= BOUND


def test_a_decided_change_keeps_its_first_verdict_and_its_seeds():
    scenario = simulation.SCENARIOS[0]
    effects = np.zeros(simulation.CHANGES)
    effects[0] = 0.05  # five points, about 4.5 SDs: helped in every ladder, most often before the last look
    verdict, seeds = simulation.sequential(scenario, effects, 200, np.random.default_rng(3))
    assert np.all(verdict[:, 0] == stats.VERDICTS.index(stats.HELPED)) and np.mean(seeds[:, 0] == 3) > 0.4
    undecided = verdict == stats.VERDICTS.index(stats.UNDECIDED)
    assert undecided.any() and np.all(seeds[undecided] == 8)  # the open ones ran to --max-seeds


def test_leave_one_out_and_exact_shapley_values_get_the_ladders_verdicts():
    # Component 0 adds 5 points under every seed (give or take 0.3); component 1 does nothing (give or take 0.2).
    noise = np.random.default_rng(2).normal(0.0, [[0.003], [0.002]], size=(2, 4))
    value = lambda subset, seed: 0.5 + (0.05 + noise[0, seed]) * (0 in subset) + noise[1, seed] * (1 in subset)  # noqa: E731
    seeds = [0, 1, 2, 3]
    values = {(subset, seed): value(subset, seed) for subset in stats.subsets(2) for seed in seeds}
    game = designs.Game("ladder", "base", None, "full", None,
                        (designs.Component("x", "s0", {}), designs.Component("y", "s1", {})))
    measured = designs.measure(2, values, seeds)
    result = designs.summarize_measures("s", "smoke", game, designs.make_plan("shapley", 2, 32), seeds,
                                        measured)
    assert result["verdicts"]["leave_one_out"] == [stats.HELPED, stats.EQUIVALENT]
    assert result["verdicts"]["shapley"] == [stats.HELPED, stats.EQUIVALENT]
    assert any("x helped, y equivalent" in note for note in attribution_tables.notes(result))
