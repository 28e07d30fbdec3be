"""Evidence for a ladder: each step's replicates summarized, each change tested, paired by training seed.

Input is plain records, one per finished run: `{"step", "seed", "test_accuracy", "best_val_accuracy"}`
and `"correct"` (a boolean per test image, the same images in the same order for every run of a ladder,
which holds when the split seed is fixed: the ladder's default) for the one-seed McNemar diagnostic and the
variance split. The ladder prints this and the report draws
it; neither computes statistics of its own.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ablation.analysis import stats

NAN = float("nan")


@dataclass(frozen=True)
class StepEvidence:
    """One step over its replicates."""

    step: str
    baseline: bool
    seeds: tuple[int, ...]
    test: stats.Summary  # test accuracy
    val: stats.Summary  # best validation accuracy


@dataclass(frozen=True)
class ChangeEvidence:
    """`step` minus `against`, paired by seed; with one common seed, McNemar on the test images instead."""

    step: str
    against: str
    seeds: tuple[int, ...]  # the seeds both have
    change: stats.Change  # p_adjusted and verdict filled over the family of the ladder's changes
    mcnemar: stats.McNemar | None = None  # one common seed: test-set sampling noise only, Holm over such pairs
    verdict: str = ""


def summarize_steps(records: list[dict], steps: list[tuple[str, bool]]) -> list[StepEvidence]:
    """Per step (name, is_baseline) in order: n, mean, std and 95% interval of test and best validation accuracy."""
    out = []
    for name, baseline in steps:
        mine = sorted((r for r in records if r["step"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        out.append(StepEvidence(name, baseline, tuple(r["seed"] for r in mine),
                                stats.summarize([r["test_accuracy"] for r in mine]),
                                stats.summarize([r["best_val_accuracy"] for r in mine])))
    return out


def compare_steps(records: list[dict], pairs: list[tuple[str, str]], rope: float = stats.ROPE,
                  alpha: float = stats.ALPHA, metric: str = "test_accuracy") -> list[ChangeEvidence]:
    """Each (step, against) pair tested on the seeds both have, as one family (stats.with_verdicts).

    `metric`: the records' value compared (a record without it is not counted). A pair with one common seed
    gets no verdict (one seed says nothing of training noise); McNemar's test on its test images (right or
    wrong: top-1, so only for test_accuracy) is kept beside it as a diagnostic of test-set sampling,
    Holm-adjusted over those pairs.
    """
    by_step = {}
    for record in records:
        if record.get(metric) is not None and record[metric] == record[metric]:  # not None, not NaN
            by_step.setdefault(record["step"], {})[record["seed"]] = record
    tested = []
    for step, against in pairs:
        a, b = by_step.get(against, {}), by_step.get(step, {})
        seeds = tuple(sorted(a.keys() & b.keys()))
        if not seeds:
            continue
        change = stats.paired_change([a[s][metric] for s in seeds], [b[s][metric] for s in seeds])
        mcnemar = None
        if (len(seeds) == 1 and metric == "test_accuracy" and a[seeds[0]].get("correct") is not None
                and b[seeds[0]].get("correct") is not None):
            mcnemar = stats.mcnemar_exact(np.asarray(a[seeds[0]]["correct"]), np.asarray(b[seeds[0]]["correct"]))
        tested.append((step, against, seeds, change, mcnemar))
    judged = stats.with_verdicts([change for *_, change, _ in tested], rope=rope, alpha=alpha)
    mcnemar_adjusted = iter(stats.holm([m.p for *_, m in tested if m is not None]))
    out = []
    for (step, against, seeds, _, mcnemar), change in zip(tested, judged, strict=True):
        if mcnemar is not None:
            mcnemar = dataclasses.replace(mcnemar, p_adjusted=next(mcnemar_adjusted))
        out.append(ChangeEvidence(step, against, seeds, change, mcnemar, change.verdict))
    return out


@dataclass(frozen=True)
class VarianceSplit:
    """Where a ladder's noise comes from, as SDs in accuracy (NaN where the runs do not show it)."""

    seed: float  # of a paired difference between seeds: training noise, pooled over the changes (what is tested)
    churn: float  # of a paired difference from which test images are drawn: images that flip between the two
    image: float  # of one accuracy from which test images are drawn: sqrt(p (1 - p) / images)
    images: int  # test images per run (0: no per-image predictions)


def variance_split(records: list[dict], changes: list[ChangeEvidence]) -> VarianceSplit:
    """The noise of a ladder split into training seed, per-image churn and test image (see docs/statistics.md)."""
    tested = [item.change for item in changes if item.change.n >= 2]
    df = sum(c.n - 1 for c in tested)
    seed = math.sqrt(sum(c.std**2 * (c.n - 1) for c in tested) / df) if df else NAN
    by_key = {(r["step"], r["seed"]): r.get("correct") for r in records}
    churn = []
    for item in changes:
        for s in item.seeds:
            a, b = by_key.get((item.against, s)), by_key.get((item.step, s))
            if a is not None and b is not None and len(a) == len(b):
                m = stats.mcnemar_exact(np.asarray(a), np.asarray(b))
                images = len(a)
                # The variance of a difference of paired proportions (the McNemar setting).
                churn.append((m.only_a + m.only_b) / images**2 - (m.only_b - m.only_a) ** 2 / images**3)
    correct = [np.asarray(c, dtype=float) for c in by_key.values() if c is not None]
    images = len(correct[0]) if correct else 0
    image = math.sqrt(np.mean([c.mean() * (1 - c.mean()) / len(c) for c in correct])) if correct else NAN
    return VarianceSplit(seed=seed, churn=math.sqrt(np.mean(churn)) if churn else NAN, image=image, images=images)


def ladder_pairs(steps) -> list[tuple[str, str]]:
    """(step, the step it is compared with): each ladder step against the one before it, each baseline
    against its `compare_to` step (a study's `from_step`, else the ladder's last step)."""
    ladder = [s for s in steps if not s.is_baseline]
    pairs = [(later.name, earlier.name) for earlier, later in zip(ladder, ladder[1:])]
    last = ladder[-1].name if ladder else None
    pairs += [(s.name, s.compare_to or last) for s in steps if s.is_baseline and (s.compare_to or last)]
    return pairs


SEED_GROUP = 2  # seeds added per look of a sequential ladder


def looks(first: int, max_seeds: int, group: int = SEED_GROUP) -> list[int]:
    """The seed counts a sequential ladder looks at: first, first + group, ... and max_seeds last."""
    if not 3 <= first <= max_seeds:
        raise ValueError(f"a sequential ladder starts at 3 to max_seeds ({max_seeds}) seeds; got {first}")
    return sorted(set(range(first, max_seeds, group)) | {max_seeds})


def still_open(changes: list[dict], decided: dict) -> list[dict]:
    """The changes (ladder_evidence's dicts) not decided yet; the newly decided ones are frozen into `decided`.

    A change keeps the first verdict it reaches: each look tests the whole family at alpha / looks (Bonferroni
    spending over the looks, valid however the seeds were chosen), so a later look only adds claims to check.
    """
    open_ = []
    for item in changes:
        key = (item["step"], item["against"])
        if key in decided:
            continue
        if item["change"]["verdict"] in (stats.HELPED, stats.HURT, stats.EQUIVALENT):
            decided[key] = item
        else:
            open_.append(item)
    return open_
