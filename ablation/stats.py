"""Statistics for ablation ladders: replicate summaries, paired tests over seeds, and Shapley attribution.

Design: pure functions on numbers (numpy and scipy only; nothing from the rest of `ablation`), so the
report and the tracker can call them on whatever they have loaded. A ladder step is compared with the
step before it *paired by training seed*: element i of both sequences came from the same seed. The
verdict uses the paired t-test, corrected with Holm over the ladder's changes; the exact sign-flip
permutation p is reported beside it, because with few seeds it cannot get small (its floor is 2/2**n).
With one seed there is no test over seeds; McNemar's exact test on the shared test images then measures
test-set sampling noise only. Attribution treats a step's components as players of an "ablation game"
whose value is per-seed accuracy, and splits the total gain with exact or sampled Shapley values.
See docs/statistics.md.
"""

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05
POWER = 0.8  # the power the minimal detectable difference is stated at
CONFIDENCE = 1 - ALPHA  # intervals match the tests' level

NAN = float("nan")
ONE_SEED = "one seed: no test over seeds"
HELPED = "helped"
HURT = "hurt"
NOISE = "not distinguishable from noise"
HELPED_SAMPLING = "helped (test-set sampling only)"
HURT_SAMPLING = "hurt (test-set sampling only)"
NOISE_SAMPLING = "not distinguishable from test-set sampling noise"

Value = Callable[[frozenset], "np.ndarray | float"]


def _as_finite_vector(values, name: str) -> np.ndarray:
    """`values` as a 1-D float array; ValueError on NaN (a failed run is the caller's to drop or rerun)."""
    array = np.asarray(values, dtype=float).reshape(-1)
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN: {array.tolist()}")
    return array


def _t_half_width(std: float, n: int) -> float:
    """Half-width of the two-sided t-interval of a mean of n values with sample std `std`."""
    return float(scipy_stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n))


@dataclass(frozen=True)
class Summary:
    """One step's replicates: mean, sample std and the 95% t-interval of the mean."""

    n: int
    mean: float
    std: float  # ddof=1; nan when n == 1
    low: float  # nan when n == 1
    high: float


def summarize(values) -> Summary:
    """Mean, std (ddof=1) and 95% t-interval of the mean of one step's replicates."""
    array = _as_finite_vector(values, "values")
    n = len(array)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(array.mean())
    if n == 1:
        # One replicate says nothing about spread; nan rather than a misleading 0.
        return Summary(n=1, mean=mean, std=NAN, low=NAN, high=NAN)
    std = float(array.std(ddof=1))
    half_width = _t_half_width(std, n)
    return Summary(n=n, mean=mean, std=std, low=mean - half_width, high=mean + half_width)


@dataclass(frozen=True)
class Change:
    """b minus a, paired by seed: the mean difference, its interval, its tests and what they can detect."""

    n: int
    mean: float
    std: float  # of the paired differences, ddof=1; nan when n < 2
    low: float  # 95% t-interval of the mean difference; nan when n < 2
    high: float
    p_t: float  # two-sided paired t-test; nan when n < 2
    p_perm: float  # two-sided exact sign-flip permutation test; nan when n < 2
    min_p_perm: float  # 2 / 2**n: the smallest p_perm this n can give
    mde: float  # smallest true difference detected with 80% power at ALPHA; nan when n < 2
    p_adjusted: float = NAN  # Holm over the family; filled by with_verdicts
    verdict: str = ""  # filled by with_verdicts


def _mean_statistic(x, axis):
    """Mean along `axis`: the permutation test's statistic, vectorized over resamples."""
    return np.mean(x, axis=axis)


def _sign_flip_p(differences: np.ndarray) -> float:
    """Exact two-sided p of the mean difference under random sign flips (all 2**n of them)."""
    # permutation_type="samples" on one sample flips signs: under H0 each seed's difference is as
    # likely to be +d as -d. n_resamples=inf enumerates every flip, so the p is exact, not sampled.
    result = scipy_stats.permutation_test(
        (differences,), _mean_statistic, vectorized=True, permutation_type="samples",
        n_resamples=np.inf, alternative="two-sided",
    )
    return float(result.pvalue)


def paired_change(a, b) -> Change:
    """The change from a to b, paired by seed: mean difference, interval, t and permutation tests, MDE."""
    a = _as_finite_vector(a, "a")
    b = _as_finite_vector(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must pair seed by seed; lengths {len(a)} and {len(b)} differ")
    differences = b - a
    n = len(differences)
    min_p_perm = 1.0 if n == 0 else 2.0 / 2.0**n
    if n < 2:
        # Nothing to test over seeds; the one difference (if any) is still reported as the mean.
        mean = float(differences[0]) if n == 1 else NAN
        return Change(n=n, mean=mean, std=NAN, low=NAN, high=NAN, p_t=NAN, p_perm=NAN,
                      min_p_perm=min_p_perm, mde=NAN)
    mean = float(differences.mean())
    std = float(differences.std(ddof=1))
    half_width = _t_half_width(std, n)
    if np.all(differences == differences[0]):
        # Every seed moved by exactly the same amount: ttest_rel divides 0 by 0 (nan) for a zero
        # difference. A difference that is the same for every seed is not noise, so p is 0; no
        # difference at all is no evidence, so p is 1.
        p_t = 0.0 if mean != 0 else 1.0
    else:
        p_t = float(scipy_stats.ttest_rel(b, a).pvalue)
    # Power analysis with the observed spread standing in for the true one (a rough guide at small n).
    t_alpha = scipy_stats.t.ppf(1 - ALPHA / 2, n - 1)
    t_power = scipy_stats.t.ppf(POWER, n - 1)
    mde = float((t_alpha + t_power) * std / math.sqrt(n))
    return Change(n=n, mean=mean, std=std, low=mean - half_width, high=mean + half_width, p_t=p_t,
                  p_perm=_sign_flip_p(differences), min_p_perm=min_p_perm, mde=mde)


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order; NaN stays NaN, outside the family."""
    p = np.asarray(list(p_values), dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    if ((p[tested] < 0) | (p[tested] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]: {p.tolist()}")
    adjusted = np.full(len(p), NAN)
    family_size = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    running_max = 0.0
    for rank, index in enumerate(order):
        # The rank-th smallest p faces (family_size - rank) remaining hypotheses; the running max keeps
        # the adjusted values monotone in the raw ones (step-down: a later rejection needs all earlier).
        running_max = max(running_max, (family_size - rank) * p[index])
        adjusted[index] = min(1.0, running_max)
    return adjusted.tolist()


def with_verdicts(changes: list[Change]) -> list[Change]:
    """The changes with Holm-adjusted p_t over the family and a verdict each."""
    adjusted = holm([change.p_t for change in changes])
    judged = []
    for change, p_adjusted in zip(changes, adjusted):
        if change.n < 2:
            verdict = ONE_SEED
        elif p_adjusted < ALPHA and change.mean > 0:
            verdict = HELPED
        elif p_adjusted < ALPHA and change.mean < 0:
            verdict = HURT
        else:
            verdict = NOISE
        judged.append(dataclasses.replace(change, p_adjusted=p_adjusted, verdict=verdict))
    return judged


@dataclass(frozen=True)
class McNemar:
    """Discordant test images of two models on the same test set, and McNemar's exact p."""

    only_a: int  # images right under a only
    only_b: int  # images right under b only
    p: float  # exact two-sided binomial p on the discordant pairs; 1.0 when there are none


def _as_correctness(values, name: str) -> np.ndarray:
    """`values` as a 1-D boolean array of right (True) or wrong per test image."""
    array = np.asarray(values).reshape(-1)
    # Refuse labels or scores passed by mistake: only right/wrong per image makes sense here.
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be booleans (right or wrong per test image)")
    return array.astype(bool)


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """McNemar's exact test: do a and b, on the same test images, get different images right?"""
    correct_a = _as_correctness(correct_a, "correct_a")
    correct_b = _as_correctness(correct_b, "correct_b")
    if len(correct_a) != len(correct_b):
        raise ValueError(f"correct_a and correct_b must cover the same images; "
                         f"lengths {len(correct_a)} and {len(correct_b)} differ")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    # Images both got right (or wrong) say nothing about which is better; under H0 each discordant
    # image is a fair coin between a and b.
    p = 1.0 if discordant == 0 else float(scipy_stats.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a=only_a, only_b=only_b, p=p)


def sampling_verdict(m: McNemar, mean_difference: float) -> str:
    """One-seed verdict from McNemar's p, labelled as covering test-set sampling noise only."""
    # Training noise (a different seed) is not in this test at all; the label says so.
    if m.p < ALPHA and mean_difference > 0:
        return HELPED_SAMPLING
    if m.p < ALPHA and mean_difference < 0:
        return HURT_SAMPLING
    return NOISE_SAMPLING


# --- Attribution: the ablation game ---------------------------------------------------------------


def subsets(k: int) -> list[frozenset[int]]:
    """All 2**k subsets of range(k), by size, then lexicographically."""
    return [frozenset(combination) for size in range(k + 1)
            for combination in itertools.combinations(range(k), size)]


def _cached(value: Value) -> Callable[[frozenset], np.ndarray]:
    """`value` called at most once per subset: each call may be a training run."""
    cache: dict[frozenset, np.ndarray] = {}

    def lookup(subset: frozenset) -> np.ndarray:
        subset = frozenset(subset)
        if subset not in cache:
            cache[subset] = np.asarray(value(subset), dtype=float)
        return cache[subset]

    return lookup


def shapley_exact(k: int, value: Value) -> np.ndarray:
    """Exact Shapley values, shape (k, *value's shape): the weighted sum over all subsets."""
    value = _cached(value)
    empty = value(frozenset())
    shapley = np.zeros((k,) + empty.shape)
    for player in range(k):
        others = [i for i in range(k) if i != player]
        for size in range(k):
            # |S|! (k-|S|-1)! / k!: the share of the k! orders in which exactly S precedes the player.
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for coalition in itertools.combinations(others, size):
                coalition = frozenset(coalition)
                shapley[player] += weight * (value(coalition | {player}) - value(coalition))
    return shapley


def permutation_orders(k: int, count: int, seed) -> list[tuple[int, ...]]:
    """`count` random orders of range(k) as antithetic pairs: each order followed by its reverse."""
    if count < 2 or count % 2:
        raise ValueError(f"count must be a positive even number (antithetic pairs), got {count}")
    generator = np.random.default_rng(seed)
    orders = []
    for _ in range(count // 2):
        order = tuple(int(i) for i in generator.permutation(k))
        # The reverse puts early players late and late ones early, so the pair's marginal
        # contributions tend to be negatively correlated and their mean varies less (antithetic).
        orders += [order, order[::-1]]
    return orders


def subsets_of_orders(orders: Iterable[Sequence[int]]) -> set[frozenset[int]]:
    """Every prefix set the orders visit: the configs that would have to be trained."""
    return {frozenset(order[:length]) for order in orders for length in range(len(order) + 1)}


def _is_antithetic(orders: list[tuple[int, ...]]) -> bool:
    """Whether the orders come as pairs, each order followed by its reverse."""
    return len(orders) % 2 == 0 and all(orders[i + 1] == orders[i][::-1] for i in range(0, len(orders), 2))


def shapley_sampled(k: int, value: Value, orders: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Shapley values estimated from the given orders, and the standard error of the estimate."""
    orders = [tuple(int(i) for i in order) for order in orders]
    if not orders:
        raise ValueError("shapley_sampled needs at least one order")
    for order in orders:
        if sorted(order) != list(range(k)):
            raise ValueError(f"{order} is not an order of range({k})")
    value = _cached(value)
    empty = value(frozenset())
    contributions = np.zeros((len(orders), k) + empty.shape)
    for row, order in enumerate(orders):
        previous, prefix = empty, frozenset()
        for player in order:
            prefix = prefix | {player}
            current = value(prefix)
            contributions[row, player] = current - previous
            previous = current
    estimate = contributions.mean(axis=0)
    # An order and its reverse are not independent; their pair means are, so the SE is taken over
    # those. (Grouping independent orders into pairs would also be valid, only with fewer df.)
    groups = contributions.reshape((-1, 2) + contributions.shape[1:]).mean(axis=1) \
        if _is_antithetic(orders) else contributions
    if len(groups) < 2:
        standard_error = np.full(estimate.shape, NAN)
    else:
        standard_error = groups.std(axis=0, ddof=1) / math.sqrt(len(groups))
    return estimate, standard_error


def leave_one_out(k: int, value: Value) -> np.ndarray:
    """value(full) - value(full without i) for each component i: what removing it alone costs."""
    value = _cached(value)
    full = frozenset(range(k))
    return np.array([value(full) - value(full - {i}) for i in range(k)]).reshape((k,) + value(full).shape)


def add_one_in(k: int, value: Value) -> np.ndarray:
    """value({i}) - value(empty) for each component i: what adding it alone gains."""
    value = _cached(value)
    empty = value(frozenset())
    return np.array([value(frozenset({i})) - empty for i in range(k)]).reshape((k,) + empty.shape)
