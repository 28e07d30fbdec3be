"""The report's tables: numbers first (what the tests check against the store), display strings second."""

import math

import pandas as pd

from ablation.report.gather import Search, isna


def ladder_table(steps: pd.DataFrame, groups: dict) -> pd.DataFrame:
    """One row per step of the latest ladder: its own numbers and the mean/std over its replicas."""
    rows, previous, final = [], None, None
    for _, step in steps.iterrows():
        values = groups[step["step"]]["test_accuracy"].dropna()
        mean = values.mean() if len(values) else step["test_accuracy"]
        row = {
            "step": step["step"], "description": step.get("description", ""), "baseline": bool(step["baseline"]),
            "model": step["model"], "test_accuracy": step["test_accuracy"], "mean_test_accuracy": mean,
            "std_test_accuracy": values.std(ddof=1) if len(values) > 1 else float("nan"), "seeds": max(1, len(values)),
            "change": float("nan"), "change_from": "", "reported_test_accuracy": step.get("reported_test_accuracy"),
            "epochs_run": int(step["epochs_run"]), "epochs": int(step["epochs"]),
            "train_seconds": step["train_seconds"], "profile": step.get("profile", ""), "run_id": step["run_id"],
            "reused": isinstance(step.get("reused_from"), str) and bool(step.get("reused_from")),
        }
        # Steps against the step before; a baseline against the ladder's last step (what it competes with).
        against = final if row["baseline"] else previous
        if against is not None:
            row["change"], row["change_from"] = mean - against[1], against[0]
        if not row["baseline"]:
            previous = final = (step["step"], mean)
        rows.append(row)
    return pd.DataFrame(rows)


def show_ladder(table: pd.DataFrame) -> pd.DataFrame:
    """The ladder table as a person reads it."""
    rows = []
    for _, row in table.iterrows():
        accuracy = pct(row["mean_test_accuracy"])
        if row["seeds"] > 1:
            accuracy = (f"{100 * row['mean_test_accuracy']:.1f} ± {100 * row['std_test_accuracy']:.1f}% "
                        f"(n={row['seeds']})")
        change = "" if math.isnan(row["change"]) else f"{100 * row['change']:+.1f} pp"
        if change and row["baseline"]:
            change += f" vs {row['change_from']}"
        rows.append({
            "step": row["step"] + (" (baseline)" if row["baseline"] else ""), "what changed": row["description"],
            "test accuracy": accuracy, "change": change, "source's number": pct(row["reported_test_accuracy"]),
            "epochs": f"{row['epochs_run']}/{row['epochs']}",
            "time": f"{row['train_seconds']:.0f} s" + (" (reused)" if row["reused"] else ""),
            "profile": row["profile"],
        })
    return pd.DataFrame(rows)


def architecture_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: model, test accuracy, parameters, FLOPs and seconds per epoch."""
    rows = [{
        "run": run["step"] if isinstance(run.get("step"), str) else run["run_name"], "model": run["model"],
        "test accuracy": pct(run["test_accuracy"]), "parameters": f"{int(run['num_params']):,}",
        "FLOPs / image": eng(run["flops"]), "s / epoch": f"{run['seconds_per_epoch']:.1f}",
    } for _, run in runs.iterrows()]
    return pd.DataFrame(rows)


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
    return "" if isna(value) else f"{100 * float(value):.1f}%"


def eng(value) -> str:
    """12.3 M, 1.2 G: FLOPs at a glance."""
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
