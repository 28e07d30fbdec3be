"""Calibration of the ladder's verdicts by simulation: synthetic ladders with known effects, judged by the same code.

The tables (`calibration_table`, `sequential_table`) are printed by `python -m ablation.calibration`; this module
is the simulation alone (numpy and the statistics, no command line).

A simulated ladder has CHANGES changes, each tested on n paired seeds over TEST_IMAGES test images. A change's
difference on one seed is counted in images: b gains Poisson(churn/2 + e N/2) images and loses Poisson(churn/2 -
e N/2), where e is the seed's true difference (the change's effect plus training noise of the scenario's shape).
So differences lie on the 1/N grid and tie, as real ones do. Each row of draws goes through
`stats.family_tests`, the function the ladder's verdicts come from; nothing here re-implements a test.
"""

import math
from dataclasses import dataclass

import numpy as np

from ablation.analysis import evidence, stats

TEST_IMAGES = 2000
CHANGES = 6  # the README ladder's changes
SEEDS = (2, 3, 5)
EFFECTS_IN_SD = (1.0, 2.0, 3.0)  # the power columns: one change's true effect in SDs of its differences
SEED = 2026  # fixed: the tables repeat exactly


@dataclass(frozen=True)
class Scenario:
    """The noise of a simulated ladder: training noise per seed (its SD and shape) and image churn per seed."""

    name: str
    seed_sd: tuple[float, ...]  # per change, SD of a seed's true difference, in accuracy
    churn: float  # mean count of test images that flip between the two runs of a seed
    shape: str = "normal"  # "normal" or "skewed" (a centred exponential: skewness 2)

    def sd(self) -> np.ndarray:
        """Per change, the SD of an observed difference: training noise and image churn together, in accuracy."""
        return np.sqrt(np.square(self.seed_sd) + self.churn / TEST_IMAGES**2)


SCENARIOS = (
    Scenario("normal: seed SD 1 point, 100 images flip", (0.01,) * CHANGES, 100.0),
    Scenario("few flips: no seed noise, 3 images flip (ties)", (0.0,) * CHANGES, 3.0),
    Scenario("skewed: centred exponential, SD 1 point", (0.01,) * CHANGES, 20.0, "skewed"),
    Scenario("unequal: seed SDs 0.25-4 points", (0.0025, 0.005, 0.01, 0.01, 0.02, 0.04), 40.0),
)


def differences(scenario: Scenario, effects, seeds: int, ladders: int, generator) -> np.ndarray:
    """Simulated paired differences in accuracy, shape (ladders, changes, seeds), of changes with true `effects`."""
    shape = (ladders, CHANGES, seeds)
    if scenario.shape == "skewed":
        noise = generator.exponential(1.0, size=shape) - 1.0  # mean 0, SD 1, skewness 2
    else:
        noise = generator.standard_normal(shape)
    true = np.asarray(effects, dtype=float)[None, :, None] + np.asarray(scenario.seed_sd)[None, :, None] * noise
    # Images gained and lost: their difference has mean true * N and variance churn (at least |true| * N).
    half = np.maximum(scenario.churn / 2, np.abs(true) * TEST_IMAGES / 2)
    gained = generator.poisson(half + true * TEST_IMAGES / 2)
    lost = generator.poisson(half - true * TEST_IMAGES / 2)
    return (gained - lost) / TEST_IMAGES


def verdicts(draws: np.ndarray, rope: float = stats.ROPE, pooled: bool = True) -> np.ndarray:
    """The verdict codes (stats.VERDICTS) of every simulated ladder, shape (ladders, changes)."""
    sd = draws.std(axis=2, ddof=1) if draws.shape[2] > 1 else np.full(draws.shape[:2], np.nan)
    n = np.full(draws.shape[:2], draws.shape[2])
    return stats.family_tests(draws.mean(axis=2), sd, n, rope=rope, pooled=pooled)["verdict"]


def family_wise_error(scenario: Scenario, seeds: int, ladders: int, generator, pooled: bool = True) -> float:
    """Share of null ladders (every effect 0) with at least one change called helped or hurt."""
    codes = verdicts(differences(scenario, np.zeros(CHANGES), seeds, ladders, generator), pooled=pooled)
    return float(np.mean(np.any(codes <= stats.VERDICTS.index(stats.HURT), axis=1)))


def false_equivalence(scenario: Scenario, seeds: int, ladders: int, generator, rope: float = stats.ROPE) -> float:
    """Share of ladders whose every change sits on the margin (+-rope, alternating) with one called equivalent."""
    effects = rope * np.where(np.arange(CHANGES) % 2, -1.0, 1.0)
    codes = verdicts(differences(scenario, effects, seeds, ladders, generator), rope=rope)
    return float(np.mean(np.any(codes == stats.VERDICTS.index(stats.EQUIVALENT), axis=1)))


def power(scenario: Scenario, seeds: int, ladders: int, effect_in_sd: float, generator, pooled: bool = True) -> float:
    """Share of ladders in which the first change, effect_in_sd SDs of its differences, is called helped."""
    effects = np.zeros(CHANGES)
    effects[0] = effect_in_sd * scenario.sd()[0]
    codes = verdicts(differences(scenario, effects, seeds, ladders, generator), pooled=pooled)
    return float(np.mean(codes[:, 0] == stats.VERDICTS.index(stats.HELPED)))


def calibration_table(ladders: int, seed: int = SEED) -> list[dict]:
    """One row per scenario and seed count: the error rates and the powers, each over `ladders` simulated ladders."""
    generator = np.random.default_rng(seed)
    rows = []
    for scenario in SCENARIOS:
        for n in SEEDS:
            rows.append({
                "scenario": scenario.name, "seeds": n,
                "error (pooled t)": family_wise_error(scenario, n, ladders, generator),
                "error (own t)": family_wise_error(scenario, n, ladders, generator, pooled=False),
                "false equivalent": false_equivalence(scenario, n, ladders, generator),
                **{f"power {effect:g} SD": power(scenario, n, ladders, effect, generator) for effect in EFFECTS_IN_SD},
                "power 2 SD (own t)": power(scenario, n, ladders, 2.0, generator, pooled=False),
            })
    return rows


def sequential(scenario: Scenario, effects, ladders: int, generator, first: int = 3, max_seeds: int = 8,
               rope: float = stats.ROPE) -> tuple[np.ndarray, np.ndarray]:
    """The --until-decided design on simulated ladders: each change's verdict code and the seeds it used.

    Looks at evidence.looks(first, max_seeds); a change still open gets the next seeds, a decided one keeps its
    first verdict and its seeds; every look judges the whole family at alpha / looks, as the ladder does.
    """
    schedule = evidence.looks(first, max_seeds)
    draws = differences(scenario, effects, max_seeds, ladders, generator)
    seeds = np.full(draws.shape[:2], first)
    verdict = np.full(draws.shape[:2], stats.VERDICTS.index(stats.UNDECIDED))
    still = np.ones(draws.shape[:2], dtype=bool)
    for count in schedule:
        seeds = np.where(still, count, seeds)
        used = np.where(np.arange(max_seeds) < seeds[..., None], draws, np.nan)
        codes = stats.family_tests(np.nanmean(used, axis=2), np.nanstd(used, axis=2, ddof=1), seeds, rope,
                                   alpha=stats.ALPHA / len(schedule))["verdict"]
        decided = still & (codes <= stats.VERDICTS.index(stats.EQUIVALENT))
        verdict, still = np.where(decided, codes, verdict), still & ~decided
    return verdict, seeds


def sequential_table(ladders: int, seed: int = SEED, first: int = 3, max_seeds: int = 8) -> list[dict]:
    """Per scenario, the sequential design's error rates, power and mean seeds per change, over `ladders` ladders."""
    generator = np.random.default_rng(seed)
    rows = []
    for scenario in SCENARIOS:
        null, null_seeds = sequential(scenario, np.zeros(CHANGES), ladders, generator, first, max_seeds)
        margin = stats.ROPE * np.where(np.arange(CHANGES) % 2, -1.0, 1.0)
        edge, _ = sequential(scenario, margin, ladders, generator, first, max_seeds)
        effects = np.zeros(CHANGES)
        effects[0] = 2.0 * scenario.sd()[0]
        strong, strong_seeds = sequential(scenario, effects, ladders, generator, first, max_seeds)
        rows.append({
            "scenario": scenario.name, "seeds": f"{first} to {max_seeds}",
            "error": float(np.mean(np.any(null <= stats.VERDICTS.index(stats.HURT), axis=1))),
            "false equivalent": float(np.mean(np.any(edge == stats.VERDICTS.index(stats.EQUIVALENT), axis=1))),
            "power 2 SD": float(np.mean(strong[:, 0] == stats.VERDICTS.index(stats.HELPED))),
            "mean seeds (null)": float(null_seeds.mean()), "mean seeds (2 SD change)": float(strong_seeds[:, 0].mean()),
        })
    return rows


def monte_carlo_bound(rate: float, ladders: int, sigmas: float = 3.0) -> float:
    """The most an estimated rate may exceed `rate` by chance over `ladders` draws: `sigmas` binomial SEs."""
    return rate + sigmas * math.sqrt(rate * (1 - rate) / ladders)


def markdown(rows: list[dict]) -> str:
    """The table as Markdown, rates to three decimals."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)
