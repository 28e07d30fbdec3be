"""The report's tables: numbers first (what the tests check against the store), display strings second.

The statistics come from `ablation.analysis.evidence` (summaries over seeds, paired changes, Holm, McNemar);
this module only arranges them. Accuracies are fractions in the number tables and percent (or
percentage points, pp, for a difference) in the display ones.
"""

import math

import numpy as np
import pandas as pd

from ablation.analysis import evidence, stats
from ablation.report.found import PROFILE, Ladder, Search, col, isna
from ablation.tracking import Tag

REUSED_FROM = col(Tag.REUSED_FROM)
CHANGE_COLUMNS = ["step", "against", "n", "seeds", "mean", "low", "high", "p_t", "p_test", "df", "sd", "level", "p_perm",
                  "min_p_perm", "p_adjusted", "p_equivalent", "rope", "mde", "verdict", "more_seeds", "mcnemar_p",
                  "mcnemar_p_adjusted", "only_against", "only_step"]

# ---------------------------------------------------------------------------------------------
# The ladder: evidence over seeds.


def records(ladder: Ladder) -> list[dict]:
    """The replicates as `evidence` reads them: step, seed, test and best validation accuracy, right/wrong."""
    out = []
    for _, run in ladder.replicates.iterrows():
        if isna(run.get("test_accuracy")) or isna(run.get("best_val_accuracy")):
            continue  # a run without its final numbers says nothing about the step
        top5 = run.get("test_top5_accuracy")
        out.append({"step": run["step"], "seed": int(run["seed"]), "test_accuracy": float(run["test_accuracy"]),
                    "test_top5_accuracy": None if isna(top5) else float(top5),
                    "best_val_accuracy": float(run["best_val_accuracy"]),
                    "correct": ladder.correct.get(run["run_id"])})
    return out


def ladder_evidence(ladder: Ladder) -> tuple[list[evidence.StepEvidence], list[evidence.ChangeEvidence]]:
    """Each step over its seeds and each change (step against the one before; a baseline against its own).

    The changes are judged at the margin and level the ladder recorded (`verdict_settings`).
    """
    found = records(ladder)
    order = [(row["step"], bool(row["baseline"])) for _, row in ladder.steps.iterrows()]
    return evidence.summarize_steps(found, order), evidence.compare_steps(found, ladder.pairs, *verdict_settings(ladder))


def verdict_settings(ladder: Ladder) -> tuple[float, float, str]:
    """(rope, alpha, metric) of the ladder's parent run: its --rope, its level and its study's metric; the
    defaults for a ladder that predates them."""
    rope, alpha, metric = (ladder.parent.get(col(tag)) for tag in (Tag.ROPE, Tag.ALPHA, Tag.METRIC))
    return (stats.ROPE if isna(rope) else float(rope), stats.ALPHA if isna(alpha) else float(alpha),
            metric if isinstance(metric, str) and metric else "test_accuracy")


def step_summary(ladder: Ladder, steps: list[evidence.StepEvidence]) -> pd.DataFrame:
    """One row per step: n, mean, std and 95% interval of test and best validation accuracy, and its cost.

    Written beside the report as ladder_summary.csv. Cost columns are means over the step's replicates.
    """
    rows = []
    for item in steps:
        mine = ladder.replicates[ladder.replicates["step"].eq(item.step)
                                 & ladder.replicates["seed"].isin(item.seeds)]
        first = ladder.steps[ladder.steps["step"].eq(item.step)].iloc[0]
        epochs_run = mine["epochs_run"].astype(float)
        rows.append({
            "step": item.step, "baseline": item.baseline, "description": first.get("description", ""),
            "model": first.get("model", ""), "n": item.test.n, "seeds": " ".join(str(s) for s in item.seeds),
            **_summary_columns("test_accuracy", item.test), **_summary_columns("best_val_accuracy", item.val),
            "reported_test_accuracy": first.get("reported_test_accuracy"),
            "epochs_run_min": int(epochs_run.min()), "epochs_run_max": int(epochs_run.max()),
            "epochs": _int_or_none(first.get("epochs")),
            "cpu_seconds_per_epoch": float((mine["train_cpu_seconds"].astype(float) / epochs_run).mean())
            if "train_cpu_seconds" in mine.columns else float("nan"),
            "wall_seconds_per_epoch": float(mine["seconds_per_epoch"].astype(float).mean()),
            "num_params": _int_or_none(first.get("num_params")), "flops": _int_or_none(first.get("flops")),
            "profile": first.get(PROFILE, ""), "reused": bool(mine.get(REUSED_FROM, pd.Series()).notna().any()),
        })
    return pd.DataFrame(rows)


def _summary_columns(name: str, summary: stats.Summary) -> dict:
    return {f"{name}_mean": summary.mean, f"{name}_std": summary.std, f"{name}_low": summary.low,
            f"{name}_high": summary.high}


def _int_or_none(value):
    return None if isna(value) else int(value)


def change_table(changes: list[evidence.ChangeEvidence]) -> pd.DataFrame:
    """One row per change: the paired difference over the seeds both steps have, its tests and the verdict."""
    rows = []
    for item in changes:
        change, mcnemar = item.change, item.mcnemar
        rows.append({
            "step": item.step, "against": item.against, "n": change.n, "seeds": " ".join(map(str, item.seeds)),
            "mean": change.mean, "low": change.low, "high": change.high, "p_t": change.p_t,
            "p_test": change.p_test, "df": change.df, "sd": change.sd, "level": change.level,
            "p_perm": change.p_perm, "min_p_perm": change.min_p_perm, "p_adjusted": change.p_adjusted,
            "p_equivalent": change.p_equivalent, "rope": change.rope, "mde": change.mde, "verdict": item.verdict,
            "more_seeds": change.more_seeds,
            "mcnemar_p": mcnemar.p if mcnemar else float("nan"),
            "mcnemar_p_adjusted": mcnemar.p_adjusted if mcnemar else float("nan"),
            "only_against": mcnemar.only_a if mcnemar else None, "only_step": mcnemar.only_b if mcnemar else None,
        })
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


# ---------------------------------------------------------------------------------------------
# The ladder as a person reads it.


def show_steps(summary: pd.DataFrame) -> pd.DataFrame:
    """Per step: n seeds; mean, std and 95% interval of test accuracy, then of best validation accuracy."""
    rows = []
    for _, row in summary.iterrows():
        epochs = f"{row['epochs_run_min']}" + (f"–{row['epochs_run_max']}" if row["epochs_run_max"]
                                               != row["epochs_run_min"] else "")
        rows.append({
            "step": row["step"] + (" (baseline)" if row["baseline"] else ""), "what changed": row["description"],
            "n": str(row["n"]),
            "test accuracy": pct(row["test_accuracy_mean"]), "test std": points(row["test_accuracy_std"]),
            "test 95% interval": interval(row["test_accuracy_low"], row["test_accuracy_high"]),
            "best val accuracy": pct(row["best_val_accuracy_mean"]),
            "val std": points(row["best_val_accuracy_std"]),
            "val 95% interval": interval(row["best_val_accuracy_low"], row["best_val_accuracy_high"]),
            "source's number": pct(row["reported_test_accuracy"]),
            "epochs": f"{epochs}/{whole(row['epochs'])}",
            "CPU-s / epoch": seconds(row["cpu_seconds_per_epoch"]) + (" (reused)" if row["reused"] else ""),
        })
    return pd.DataFrame(rows)


def show_changes(table: pd.DataFrame) -> pd.DataFrame:
    """Which steps helped: per change, n seeds, the mean paired difference and its interval, the tests, the verdict."""
    with_mcnemar = table["mcnemar_p"].notna().any()
    sign_flip = "p (sign-flip, exact)" if table["n"].max() <= stats.EXACT_SIGN_FLIP_SEEDS else "p (sign-flip)"
    rows = []
    for _, row in table.iterrows():
        shown = {
            "change": f"{row['step']} vs {row['against']}", "n seeds": str(row["n"]),
            "mean difference": signed_points(row["mean"]),
            "95% interval": interval(row["low"], row["high"], signed=True),
            "p (t, pooled SD)": p_value(row["p_test"]),
            sign_flip: "" if math.isnan(row["p_perm"]) else f"{p_value(row['p_perm'])} (floor {p_value(row['min_p_perm'])})",
            "p (Holm)": p_value(row["p_adjusted"]),
            "smallest detectable": "" if math.isnan(row["mde"]) else f"{100 * row['mde']:.1f} pp",
            "verdict": row["verdict"],
            "more seeds to decide": _more_seeds(row),
        }
        if with_mcnemar:
            shown["McNemar p, Holm (test images)"] = "" if math.isnan(row["mcnemar_p"]) else (
                f"{p_value(row['mcnemar_p_adjusted'])} ({row['only_step']} vs {row['only_against']} images right "
                f"by one only)")
        rows.append(shown)
    return pd.DataFrame(rows)


def _more_seeds(row) -> str:
    """Seeds per step that would likely decide an undecided change ("" for the others)."""
    if row["verdict"] != stats.UNDECIDED:
        return ""
    return f"over {stats.MAX_SEEDS}" if isna(row["more_seeds"]) else f"~{int(row['more_seeds'])}"


def architecture_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per step: model, mean test accuracy (n), parameters, FLOPs, CPU seconds and wall seconds per epoch."""
    rows = [{
        "run": row["step"], "model": row["model"], "n": str(row["n"]),
        "test accuracy": pct(row["test_accuracy_mean"]), "parameters": f"{int(row['num_params']):,}",
        "FLOPs / image": eng(row["flops"]), "CPU-s / epoch": seconds(row["cpu_seconds_per_epoch"]),
        "wall s / epoch": seconds(row["wall_seconds_per_epoch"]),
    } for _, row in summary.iterrows()]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The search.


def show_trials(search: Search, top: int = 10) -> pd.DataFrame:
    """The best trials: complete ones by value, then pruned, then failed."""
    order = {"complete": 0, "pruned": 1, "failed": 2}
    sign = -1 if search.direction == "maximize" else 1
    trials = search.trials.assign(rank=search.trials["state"].map(order),
                                  key=sign * search.trials["value"].astype(float).fillna(0.0))
    scale = 100 if "accuracy" in search.monitor else 1
    rows = []
    for _, trial in trials.sort_values(["rank", "key", "number"]).head(top).iterrows():
        value = trial["value"]
        rows.append({
            "trial": str(trial["number"]), "state": trial["state"],
            f"{search.monitor} (best epoch)": "" if pd.isna(value) else f"{scale * value:.1f}"
            + ("%" if scale == 100 else "") + (" (when pruned)" if trial["state"] == "pruned" else ""),
            "test accuracy": pct(trial["test_accuracy"]),
            "epochs": f"{whole(trial['epochs_run'])}/{whole(trial['epochs'])}",
            **{p: short(trial.get(p)) for p in search.params},
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Numbers as text.


def pct(value) -> str:
    """0.8312 -> '83.1%'; a missing value -> ''."""
    return "" if isna(value) or np.isnan(float(value)) else f"{100 * float(value):.1f}%"


def points(value) -> str:
    """A spread in percentage points: 0.012 -> '1.2 pp'; '' when not defined (one seed)."""
    return "" if isna(value) or np.isnan(float(value)) else f"{100 * float(value):.1f} pp"


def signed_points(value) -> str:
    """A difference in percentage points: 0.012 -> '+1.2 pp'."""
    return "" if isna(value) or np.isnan(float(value)) else f"{100 * float(value):+.1f} pp"


def interval(low, high, signed: bool = False) -> str:
    """[81.2, 84.0]% for accuracies, [-0.3, +2.7] pp for differences; '' when not defined (one seed)."""
    if isna(low) or np.isnan(float(low)):
        return ""
    if signed:
        return f"[{100 * low:+.1f}, {100 * high:+.1f}] pp"
    return f"[{100 * low:.1f}, {100 * high:.1f}]%"


def p_value(value) -> str:
    """Three decimals, '<0.001' below; '' when there is no test (one seed)."""
    if isna(value) or np.isnan(float(value)):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def seconds(value) -> str:
    return "" if isna(value) or np.isnan(float(value)) else f"{float(value):.1f}"


def eng(value) -> str:
    """12.3 M, 1.2 G: FLOPs at a glance."""
    if isna(value):
        return ""
    value = float(value)
    for factor, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{unit}"
    return f"{value:.0f}"


def whole(value) -> str:
    """A count, or '-' when the run has none (a trial killed before its first epoch)."""
    return "-" if isna(value) else str(int(value))


def short(value) -> str:
    """A searched parameter's value in three significant digits."""
    if isna(value):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
