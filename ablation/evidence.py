"""Evidence for a ladder: each step's replicates summarized, each change tested, paired by training seed.

Input is plain records, one per finished run: `{"step", "seed", "test_accuracy", "best_val_accuracy"}`
and, for the one-seed McNemar test, `"correct"` (a boolean per test image, the same images in the same
order for every run of a ladder: the split seed is fixed). The ladder prints this and the report draws
it; neither computes statistics of its own.
"""

from dataclasses import dataclass

import numpy as np

from ablation import stats


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
    mcnemar: stats.McNemar | None = None  # one common seed: test-set sampling noise only
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


def compare_steps(records: list[dict], pairs: list[tuple[str, str]]) -> list[ChangeEvidence]:
    """Each (step, against) pair tested on the seeds both have; Holm over all pairs with two or more seeds."""
    by_step = {}
    for record in records:
        by_step.setdefault(record["step"], {})[record["seed"]] = record
    tested = []
    for step, against in pairs:
        a, b = by_step.get(against, {}), by_step.get(step, {})
        seeds = tuple(sorted(a.keys() & b.keys()))
        if not seeds:
            continue
        change = stats.paired_change([a[s]["test_accuracy"] for s in seeds], [b[s]["test_accuracy"] for s in seeds])
        tested.append((step, against, seeds, change))
    adjusted = stats.with_verdicts([change for *_, change in tested])
    out = []
    for (step, against, seeds, _), change in zip(tested, adjusted, strict=True):
        mcnemar, verdict = None, change.verdict
        if len(seeds) == 1 and by_step[step][seeds[0]].get("correct") is not None \
                and by_step[against][seeds[0]].get("correct") is not None:
            mcnemar = stats.mcnemar_exact(np.asarray(by_step[against][seeds[0]]["correct"]),
                                          np.asarray(by_step[step][seeds[0]]["correct"]))
            verdict = stats.sampling_verdict(mcnemar, change.mean)
        out.append(ChangeEvidence(step, against, seeds, change, mcnemar, verdict))
    return out


def ladder_pairs(steps) -> list[tuple[str, str]]:
    """(step, the step it is compared with): each ladder step against the one before it, each baseline
    against its `compare_to` step (a study's `from_step`, else the ladder's last step)."""
    ladder = [s for s in steps if not s.is_baseline]
    pairs = [(later.name, earlier.name) for earlier, later in zip(ladder, ladder[1:])]
    last = ladder[-1].name if ladder else None
    pairs += [(s.name, s.compare_to or last) for s in steps if s.is_baseline and (s.compare_to or last)]
    return pairs
