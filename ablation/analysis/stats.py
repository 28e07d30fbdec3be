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
from scipy import optimize
from scipy import stats as scipy_stats

ALPHA = 0.05
POWER = 0.8  # the power the detectable difference is stated at
CONFIDENCE = 1 - ALPHA  # intervals match the tests' level
# Default equivalence margin (ROPE), in accuracy: 1 point. On a 2,000-image test set the standard error of one
# accuracy near 80% is sqrt(0.8 * 0.2 / 2000) = 0.9 points, so a smaller difference is below what the test set
# itself resolves; a study or --rope may set another.
ROPE = 0.01
EXACT_SIGN_FLIP_SEEDS = 16  # up to here every sign flip is enumerated (2**16 = 65,536); beyond, sampled
SIGN_FLIP_RESAMPLES = 9_999  # Monte Carlo flips beyond that: p = (b + 1) / (m + 1)
SIGN_FLIP_SEED = 22  # fixed, so the same data give the same p
MAX_SEEDS = 1000  # "more seeds" beyond this is reported as none
ZERO_SD = 1e-9  # a sample SD at or below this is float noise around zero (accuracy moves in steps of 1/images)

NAN = float("nan")
ONE_SEED = "no verdict (one seed: training noise unmeasured)"
HELPED = "helped"
HURT = "hurt"
EQUIVALENT = "equivalent"
UNDECIDED = "undecided"
NOISE = UNDECIDED  # the former name of "undecided", kept for callers
VERDICTS = (HELPED, HURT, EQUIVALENT, UNDECIDED, ONE_SEED)  # the codes of family_tests, in this order
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


def _t_half_width(std: float, n: int, df: float | None = None, alpha: float = ALPHA) -> float:
    """Half-width of the two-sided t-interval of a mean of n values with SD `std` (df n - 1 unless given)."""
    return float(scipy_stats.t.ppf(1 - alpha / 2, n - 1 if df is None else df) * std / math.sqrt(n))


@dataclass(frozen=True)
class Summary:
    """One step's replicates: mean, sample std and the 95% t-interval of the mean."""

    n: int
    mean: float
    std: float  # ddof=1; nan when n == 1
    low: float  # nan when n == 1
    high: float


def summarize(values, extra_se: float = 0.0, extra_df: float = math.inf) -> Summary:
    """Mean, std (ddof=1) and 95% t-interval of the mean of replicates; `extra_se`: an independent error added in.

    An error the replicates do not see (the sampled Shapley orders, shared by every seed) adds its variance to
    that of the mean over seeds; `extra_df` is its degrees of freedom, combined with the seeds' by
    Welch-Satterthwaite for the t quantile.
    """
    array = _as_finite_vector(values, "values")
    n = len(array)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(array.mean())
    if n == 1:
        # One replicate says nothing about spread; nan rather than a misleading 0.
        return Summary(n=1, mean=mean, std=NAN, low=NAN, high=NAN)
    std = float(array.std(ddof=1))
    seeds, extra = std**2 / n, float(extra_se) ** 2
    denominator = seeds**2 / (n - 1) + (extra**2 / extra_df if extra else 0.0)
    df = (seeds + extra) ** 2 / denominator if denominator > 0 else n - 1
    half_width = float(scipy_stats.t.ppf(1 - ALPHA / 2, df)) * math.sqrt(seeds + extra)
    return Summary(n=n, mean=mean, std=std, low=mean - half_width, high=mean + half_width)


@dataclass(frozen=True)
class Change:
    """b minus a, paired by seed: the mean difference, its interval, its tests and what they can detect.

    paired_change fills the change's own statistics; with_verdicts the family's: the pooled test the verdict
    uses (p_test, df, sd), Holm over the ladder's changes, the equivalence test and the verdict.
    """

    n: int
    mean: float
    std: float  # of the paired differences, ddof=1; nan when n < 2
    low: float  # 95% t-interval of the mean difference; nan when n < 2 (with_verdicts: from sd and df)
    high: float
    p_t: float  # two-sided paired t-test on this change alone; nan when n < 2
    p_perm: float  # two-sided sign-flip test: exact up to EXACT_SIGN_FLIP_SEEDS, else Monte Carlo
    min_p_perm: float  # 2 / 2**n: the smallest p_perm this n can give
    mde: float  # smallest true difference found with 80% power at the level tested (noncentral t)
    p_adjusted: float = NAN  # Holm over the family; filled by with_verdicts
    verdict: str = ""  # filled by with_verdicts
    p_test: float = NAN  # the p the verdict uses: t with the pooled SD where the family allows
    df: float = NAN  # degrees of freedom of that t
    sd: float = NAN  # the SD of the differences that t uses (own, or pooled over the family when larger)
    level: float = NAN  # the Holm step level this change is tested at
    rope: float = NAN  # the equivalence margin
    p_equivalent: float = NAN  # two one-sided tests against the margin (TOST); Holm-adjusted with the rest
    more_seeds: int | None = None  # seeds per step to add that would likely decide it; None: more than MAX_SEEDS


def _mean_statistic(x, axis):
    """Mean along `axis`: the permutation test's statistic, vectorized over resamples."""
    return np.mean(x, axis=axis)


def sign_flip_p(differences) -> float:
    """Two-sided p of the mean difference under random sign flips: exact up to 16 seeds, Monte Carlo beyond."""
    differences = _as_finite_vector(differences, "differences")
    # permutation_type="samples" on one sample flips signs: under H0 each seed's difference is as likely to be
    # +d as -d. Up to EXACT_SIGN_FLIP_SEEDS every flip is enumerated (exact); beyond, 2**n is too many (two hours
    # at n = 30), so scipy samples SIGN_FLIP_RESAMPLES flips with a fixed seed and returns (b + 1) / (m + 1),
    # a valid p that never reaches 0.
    exact = len(differences) <= EXACT_SIGN_FLIP_SEEDS
    result = scipy_stats.permutation_test(
        (differences,), _mean_statistic, vectorized=True, permutation_type="samples",
        n_resamples=np.inf if exact else SIGN_FLIP_RESAMPLES, alternative="two-sided",
        rng=np.random.default_rng(SIGN_FLIP_SEED))
    return float(result.pvalue)


def _zero_variance_p(mean: float, n: int) -> float:
    """The exact sign-flip p of n equal differences: 2/2**n if they are not zero (the floor), else 1."""
    # Equal differences are not proof: on 2,000 test images accuracy moves in steps of 0.0005, so equal moves
    # happen by chance. Of the 2**n flips only the observed one and its mirror reach |mean|.
    return 1.0 if abs(mean) <= ZERO_SD else 2.0 / 2.0**n


def paired_change(a, b) -> Change:
    """The change from a to b, paired by seed: mean difference, interval, t and sign-flip tests, detectable size."""
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
    if std <= ZERO_SD:
        # ttest_rel divides by a zero (or float-noise) SD; the exact sign-flip p is the honest answer.
        std, p_t = 0.0, _zero_variance_p(mean, n)
    else:
        p_t = float(scipy_stats.ttest_rel(b, a).pvalue)
    half_width = _t_half_width(std, n)
    return Change(n=n, mean=mean, std=std, low=mean - half_width, high=mean + half_width, p_t=p_t,
                  p_perm=sign_flip_p(differences), min_p_perm=min_p_perm,
                  mde=detectable_difference(std, n, n - 1, ALPHA))


def _two_sided_power(effect: float, sd: float, n: int, df: float, level: float) -> float:
    """Power of the two-sided t-test at `level` with df, n seeds, true mean `effect` and SD `sd` (noncentral t)."""
    critical = scipy_stats.t.ppf(1 - level / 2, df)
    shift = abs(effect) * math.sqrt(n) / sd
    if shift > critical + 40:  # far in the tail: the power is 1 to double precision
        return 1.0
    upper = scipy_stats.nct.sf(critical, df, shift)
    if upper != upper:
        upper = 1 - scipy_stats.nct.cdf(critical, df, shift)
    # The wrong-sign tail is below level / 2 for a positive shift; scipy's nct returns NaN for parts of it.
    lower = np.nan_to_num(scipy_stats.nct.cdf(-critical, df, shift), nan=0.0)
    return float(upper + lower)


def detectable_difference(sd: float, n: int, df: float, level: float, power: float = POWER) -> float:
    """The true mean difference the two-sided t-test at `level` (df, n seeds, SD sd) finds with `power`."""
    if not (n >= 2 and df >= 1 and sd == sd):
        return NAN
    if sd == 0:
        return NAN  # equal differences from a few seeds are not a measured spread of zero
    high = sd
    while _two_sided_power(high, sd, n, df, level) < power:
        high *= 2
    return float(optimize.brentq(lambda d: _two_sided_power(d, sd, n, df, level) - power, 0.0, high, xtol=1e-12 * sd))


def seeds_to_decide(change: Change) -> int | None:
    """Seeds per step to add so that, if the observed mean and SD were the truth, a verdict would likely come.

    Helped/hurt: the t-test at this change's level reaches 80% power at the observed mean. Equivalent (when the
    mean lies inside the margin): both one-sided tests reach it. None: more than MAX_SEEDS in all.
    """
    if change.n < 2 or change.sd != change.sd:
        return None
    if change.sd == 0:
        # No measured spread: the exact sign-flip test decides once its floor 2/2**n falls below the level.
        needed = math.ceil(math.log2(2 / change.level) + 1e-9)
        return max(needed - change.n, 1) if needed <= MAX_SEEDS else None
    extra_df = change.df - (change.n - 1)  # pooled degrees of freedom from the other changes, kept as they are

    def decided(seeds: int) -> bool:
        df = seeds - 1 + extra_df
        if _two_sided_power(abs(change.mean), change.sd, seeds, df, change.level) >= POWER:
            return True
        margin = change.rope - abs(change.mean)
        # Both one-sided tests at the level: approximately the power of one of them at the nearer margin.
        critical = scipy_stats.t.ppf(1 - change.level, df)
        return margin > 0 and scipy_stats.nct.sf(critical, df, margin * math.sqrt(seeds) / change.sd) >= POWER

    if not decided(MAX_SEEDS):
        return None
    low, high = change.n, MAX_SEEDS  # decided(high) holds; find the smallest such count
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if decided(middle) else (middle, high)
    return high - change.n


def _holm_rows(p: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm over each row of p (NaN outside the family): the adjusted p-values and each one's step level."""
    p = np.atleast_2d(np.asarray(p, dtype=float))
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    family = np.sum(~np.isnan(p), axis=1, keepdims=True)
    remaining = family - np.arange(p.shape[1])  # the rank-th smallest p faces this many hypotheses
    # The running max keeps the adjusted values monotone in the raw ones (step-down: a later rejection needs all
    # earlier ones); NaN sorts last, so it never enters the max.
    adjusted = np.minimum(1.0, np.fmax.accumulate(np.where(np.isnan(ranked), np.nan, remaining * ranked), axis=1))
    adjusted[np.isnan(ranked)] = np.nan
    levels = np.where(np.isnan(ranked), np.nan, alpha / np.maximum(remaining, 1))
    out_adjusted, out_levels = np.empty_like(adjusted), np.empty_like(levels)
    np.put_along_axis(out_adjusted, order, adjusted, axis=1)
    np.put_along_axis(out_levels, order, levels, axis=1)
    return out_adjusted, out_levels


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order; NaN stays NaN, outside the family."""
    p = np.asarray(list(p_values), dtype=float)
    if ((p[~np.isnan(p)] < 0) | (p[~np.isnan(p)] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]: {p.tolist()}")
    return _holm_rows(p)[0][0].tolist() if len(p) else []


def family_tests(mean, sd, n, rope: float = ROPE, pooled: bool = True, alpha: float = ALPHA) -> dict:
    """The verdicts of a family of changes from each one's mean difference, SD and seed count; arrays (ladders, changes).

    Each change is tested with the t-test on its mean, its SD the larger of its own and the SD pooled over every
    change of the ladder (then with the pooled degrees of freedom; from 3 seeds on), and two one-sided tests against
    +-rope (equivalence). Holm runs over all 2m of these p-values, so the family-wise error of every claim
    (helped, hurt, equivalent) is at most alpha. Rows are independent ladders: the calibration simulation
    calls this on thousands at once, the ladder on one.
    """
    mean, sd, n = (np.atleast_2d(np.asarray(x, dtype=float)) for x in (mean, sd, n))
    tested = n >= 2
    own_df = np.where(tested, n - 1, 0.0)
    own_var = np.where(tested & (np.nan_to_num(sd) > ZERO_SD), np.nan_to_num(sd) ** 2, 0.0)
    pooled_df = own_df.sum(axis=1, keepdims=True)
    pooled_var = (own_var * own_df).sum(axis=1, keepdims=True) / np.maximum(pooled_df, 1)
    # The pooled SD is a floor, never a cap: a change noisier than the rest keeps its own SD and df (pooling it
    # would shrink its interval below what its own seeds show); a quieter one borrows the family's df. With two
    # seeds a change's own SD (1 df) is too unsteady to tell which it is: in simulation, one change 4 times as
    # noisy as the rest then took the family-wise error to 0.057 (docs/statistics.md), so it keeps its own t.
    use_own = (own_var >= pooled_var) | (own_df < 2) | (not pooled)
    var, df = np.where(use_own, own_var, pooled_var), np.where(use_own, own_df, pooled_df)
    zero = var <= ZERO_SD**2
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(var / np.maximum(n, 1))
        p = 2 * scipy_stats.t.sf(np.abs(mean) / se, df)
        p_equivalent = np.maximum(scipy_stats.t.sf((mean + rope) / se, df), scipy_stats.t.cdf((mean - rope) / se, df))
        # Zero spread: the exact sign-flip p (two-sided; one-sided against the margin), never 0.
        p = np.where(zero, np.where(np.abs(mean) <= ZERO_SD, 1.0, 2.0 / 2.0**n), p)
        p_equivalent = np.where(zero, np.where(np.abs(mean) < rope, 1.0 / 2.0**n, 1.0), p_equivalent)
    p, p_equivalent = np.where(tested, p, np.nan), np.where(tested, p_equivalent, np.nan)
    adjusted, levels = _holm_rows(np.concatenate([p, p_equivalent], axis=1), alpha)
    m = mean.shape[1]
    p_adjusted, equivalent_adjusted = adjusted[:, :m], adjusted[:, m:]
    code = np.select([~tested, (p_adjusted < alpha) & (mean > 0), (p_adjusted < alpha) & (mean < 0),
                      equivalent_adjusted < alpha], [VERDICTS.index(ONE_SEED), 0, 1, 2], default=3)
    return {"p": p, "p_adjusted": p_adjusted, "p_equivalent": equivalent_adjusted, "sd": np.sqrt(var), "df": df,
            "level": levels[:, :m], "verdict": code}


def with_verdicts(changes: list[Change], rope: float = ROPE, pooled: bool = True, alpha: float = ALPHA) -> list[Change]:
    """The changes tested as one family (family_tests): interval, p, Holm, verdict, detectable size, seeds to decide."""
    if not changes:
        return []
    tests = family_tests([c.mean for c in changes], [c.std for c in changes], [c.n for c in changes], rope, pooled,
                         alpha)
    judged = []
    for i, change in enumerate(changes):
        if change.n < 2:
            judged.append(dataclasses.replace(change, verdict=ONE_SEED, rope=rope))
            continue
        sd, df, level = (float(tests[key][0, i]) for key in ("sd", "df", "level"))
        half_width = _t_half_width(sd, change.n, df) if df >= 1 else 0.0
        filled = dataclasses.replace(
            change, low=change.mean - half_width, high=change.mean + half_width, p_test=float(tests["p"][0, i]),
            df=df, sd=sd, level=level, rope=rope, p_adjusted=float(tests["p_adjusted"][0, i]),
            p_equivalent=float(tests["p_equivalent"][0, i]), verdict=VERDICTS[int(tests["verdict"][0, i])],
            mde=detectable_difference(sd, change.n, df, level) if df >= 1 else NAN)
        if filled.verdict == UNDECIDED:
            filled = dataclasses.replace(filled, more_seeds=seeds_to_decide(filled))
        judged.append(filled)
    return judged


@dataclass(frozen=True)
class McNemar:
    """Discordant test images of two models on the same test set, and McNemar's exact p."""

    only_a: int  # images right under a only
    only_b: int  # images right under b only
    p: float  # exact two-sided binomial p on the discordant pairs; 1.0 when there are none
    p_adjusted: float = NAN  # Holm over the ladder's one-seed pairs; filled by the caller


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


def sampling_df(orders: Sequence[Sequence[int]]) -> int:
    """Degrees of freedom of shapley_sampled's standard error: independent pairs (or orders) minus one."""
    orders = [tuple(order) for order in orders]
    return (len(orders) // 2 if _is_antithetic(orders) else len(orders)) - 1


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
