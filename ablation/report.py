"""Comparison reports: what the ladder and the search recorded, as HTML, Markdown and CSV. Never trains.

    python -m ablation.report                                      # studies/assignment.toml's latest ladder
    python -m ablation.report --study studies/assignment.toml --out reports/assignment
    python -m ablation.report --experiment assignment --data ../shared/data/cifar-10-python.tar.gz

Writes, under reports/<study>/ by default: report.html (one self-contained file: figures as data
URIs, inline CSS, opens offline), report.md (the same tables, the figures as PNG files beside it)
and runs.csv (one row per run of the experiment, columns named as the config and the metrics).
The folder is also logged under `report/` as artifacts of the study's latest parent run.

Which runs: the latest ladder parent run of the study (tag ablation.kind=ladder) that has finished
steps, and those steps. A step's error bar is the std over its replicas: the finished runs of the
same step with the same config except the seed, under any ladder parent with the same profile, one
per distinct piece of work (ablation.work_key), so a reused copy of a run is not counted twice.
"""

import argparse
import base64
import html
import io
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ablation.config import SearchSpace, StudyError, load_study  # light: no Keras, no MLflow

DEFAULT_STUDY = "studies/assignment.toml"
FIGURES = ("ladder.png", "curves.png", "baselines.png", "search_history.png", "search_importances.png",
           "search_params.png", "confusion.png")  # the PNGs this module writes (and replaces)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
DPI = 110


class ReportError(Exception):
    """Nothing to report (no store, experiment or runs) or a bad option; the message says how to fix it."""


@dataclass(frozen=True)
class StudyInfo:
    """What the report needs of a study: its name (the MLflow experiment), title and file."""

    name: str
    title: str
    source: str = ""
    path: Path | None = None
    search: SearchSpace | None = None


@dataclass
class Figure:
    """A rendered figure: its file name, PNG bytes and a one-line caption."""

    name: str
    png: bytes
    caption: str


@dataclass
class Section:
    """One part of the report: a paragraph, an optional table (display strings), figures, notes."""

    title: str
    text: str = ""
    table: "object | None" = None  # a pandas DataFrame of strings
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Which study, which runs.


def resolve_study(study_name_or_path) -> StudyInfo:
    """A study file (a path, or NAME for studies/NAME.toml); a bare name that is no file is an experiment."""
    text = str(study_name_or_path)
    is_path = text.endswith(".toml") or "/" in text
    path = Path(text) if is_path else Path("studies") / f"{text}.toml"
    if not path.is_file():
        if is_path:
            raise ReportError(f"study file {text} not found; the studies shipped are in studies/ "
                              f"(e.g. {DEFAULT_STUDY})")
        return StudyInfo(text, text)
    try:
        study = load_study(path)
    except StudyError as error:
        raise ReportError(str(error)) from None
    return StudyInfo(study.name, study.title, study.source, path, study.search)


def how_to_make_runs(study: StudyInfo) -> str:
    study_arg = study.path if study.path is not None else DEFAULT_STUDY
    return (f"make them with: python -m ablation.ladder --study {study_arg} --profile smoke "
            f"(seconds; --profile quick for a real run), then run python -m ablation.report again")


def read_runs(experiment: str, study: StudyInfo):
    """Every run of the experiment, tidied, and the config's column names; a ReportError when there are none."""
    from ablation import tracking

    uri = tracking.tracking_uri()
    names = tracking.experiment_names()
    if experiment not in names:
        known = f"experiments there: {', '.join(names)}" if names else "it holds no experiments"
        raise ReportError(f"no experiment {experiment!r} in the MLflow store {uri} ({known}); "
                          f"{how_to_make_runs(study)}")
    frame = tracking.runs_frame(experiment)
    if frame.empty:
        raise ReportError(f"experiment {experiment!r} in {uri} has no runs yet; {how_to_make_runs(study)}")
    return tidy(frame)


COUNT_METRICS = ("epochs_run", "num_params", "flops")  # whole numbers that MLflow stores as floats
# Tags holding numbers; other tags stay text (a hex digest such as '12e4...' must not become a float).
NUMERIC_TAGS = ("step_index", "reported_test_accuracy", "optuna_trial", "pruned_at_epoch")


def tidy(frame):
    """MLflow's columns under the project's names, and the config's column names.

    Params take the bare name (`dropout_rate`); metrics and `ablation.*` tags too unless the name is
    taken (then they keep a prefix: `metrics.learning_rate`, `ablation.seed`); `data.*` tags keep
    theirs. Params and numeric tags become numbers where every value is one.
    """
    rename = {"tags.mlflow.runName": "run_name", "tags.mlflow.parentRunId": "parent_run_id"}
    params = [c[len("params."):] for c in frame.columns if c.startswith("params.")]
    rename.update({f"params.{p}": p for p in params})
    taken = {"run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time", *rename.values()}
    for column in frame.columns:
        if column in rename:
            continue
        if column.startswith("metrics."):
            short = column[len("metrics."):]
            rename[column] = short if short not in taken else column
        elif column.startswith("tags."):
            tag = column[len("tags."):]
            short = tag[len("ablation."):] if tag.startswith("ablation.") else tag
            rename[column] = short if short not in taken else tag
        else:
            continue
        taken.add(rename[column])
    out = frame.rename(columns=rename)
    for column in params + [c for c in NUMERIC_TAGS if c in out.columns]:
        out[column] = _maybe_numeric(out[column])
    for column in [c for c in COUNT_METRICS if c in out.columns]:
        out[column] = out[column].round().astype("Int64")
    if "baseline" in out.columns:
        out["baseline"] = out["baseline"].eq("True")
    return out, params


def _maybe_numeric(column):
    """A text column as numbers when every value is one ('None' counts as missing); else unchanged.

    Whole numbers written without a point become nullable integers, so that a run without the
    param (a parent run) does not turn `epochs` into 25.0.
    """
    import pandas as pd

    text = column.where(column.ne("None"))
    try:
        numbers = pd.to_numeric(text)
    except (ValueError, TypeError):
        return column
    present = text.dropna().astype(str)
    if len(present) and present.str.fullmatch(r"-?\d+").all():
        return numbers.astype("Int64")
    return numbers


def latest_ladder(runs):
    """The newest ladder parent with finished steps, and those steps in order; (None, None) if none."""
    if "kind" not in runs.columns:
        return None, None
    steps = runs[runs["kind"].eq("ladder_step") & runs["status"].eq("FINISHED")]
    parents = runs[runs["kind"].eq("ladder") & runs["run_id"].isin(steps["parent_run_id"])]
    if parents.empty:
        return None, None
    parent = parents.sort_values("start_time").iloc[-1]
    mine = steps[steps["parent_run_id"].eq(parent["run_id"])].sort_values("step_index")
    return parent, mine.reset_index(drop=True)


def replicas(runs, parent, steps, config_columns):
    """Each step's replicas: same step, same config but the seed, a ladder of the same profile; one per work key."""
    ladders = runs[runs["kind"].eq("ladder") & runs["profile"].eq(parent["profile"])]["run_id"]
    pool = runs[runs["kind"].eq("ladder_step") & runs["status"].eq("FINISHED") & runs["parent_run_id"].isin(ladders)]
    compare = [c for c in config_columns if c != "seed"]
    groups = {}
    for _, step in steps.iterrows():
        same = pool[pool["step"].eq(step["step"])]
        for column in compare:
            if _isna(step[column]):  # a knob this step's model does not have
                same = same[same[column].isna()]
            else:
                same = same[same[column].eq(step[column]).fillna(False).astype(bool)]
        # The newest run of each piece of work: a ladder that reused a run repeats it, it does not replicate it.
        groups[step["step"]] = same.sort_values("start_time").drop_duplicates("work_key", keep="last")
    return groups


def _isna(value) -> bool:
    """None, NaN or pandas' NA: a value a run does not have."""
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


# ---------------------------------------------------------------------------------------------
# Tables: numbers first (tested against MLflow), display strings second.


def ladder_table(steps, groups):
    """One row per step of the latest ladder: its own numbers and the mean/std over its replicas."""
    import pandas as pd

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


def show_ladder(table):
    """The ladder table as a person reads it."""
    import pandas as pd

    rows = []
    for _, row in table.iterrows():
        accuracy = _pct(row["mean_test_accuracy"])
        if row["seeds"] > 1:
            accuracy = (f"{100 * row['mean_test_accuracy']:.1f} ± {100 * row['std_test_accuracy']:.1f}% "
                        f"(n={row['seeds']})")
        change = "" if math.isnan(row["change"]) else f"{100 * row['change']:+.1f} pp"
        if change and row["baseline"]:
            change += f" vs {row['change_from']}"
        rows.append({
            "step": row["step"] + (" (baseline)" if row["baseline"] else ""), "what changed": row["description"],
            "test accuracy": accuracy, "change": change, "source's number": _pct(row["reported_test_accuracy"]),
            "epochs": f"{row['epochs_run']}/{row['epochs']}",
            "time": f"{row['train_seconds']:.0f} s" + (" (reused)" if row["reused"] else ""),
            "profile": row["profile"],
        })
    return pd.DataFrame(rows)


def architecture_table(runs):
    """Per run: model, test accuracy, parameters, FLOPs and seconds per epoch."""
    import pandas as pd

    rows = [{
        "run": run["step"] if isinstance(run.get("step"), str) else run["run_name"], "model": run["model"],
        "test accuracy": _pct(run["test_accuracy"]), "parameters": f"{int(run['num_params']):,}",
        "FLOPs / image": _eng(run["flops"]), "s / epoch": f"{run['seconds_per_epoch']:.1f}",
    } for _, run in runs.iterrows()]
    return pd.DataFrame(rows)


def _pct(value) -> str:
    return "" if _isna(value) else f"{100 * float(value):.1f}%"


def _eng(value) -> str:
    """12.3 M, 1.2 G: FLOPs at a glance."""
    value = float(value)
    for factor, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{unit}"
    return f"{value:.0f}"


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's Agg through Figure objects: no pyplot, no global state, no display).


def _figure(width: float, height: float):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def histories(run_ids) -> dict:
    """Per-epoch metrics of each run: a DataFrame indexed by epoch (from 1), one column per metric."""
    import pandas as pd

    from ablation import tracking

    out = {}
    for run_id in run_ids:
        recorded = tracking.metric_histories(run_id, HISTORY_KEYS)
        series = {key: pd.Series(dict(values)) for key, values in recorded.items()}
        frame = pd.DataFrame(series)
        frame.index.name = "epoch"
        out[run_id] = frame
    return out


def lr_drops(rates, initial=None) -> list[int]:
    """Epochs whose logged learning rate (read at the epoch's end) is below the one before it.

    ReduceLROnPlateau lowers the rate at the end of the epoch that triggered it, so the drop shows
    on that epoch; a step schedule shows on the first epoch run at the lower rate.
    """
    out, before = [], initial
    for epoch, rate in rates.dropna().items():
        if before is not None and rate < before * (1 - 1e-6):
            out.append(int(epoch))
        before = rate
    return out


def _curve_markers(ax, run, history, color, scale=1.0, key="val_accuracy"):
    """The epochs where the learning rate dropped (v) and where early stopping fired (X), on a curve."""
    from matplotlib.transforms import offset_copy

    values = history[key] * scale
    for epoch in lr_drops(history.get("learning_rate", values[:0]), run.get("learning_rate")):
        if epoch in values.index:
            ax.plot(epoch, values[epoch], "v", color=color, markeredgecolor="black", markersize=10, zorder=4)
    if int(run["epochs_run"]) < int(run["epochs"]) and len(values):
        # Drawn a little above the last epoch's point, so that a learning-rate mark there stays visible.
        above = offset_copy(ax.transData, fig=ax.figure, y=11, units="points")
        ax.plot(values.index[-1], values.iloc[-1], "X", color=color, markeredgecolor="black", markersize=10,
                zorder=4, transform=above)


def _marker_legend():
    from matplotlib.lines import Line2D

    return [Line2D([], [], marker="v", linestyle="", color="0.7", markeredgecolor="black", markersize=9,
                   label="learning rate lowered"),
            Line2D([], [], marker="X", linestyle="", color="0.7", markeredgecolor="black", markersize=9,
                   label="early stopping fired")]


def _plot_curves(ax_accuracy, ax_loss, runs, history_of, colors):
    """Validation accuracy and loss per epoch for several runs on two shared axes."""
    from matplotlib.ticker import MaxNLocator

    for (_, run), color in zip(runs.iterrows(), colors):
        history = history_of.get(run["run_id"])
        if history is None or "val_accuracy" not in history:
            continue
        label = run["step"]
        ax_accuracy.plot(history.index, 100 * history["val_accuracy"], "o-", color=color, markersize=4, label=label)
        ax_loss.plot(history.index, history["val_loss"], "o-", color=color, markersize=4, label=label)
        _curve_markers(ax_accuracy, run, history, color, 100, "val_accuracy")
        _curve_markers(ax_loss, run, history, color, 1, "val_loss")
    for ax, ylabel in ((ax_accuracy, "validation accuracy (%)"), (ax_loss, "validation loss (cross-entropy)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(y=0.12)  # room for the early-stopping marks drawn above the last point
        ax.grid(alpha=0.3)
    ax_accuracy.set_title("validation accuracy")
    ax_loss.set_title("validation loss")


def figure_ladder(table, title: str) -> Figure:
    """Test accuracy per step: bars with the change written on them, error bars, the source's number beside."""
    import numpy as np
    from matplotlib.patches import Patch

    fig = _figure(max(8.0, 1.6 * len(table) + 2), 5.6)
    ax = fig.subplots()
    x, width = np.arange(len(table)), 0.38
    mean = 100 * table["mean_test_accuracy"].to_numpy(float)
    several = bool((table["seeds"] > 1).any())
    errors = np.nan_to_num(100 * table["std_test_accuracy"].to_numpy(float)) if several else None
    colors = ["C1" if b else "C0" for b in table["baseline"]]
    ax.bar(x - width / 2, mean, width, yerr=errors, capsize=5, color=colors,
           hatch=["xx" if b else "" for b in table["baseline"]], edgecolor="black", linewidth=0.6)
    reported = 100 * table["reported_test_accuracy"].astype(float).to_numpy()
    has_source = ~np.isnan(reported)
    ax.bar(x[has_source] + width / 2, reported[has_source], width, color="0.85", edgecolor="0.35", hatch="//",
           linewidth=0.6)
    for i, row in table.iterrows():
        top = mean[i] + (errors[i] if several else 0)
        change = "" if math.isnan(row["change"]) else f"\n{100 * row['change']:+.1f} pp"
        ax.text(x[i] - width / 2, top + 1, f"{mean[i]:.1f}%{change}", ha="center", va="bottom", fontsize=9,
                fontweight="bold")
        if has_source[i]:
            ax.text(x[i] + width / 2, reported[i] + 1, f"{reported[i]:.1f}%", ha="center", va="bottom",
                    fontsize=8, color="0.3")
    ax.set_xticks(x, table["step"], rotation=15, ha="right")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 10))
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    profile = table["profile"].iloc[0]
    seeds = f", mean ± std over up to {int(table['seeds'].max())} seeds" if several else ", one seed"
    handles = [Patch(facecolor="C0", edgecolor="black", label=f"ladder step (this project: {profile} profile{seeds})")]
    if table["baseline"].any():
        handles.append(Patch(facecolor="C1", edgecolor="black", hatch="xx", label="baseline (change vs the last step)"))
    if has_source.any():
        handles.append(Patch(facecolor="0.85", edgecolor="0.35", hatch="//", label="the source's reported accuracy"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if len(table) >= 4 else 1, fontsize=9)
    ax.set_title(f"{title}\ntest accuracy per step, with the change from the step before")
    return Figure("ladder.png", _png(fig), "Test accuracy per ladder step; the label is the change from the step "
                  "before (a baseline: from the ladder's last step); grey bars: the source's reported accuracy.")


def figure_curves(steps, history_of) -> Figure:
    """Validation accuracy and loss per epoch, every step on shared axes, LR drops and early stops marked."""
    fig = _figure(12, 5.2)
    ax_accuracy, ax_loss = fig.subplots(1, 2, sharex=True)
    colors = [f"C{i % 10}" for i in range(len(steps))]
    _plot_curves(ax_accuracy, ax_loss, steps, history_of, colors)
    handles, _ = ax_accuracy.get_legend_handles_labels()
    fig.legend(handles=handles + _marker_legend(), loc="outside lower center", ncols=min(4, len(handles) + 2),
               fontsize=9)
    fig.suptitle("Training curves of every step (validation split)")
    return Figure("curves.png", _png(fig), "Validation accuracy and loss per epoch for every step; ▼ where the "
                  "learning rate was lowered, ✖ where early stopping ended training before its epoch budget.")


def figure_baselines(compared, history_of) -> Figure:
    """The final step against the baselines: four numbers side by side and their validation curves."""
    import numpy as np
    from matplotlib.ticker import EngFormatter

    fig = _figure(13, 8)
    grid = fig.add_gridspec(2, 4, height_ratios=(1, 1.15))
    colors = [f"C{i}" for i in range(len(compared))]
    names = [f"{r['step']}\n({r['model']})" for _, r in compared.iterrows()]
    panels = (("test_accuracy", "test accuracy (%)", 100.0, lambda v: f"{v:.1f}%"),
              ("num_params", "parameters", 1.0, _eng),
              ("flops", "forward FLOPs per image", 1.0, _eng),
              ("seconds_per_epoch", "seconds per epoch (s)", 1.0, lambda v: f"{v:.1f} s"))
    for column, (key, label, scale, text) in enumerate(panels):
        ax = fig.add_subplot(grid[0, column])
        values = scale * compared[key].to_numpy(float)
        ax.bar(np.arange(len(values)), values, color=colors, edgecolor="black", linewidth=0.6)
        for i, value in enumerate(values):
            ax.text(i, value, text(value), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(np.arange(len(values)), names, fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0, max(values.max(), 1e-9) * 1.18)
        if key in ("num_params", "flops"):
            ax.yaxis.set_major_formatter(EngFormatter())
        ax.set_title(label.split(" (")[0])
        ax.grid(axis="y", alpha=0.3)
    ax_accuracy, ax_loss = fig.add_subplot(grid[1, :2]), fig.add_subplot(grid[1, 2:])
    _plot_curves(ax_accuracy, ax_loss, compared, history_of, colors)
    handles, _ = ax_accuracy.get_legend_handles_labels()
    ax_accuracy.legend(handles=handles + _marker_legend(), fontsize=9)
    fig.suptitle("Baselines vs the ladder's final step: accuracy, size, cost and validation curves")
    return Figure("baselines.png", _png(fig), "The ladder's final step against the baseline(s): test accuracy, "
                  "parameters, forward FLOPs per image, seconds per epoch, and validation curves overlaid.")


def figure_confusion(labels, predictions, class_names, run_label: str) -> Figure:
    """Counts of (true, predicted) class on the test set, numbers in the cells."""
    import numpy as np

    n = len(class_names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    fig = _figure(8, 7)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="test images", shrink=0.8)
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"Confusion matrix of the best run: {run_label}\n"
                 f"test accuracy {100 * accuracy:.1f}% on {matrix.sum()} test images")
    return Figure("confusion.png", _png(fig), f"Confusion matrix of the best run ({run_label}) on its test images: "
                  "rows are the true classes, columns the predicted ones.")


# ---------------------------------------------------------------------------------------------
# The search: its latest Optuna study as MLflow recorded it; the study itself for importances.


@dataclass
class Search:
    """The trials of the latest search's Optuna study, one row per trial number."""

    name: str  # the Optuna study
    parent: "object"  # the latest search parent run (a pandas Series)
    trials: "object"  # DataFrame: number, state, value, test_accuracy, epochs_run, epochs, run_id, run_name, params
    params: list[str]
    log_params: set[str]
    monitor: str
    direction: str


def latest_search(runs, study: StudyInfo) -> Search | None:
    """The Optuna study of the latest search parent run, with every trial any invocation recorded for it."""
    import json

    import pandas as pd

    if "kind" not in runs.columns or not runs["kind"].eq("search").any():
        return None
    parent = runs[runs["kind"].eq("search")].sort_values("start_time").iloc[-1]
    space = study.search
    monitor, direction = (space.monitor, space.direction) if space else ("val_accuracy", "maximize")
    # A run still RUNNING has no state yet; the newest run of a trial number is the one that counts.
    states = runs["trial_state"] if "trial_state" in runs.columns else pd.Series("", index=runs.index)
    trials = runs[runs["kind"].eq("search_trial") & runs["optuna_study"].eq(parent["optuna_study"])
                  & states.isin(["complete", "pruned", "failed"])]
    trials = trials.sort_values("start_time").drop_duplicates("optuna_trial", keep="last").sort_values("optuna_trial")
    rows, params = [], []
    for _, run in trials.iterrows():
        searched = json.loads(run["search_params"]) if isinstance(run.get("search_params"), str) else {}
        params += [p for p in searched if p not in params]
        value = run.get(f"best_{monitor}") if run["trial_state"] == "complete" else run.get(monitor)
        rows.append({"number": int(run["optuna_trial"]), "state": run["trial_state"], "value": value,
                     "test_accuracy": run.get("test_accuracy"), "epochs_run": run.get("epochs_run"),
                     "epochs": run.get("epochs"), "run_id": run["run_id"], "run_name": run["run_name"], **searched})
    log_params = {p.name for p in space.params if p.log} if space else set()
    order = [p.name for p in space.params] if space else []  # the study file's order, not the tag's sorted JSON
    params.sort(key=lambda p: order.index(p) if p in order else len(order))
    columns = ["number", "state", "value", "test_accuracy", "epochs_run", "epochs", "run_id", "run_name", *params]
    frame = pd.DataFrame(rows, columns=columns)
    return Search(parent["optuna_study"], parent, frame, params, log_params, monitor, direction)


def importances(search: Search) -> tuple[dict | None, str]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA) of the study; (None, why) if not."""
    import optuna

    from ablation.tracking import open_storage

    location = search.parent.get("optuna_storage", "")
    if search.parent.get("optuna_storage_kind") == "journal" and not Path(location).is_file():
        return None, f"parameter importances need the Optuna study; its journal {location} is not on this machine"
    try:
        storage, _, _ = open_storage(location)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=search.name, storage=storage)
        return optuna.importance.get_param_importances(study), ""
    # Storage errors come from SQLAlchemy or the journal and too few trials from the evaluator: the
    # importances are one figure of many, so their failure is a note in the report, not a crash.
    except Exception as error:  # noqa: BLE001
        return None, f"parameter importances skipped ({type(error).__name__}: {error})"


def show_trials(search: Search, top: int = 10):
    """The best trials: complete ones by value, then pruned, then failed."""
    import pandas as pd

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
            "test accuracy": _pct(trial["test_accuracy"]),
            "epochs": f"{_int(trial['epochs_run'])}/{_int(trial['epochs'])}",
            **{p: _short(trial.get(p)) for p in search.params},
        })
    return pd.DataFrame(rows)


def _int(value) -> str:
    return "-" if _isna(value) else str(int(value))


def _short(value) -> str:
    if _isna(value):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


PARAM_UNITS = {"dropout_rate": "fraction of units dropped", "learning_rate": "initial, Adam",
               "rotation_range": "degrees", "zoom_range": "fraction", "batch_size": "images"}


def _search_axes_values(search: Search, trials):
    scale = 100 if "accuracy" in search.monitor else 1
    return scale * trials["value"].astype(float), f"{search.monitor}" + (" (%)" if scale == 100 else "")


def figure_search_history(search: Search) -> Figure:
    """Objective value per trial, pruned trials at their value when pruned, and the best so far."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 5)
    ax = fig.subplots()
    trials = search.trials
    complete, pruned, failed = (trials[trials["state"].eq(s)] for s in ("complete", "pruned", "failed"))
    values, ylabel = _search_axes_values(search, complete)
    ax.plot(complete["number"], values, "o", color="C0", label="complete trial (best epoch)")
    if len(pruned):
        ax.plot(pruned["number"], _search_axes_values(search, pruned)[0], "x", color="0.45", markersize=9,
                markeredgewidth=2, label="pruned trial (value when pruned)")
    if len(complete):
        best = values.cummax() if search.direction == "maximize" else values.cummin()
        ax.step(complete["number"], best, where="post", color="C3", label="best so far")
    if len(failed):
        ax.plot(failed["number"], [0.02] * len(failed), "s", color="C3", markerfacecolor="none",
                transform=ax.get_xaxis_transform(), label="failed trial (no value)")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"best-epoch {ylabel}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Optuna study {search.name}: optimization history\n"
                 f"{len(complete)} complete, {len(pruned)} pruned, {len(failed)} failed")
    return Figure("search_history.png", _png(fig), "The search's objective per trial: complete trials at their "
                  "best epoch, pruned ones (×) at the value they had when pruned, and the best value so far.")


def figure_importances(search: Search, values: dict) -> Figure:
    """Horizontal bars: how much each searched parameter explains the objective."""
    fig = _figure(8, 1.2 + 0.6 * len(values))
    ax = fig.subplots()
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in ordered], [v for _, v in ordered], color="C0", edgecolor="black", linewidth=0.6)
    for i, (_, value) in enumerate(ordered):
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=9)
    ax.set_xlabel("importance (normalized: the parameters' importances sum to 1)")
    ax.set_xlim(0, max([v for _, v in ordered] + [0.01]) * 1.2)
    ax.set_title(f"Optuna study {search.name}: parameter importances\n(Optuna's PED-ANOVA over the complete trials)")
    return Figure("search_importances.png", _png(fig), "How much each searched parameter matters to the "
                  "objective, by Optuna's default importance evaluator over the complete trials.")


def figure_search_params(search: Search) -> Figure:
    """The objective against each searched parameter; pruned trials drawn as such."""
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(search.params))
    rows = math.ceil(len(search.params) / columns)
    fig = _figure(4.2 * columns, 3.6 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    trials = search.trials
    complete, pruned = trials[trials["state"].eq("complete")], trials[trials["state"].eq("pruned")]
    _, ylabel = _search_axes_values(search, complete)
    for ax, name in zip(axes, search.params):
        ax.plot(complete[name], _search_axes_values(search, complete)[0], "o", color="C0", label="complete trial")
        if len(pruned):
            ax.plot(pruned[name], _search_axes_values(search, pruned)[0], "x", color="0.45", markersize=9,
                    markeredgewidth=2, label="pruned trial (value when pruned)")
        if name in search.log_params:
            ax.set_xscale("log")
        values = trials[name].dropna()
        if len(values) and all(float(v).is_integer() for v in values):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        unit = PARAM_UNITS.get(name, "blocks" if name.endswith("_blocks") else "")
        unit = "log scale" if name in search.log_params else unit
        ax.set_xlabel(name + (f" ({unit})" if unit else ""))
        ax.set_ylabel(f"best-epoch {ylabel}")
        ax.grid(alpha=0.3)
    for ax in axes[len(search.params):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle(f"Optuna study {search.name}: {search.monitor} against each searched parameter")
    return Figure("search_params.png", _png(fig), f"Best-epoch {search.monitor} against each searched parameter; "
                  "pruned trials (×) at the value they had when pruned.")


# ---------------------------------------------------------------------------------------------
# The confusion matrix of the best run: predictions from its artifact, labels logged or re-derived.


def test_labels(run, payload: dict, data) -> tuple["object | None", str]:
    """The run's true test labels: logged beside its predictions, else re-drawn from the data it recorded."""
    import numpy as np

    if "labels" in payload:
        return np.asarray(payload["labels"]), ""
    from ablation.data import DataError, load_cifar10, make_splits, resolve_data_path

    path = resolve_data_path(data)
    if path is None:
        return None, ("the run did not log its test labels and no data was given: pass --data PATH "
                      "(or set ABLATION_DATA) to draw the confusion matrix")
    whole = lambda value: None if _isna(value) else int(value)  # noqa: E731
    try:
        splits = make_splits(load_cifar10(path), validation_split=float(run["validation_split"]),
                             seed=int(run["seed"]), train_subset=whole(run["train_subset"]),
                             test_subset=whole(run["test_subset"]))
    except DataError as error:
        return None, f"no confusion matrix: {error}"
    recorded = run.get("data.digest")
    if splits.fingerprint["digest"] != recorded:
        return None, (f"no confusion matrix: the data at {path} is not the data run {run['run_name']} used "
                      f"(digest {splits.fingerprint['digest']}, the run recorded {recorded})")
    return splits.y_test, ""


def confusion_section(candidates, data) -> Section:
    """The best run (highest test accuracy) that logged its test predictions, as a confusion matrix."""
    from ablation import tracking

    section = Section("Confusion matrix of the best run")
    for _, run in candidates.sort_values("test_accuracy", ascending=False, na_position="last").iterrows():
        payload = tracking.load_json_artifact(run["run_id"], "test_predictions.json")
        if payload is not None:
            break
    else:
        section.notes.append("no run of this report logged test_predictions.json; nothing to draw")
        return section
    labels, note = test_labels(run, payload, data)
    if labels is not None and len(labels) != len(payload["predictions"]):
        labels, note = None, (f"no confusion matrix: {len(labels)} test labels for {len(payload['predictions'])} "
                              f"predictions of run {run['run_name']}")
    if labels is None:
        section.notes.append(note)
        return section
    label = run["step"] if isinstance(run.get("step"), str) else run["run_name"]
    section.text = (f"The run with the highest test accuracy among the report's runs: {label} "
                    f"(run {run['run_id']}).")
    section.figures.append(figure_confusion(labels, payload["predictions"], payload["class_names"], label))
    return section


# ---------------------------------------------------------------------------------------------
# The report: sections from the runs, then HTML, Markdown and CSV.


@dataclass
class Report:
    title: str
    meta: list[tuple[str, str]]
    sections: list[Section]
    runs: "object"  # the tidy DataFrame, one row per run
    log_run_id: str | None


def build(study: StudyInfo, experiment: str, runs, config_columns, data, log: bool = True) -> Report:
    """Everything the report shows, from the experiment's runs."""
    from ablation import tracking

    parent, steps = latest_ladder(runs)
    search = latest_search(runs, study)
    if parent is None and (search is None or search.trials.empty):
        raise ReportError(f"experiment {experiment!r} in {tracking.tracking_uri()} has no finished ladder steps "
                          f"or search trials; {how_to_make_runs(study)}")
    parents = runs[runs["kind"].isin(["ladder", "search"])].sort_values("start_time")
    log_run_id = parents["run_id"].iloc[-1] if len(parents) else None
    meta = [("study", f"{study.name}" + (f" ({study.path})" if study.path else "")),
            ("experiment", f"{experiment} in {tracking.tracking_uri()}")]
    sections = []
    if parent is not None:
        meta += [("ladder run", f"{parent['run_name']} ({parent['run_id']}, {parent['status'].lower()}, "
                                f"started {parent['start_time']:%Y-%m-%d %H:%M} UTC)"),
                 ("profile", str(parent["profile"]))]
        sections += ladder_sections(runs, parent, steps, config_columns, study.title)
    else:
        sections.append(Section("Ladder", notes=[f"no ladder runs yet; {how_to_make_runs(study)}"]))
    if search is not None:
        meta.append(("search", f"Optuna study {search.name} ({search.parent.get('optuna_storage', '')}), "
                               f"{len(search.trials)} finished trials"))
        sections.append(search_section(search))
    # The best run on the test set: among the ladder's steps and the search's trials.
    reported = list(steps["run_id"]) if steps is not None else []
    if search is not None:
        reported += list(search.trials["run_id"])
    sections.append(confusion_section(runs[runs["run_id"].isin(reported)], data))
    if log and log_run_id is not None:
        meta.append(("report logged to", f"run {log_run_id} (the study's latest parent run), artifacts under report/"))
    meta.append(("generated", time.strftime("%Y-%m-%d %H:%M %Z")))
    return Report(study.title, meta, sections, runs, log_run_id)


def ladder_sections(runs, parent, steps, config_columns, title: str) -> list[Section]:
    """The ladder table and bars, the training curves, the architectures and the baselines."""
    import pandas as pd

    groups = replicas(runs, parent, steps, config_columns)
    table = ladder_table(steps, groups)
    several = int(table["seeds"].max())
    ladder = Section("Ladder", table=show_ladder(table), figures=[figure_ladder(table, title)])
    ladder.text = ("Each step keeps everything before it. Test accuracy of the latest ladder run"
                   + (f"; with several seeds, mean ± std over up to {several} runs of the same step and config "
                      "(other seeds) under ladders of the same profile" if several > 1 else "")
                   + ". Change: from the step before, in percentage points; a baseline's, from the last step. "
                     "Epochs: run / configured (fewer when early stopping fired). Time: training wall time "
                     "(reused: the run was copied from an earlier one with the same config and data).")
    history_of = histories(steps["run_id"])
    curves = Section("Training curves", figures=[figure_curves(steps, history_of)])
    architectures = Section("Architectures: baselines vs the final step", table=architecture_table(steps))
    final = steps[~steps["baseline"]].tail(1)
    baselines = steps[steps["baseline"]]
    if baselines.empty:
        architectures.notes.append("this ladder ran no baseline ([[baselines]] in the study file): "
                                   "nothing to compare the final step with")
    else:
        architectures.figures.append(figure_baselines(pd.concat([final, baselines]), history_of))
    return [ladder, curves, architectures]


def search_section(search: Search) -> Section:
    """The best trials, the optimization history, the importances and the objective against each parameter."""
    section = Section("Search", table=show_trials(search))
    counts = search.trials["state"].value_counts()
    section.text = (f"Optuna study {search.name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} "
                    f"pruned and {counts.get('failed', 0)} failed trials; the objective is the best epoch's "
                    f"{search.monitor} on the validation split ({search.direction}).")
    complete = search.trials[search.trials["state"].eq("complete")]
    if complete.empty:
        section.notes.append("no complete trial yet: the plots wait for one (python -m ablation.search adds trials)")
        return section
    section.figures.append(figure_search_history(search))
    values, note = importances(search)
    if values:
        section.figures.append(figure_importances(search, values))
    else:
        section.notes.append(note or "parameter importances: none (too few complete trials)")
    if search.params:
        section.figures.append(figure_search_params(search))
    return section


# ---------------------------------------------------------------------------------------------
# Rendering.

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; line-height: 1.45; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; font-size: .9em; color: #444; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; }
p.check { color: #666; font-size: .85em; border-top: 1px solid #ddd; padding-top: .5em; margin-top: 3em; }
"""

# Runs on load in the browser: counts the figures that decoded; the Chromium test reads the result.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  var check = document.getElementById("image-check");
  check.textContent = "Figures loaded: " + loaded.length + " of " + images.length + ".";
  check.setAttribute("data-loaded", String(loaded.length));
  check.setAttribute("data-total", String(images.length));
});
"""

NUMBER = re.compile(r"^[+\-−]?\d[\d.,/]*(%|\s?(pp|s|k|M|G)\b)?(\s.*)?$")  # right-aligned table cells


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, figures as data: URIs, no external reference."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(report.title)}: report</title><style>{CSS}</style></head><body>",
             f"<h1>{e(report.title)}</h1>", '<dl class="meta">']
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in report.meta]
    parts.append("</dl>")
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{e(section.text)}</p>")
        parts += [f'<p class="note">{e(note)}</p>' for note in section.notes]
        if section.table is not None and len(section.table):
            parts.append(_html_table(section.table))
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(figure.caption)}" '
                         f'data-name="{e(figure.name)}"><figcaption>{e(figure.caption)}</figcaption></figure>')
    parts.append('<h2>Runs</h2>' f'<p>runs.csv beside this report holds the experiment\'s {len(report.runs)} runs, '
                 f'one row each, the columns named as the config and the metrics.</p>')
    parts.append('<p class="check" id="image-check">Figures: not checked (scripts are off).</p>')
    parts.append(f"<script>{IMAGE_CHECK}</script></body></html>")
    return "\n".join(parts)


def _html_table(table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in table.columns)
    rows = []
    for values in table.itertuples(index=False):
        cells = "".join(f'<td class="num">{e(str(v))}</td>' if NUMBER.match(str(v)) else f"<td>{e(str(v))}</td>"
                        for v in values)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_markdown(report: Report) -> str:
    """The same tables; the figures as PNG files beside it."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.meta]
    for section in report.sections:
        lines += ["", f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        lines += [f"> **Note:** {note}\n" for note in section.notes]
        if section.table is not None and len(section.table):
            lines += [_markdown_table(section.table), ""]
        for figure in section.figures:
            lines += [f"![{figure.caption}]({figure.name})", "", f"*{figure.caption}*", ""]
    lines += ["", "## Runs", "", f"[runs.csv](runs.csv): the experiment's {len(report.runs)} runs, one row each.", ""]
    return "\n".join(lines)


def _markdown_table(table) -> str:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in table.itertuples(index=False)]
    return "\n".join(lines)


def runs_csv(runs):
    """One row per run: who it is, then the config in its own order, the metrics, the tags."""
    from ablation.config import CONFIG_FIELDS

    first = [c for c in ("run_id", "run_name", "parent_run_id", "kind", "step", "status", "start_time", "end_time")
             if c in runs.columns]
    config = [c for c in CONFIG_FIELDS if c in runs.columns]
    rest = sorted(c for c in runs.columns if c not in first and c not in config
                  and c not in ("experiment_id", "artifact_uri"))
    return runs.sort_values("start_time")[first + config + rest]


# ---------------------------------------------------------------------------------------------
# Entry points.


def write_report(study_name_or_path=DEFAULT_STUDY, *, experiment=None, out=None, log=True, data=None) -> Path:
    """Write report.html, report.md (+ PNGs) and runs.csv; log them to the latest parent run. Returns report.html.

    `study_name_or_path`: a study file, or a name (studies/NAME.toml, else an experiment name);
    `experiment`: the MLflow experiment (default: the study's name); `out`: the folder (default
    reports/<study>/); `data`: CIFAR-10 for re-deriving test labels (default $ABLATION_DATA).
    Raises ReportError when there is nothing to report, saying how to make runs.
    """
    import os

    from ablation import tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact read is noise
    study = resolve_study(study_name_or_path)
    experiment = experiment or study.name
    runs, config_columns = read_runs(experiment, study)
    report = build(study, experiment, runs, config_columns, data, log)
    folder = Path(out) if out is not None else Path("reports") / study.name
    folder.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # a figure absent this time (no search yet) must not linger from an earlier report
        (folder / name).unlink(missing_ok=True)
    for section in report.sections:
        for figure in section.figures:
            (folder / figure.name).write_bytes(figure.png)
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    runs_csv(runs).to_csv(folder / "runs.csv", index=False)
    if log and report.log_run_id is not None:
        tracking.log_report(folder, report.log_run_id)
    return folder / "report.html"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ablation.report",
        description="Write a comparison report (HTML, Markdown with PNGs, CSV) of a study's ladder and search "
                    "runs from MLflow; it never trains.",
    )
    parser.add_argument("--study", default=DEFAULT_STUDY,
                        help=f"study file, or a name for studies/NAME.toml (default: {DEFAULT_STUDY})")
    parser.add_argument("--experiment", default=None, help="MLflow experiment to read (default: the study's name)")
    parser.add_argument("--out", default=None, help="output folder (default: reports/<study>/)")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10 as given to the ladder, to re-derive test labels for the confusion matrix "
                             "(default: $ABLATION_DATA; without it that figure is skipped with a note)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the latest parent run")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        path = write_report(args.study, experiment=args.experiment, out=args.out, log=not args.no_log,
                            data=args.data)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}  (and report.md, runs.csv, the figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
