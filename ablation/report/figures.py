"""The report's charts, rendered to PNG bytes with a caption.

The ladder's charts draw on matplotlib's Figure objects (the Agg canvas: no pyplot state, no
display); the search's are in `search_figures`, the BatchNormalization check's in `bn_chart`.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter
from matplotlib.transforms import offset_copy

from ablation.analysis import stats
from ablation.report.found import col, isna
from ablation.report.tables import eng
from ablation.tracking import Tag

DPI = 110
# The PNGs this module writes (a report folder's old ones are replaced).
NAMES = ("ladder.png", "curves.png", "overfitting.png", "batchnorm.png", "baselines.png", "search_history.png",
         "search_importances.png", "search_params.png", "confusion.png")
# One look per step, so that curves with the same early epochs stay apart: line style, marker, a shift.
LINES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 2)))
MARKERS = ("o", "s", "^", "D", "P", "h", "*", "<", ">", "p")
SHIFT = 0.07  # epochs between neighbouring steps' curves
SHORT_VERDICTS = {stats.HELPED: "helped", stats.HURT: "hurt", stats.UNDECIDED: "undecided",
                  stats.EQUIVALENT: "equivalent", stats.ONE_SEED: "1 seed: no verdict"}


@dataclass
class Chart:
    """A rendered chart: its file name, PNG bytes and a one-line caption."""

    name: str
    png: bytes
    caption: str


def _figure(width: float, height: float, left=0.75, right=0.2, top=0.75, bottom=0.6, wspace=0.25,
            hspace=0.3) -> Figure:
    """A figure with fixed margins in inches: no layout engine, which would double the time to render."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=wspace, hspace=hspace)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _color(i: int) -> str:
    return f"C{i % 10}"


# ---------------------------------------------------------------------------------------------
# The ladder: test accuracy per step over seeds.


def ladder_chart(summary: pd.DataFrame, changes: pd.DataFrame, title: str) -> Chart:
    """Mean test accuracy per step over its seeds with the 95% interval, the change, the source's number beside."""
    fig = _figure(max(8.0, 1.6 * len(summary) + 2), 6.0, top=0.85, bottom=1.25)
    ax = fig.subplots()
    x, width = np.arange(len(summary)), 0.38
    mean = 100 * summary["test_accuracy_mean"].to_numpy(float)
    below = np.nan_to_num(mean - 100 * summary["test_accuracy_low"].to_numpy(float))
    above = np.nan_to_num(100 * summary["test_accuracy_high"].to_numpy(float) - mean)
    baseline = summary["baseline"].to_numpy(bool)
    ax.bar(x - width / 2, mean, width, yerr=[below, above], capsize=5, color=["C1" if b else "C0" for b in baseline],
           hatch=["xx" if b else "" for b in baseline], edgecolor="black", linewidth=0.6)
    reported = 100 * summary["reported_test_accuracy"].astype(float).to_numpy()
    has_source = ~np.isnan(reported)
    ax.bar(x[has_source] + width / 2, reported[has_source], width, color="0.85", edgecolor="0.35", hatch="//",
           linewidth=0.6)
    change_of = {row["step"]: row for _, row in changes.iterrows()}
    boxed = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5}
    for i, row in summary.reset_index(drop=True).iterrows():
        if has_source[i]:  # inside the grey bar's top, out of the way of the step's own label
            ax.text(x[i] + width / 2, reported[i] - 1.5, f"{reported[i]:.1f}%", ha="center", va="top", fontsize=8,
                    color="0.2", bbox=boxed)
        ax.text(x[i] - width / 2, mean[i] + above[i] + 1, f"{mean[i]:.1f}%{_change_label(change_of.get(row['step']))}",
                ha="center", va="bottom", fontsize=8, fontweight="bold", bbox=boxed, zorder=5)
        ax.text(x[i] - width / 2, 2, f"n={row['n']}", ha="center", va="bottom", fontsize=8, bbox=boxed)
    _ladder_axes(ax, summary, title)
    fig.legend(handles=_ladder_legend(summary, has_source.any()), loc="lower center",
               ncols=3 if len(summary) >= 4 else 1, fontsize=9)
    return Chart("ladder.png", _png(fig), "Mean test accuracy per ladder step over its n training seeds (n on each "
                 "bar), error bars the 95% interval of the mean; above each bar the mean paired change from the step "
                 "before (a baseline: from the step it is compared with) and its verdict; grey bars: the source's "
                 "reported accuracy.")


def _change_label(change) -> str:
    """'\\n+1.2 pp (n=3)\\nhelped' under a bar's value; '' for the first step."""
    if change is None or isna(change["mean"]):
        return ""
    return f"\n{100 * change['mean']:+.1f} pp (n={change['n']})\n{SHORT_VERDICTS.get(change['verdict'], '')}"


def _ladder_axes(ax, summary: pd.DataFrame, title: str):
    ax.set_xticks(np.arange(len(summary)), summary["step"], rotation=15, ha="right")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 10))
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ns = sorted(set(summary["n"]))
    seeds = f"n = {ns[0]} seed{'s' if ns[0] > 1 else ''}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds"
    ax.set_title(f"{title}\ntest accuracy per step, mean over {seeds} with its 95% interval;\n"
                 "over each bar: the paired change from the step before", fontsize=10)


def _ladder_legend(summary: pd.DataFrame, has_source: bool) -> list:
    profile = summary["profile"].iloc[0]
    several = bool((summary["n"] > 1).any())
    handles = [Patch(facecolor="C0", edgecolor="black", label=f"ladder step ({profile} profile): mean over its seeds"
                     + (", 95% interval" if several else "; one seed, no interval"))]
    if summary["baseline"].any():
        handles.append(Patch(facecolor="C1", edgecolor="black", hatch="xx", label="baseline"))
    if has_source:
        handles.append(Patch(facecolor="0.85", edgecolor="0.35", hatch="//", label="the source's reported accuracy"))
    return handles


# ---------------------------------------------------------------------------------------------
# Curves per epoch (one training seed).


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


def stopped_early(run: pd.Series) -> bool:
    """Whether early stopping ended the run before its epoch budget."""
    tag = run.get(col(Tag.STOPPED_EARLY))
    if isinstance(tag, str):
        return tag == "True"
    return not isna(run.get("epochs_run")) and int(run["epochs_run"]) < int(run["epochs"])


def events(run: pd.Series, history: pd.DataFrame) -> tuple[list[int], bool]:
    """The epochs where the learning rate was lowered, and whether early stopping fired."""
    rates = history["learning_rate"] if "learning_rate" in history else pd.Series(dtype=float)
    initial = run.get("learning_rate")
    return lr_drops(rates, None if isna(initial) else float(initial)), stopped_early(run)


def _mark_events(ax, run, history, x, values, color) -> tuple[bool, bool]:
    """▼ where the learning rate was lowered, ✖ where early stopping fired, on one curve; which were drawn."""
    drops, stopped = events(run, history)
    drops = [e for e in drops if e in values.index]
    for epoch in drops:
        ax.plot(x[values.index.get_loc(epoch)], values[epoch], "v", color=color, markeredgecolor="black",
                markersize=10, zorder=4)
    if stopped and len(values):
        # Drawn a little above the last epoch's point, so that a learning-rate mark there stays visible.
        above = offset_copy(ax.transData, fig=ax.figure, y=11, units="points")
        ax.plot(x[-1], values.iloc[-1], "X", color=color, markeredgecolor="black", markersize=10, zorder=4,
                transform=above)
    return bool(drops), bool(stopped and len(values))


def event_legend(lowered: bool, stopped: bool) -> list:
    """Legend entries for the marks that appear in the plotted runs, and only those."""
    handles = []
    if lowered:
        handles.append(Line2D([], [], marker="v", linestyle="", color="0.7", markeredgecolor="black", markersize=9,
                              label="LR lowered"))
    if stopped:
        handles.append(Line2D([], [], marker="X", linestyle="", color="0.7", markeredgecolor="black", markersize=9,
                              label="early stopping"))
    return handles


def plot_curves(axes, runs: pd.DataFrame, history_of: dict, keys=("val_accuracy", "val_loss")) -> tuple[bool, bool]:
    """Per run, one curve per key on its axis, each run in its own colour, line style and marker and shifted a
    little along the epochs, so that runs with identical epochs stay visible; which events were marked."""
    lowered = stopped = False
    count = len(runs)
    for i, (_, run) in enumerate(runs.iterrows()):
        history = history_of.get(run["run_id"])
        if history is None or any(key not in history for key in keys):
            continue
        shift = (i - (count - 1) / 2) * SHIFT
        for ax, key in zip(axes, keys, strict=True):
            values = history[key].dropna() * (100 if "accuracy" in key else 1)
            x = values.index.to_numpy(float) + shift
            ax.plot(x, values, linestyle=LINES[i % len(LINES)], marker=MARKERS[i % len(MARKERS)], markersize=4,
                    color=_color(i), label=run["step"], linewidth=1.4)
            drew = _mark_events(ax, run, history, x, values, _color(i))
            lowered, stopped = lowered or drew[0], stopped or drew[1]
    for ax, key in zip(axes, keys, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(_metric_label(key))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(y=0.12)  # room for the early-stopping marks drawn above the last point
        ax.grid(alpha=0.3)
    return lowered, stopped


def _metric_label(key: str) -> str:
    split = "validation" if key.startswith("val_") else "training"
    kind = "accuracy (%)" if key.endswith("accuracy") else "loss (cross-entropy)"
    return f"{split} {kind}"


def curves_chart(steps: pd.DataFrame, history_of: dict, seed) -> Chart:
    """Validation accuracy and loss per epoch, every step on shared axes, LR drops and early stops marked."""
    fig = _figure(12, 5.6, top=0.8, bottom=1.35, wspace=0.2)
    ax_accuracy, ax_loss = fig.subplots(1, 2, sharex=True)
    lowered, stopped = plot_curves((ax_accuracy, ax_loss), steps, history_of)
    ax_accuracy.set_title("validation accuracy")
    ax_loss.set_title("validation loss")
    handles, _ = ax_accuracy.get_legend_handles_labels()
    handles += event_legend(lowered, stopped)
    fig.legend(handles=handles, loc="lower center", ncols=min(4, len(handles)), fontsize=9)
    fig.suptitle(f"Training curves of every step (validation split; training seed {seed})")
    marks = [m for m, shown in (("▼ where the learning rate was lowered", lowered),
                                ("✖ where early stopping ended training before its epoch budget", stopped)) if shown]
    return Chart("curves.png", _png(fig), f"Validation accuracy and loss per epoch for every step (training seed "
                 f"{seed}); each step has its own line style and marker and is shifted by a few hundredths of an "
                 "epoch, so that steps with identical early epochs stay visible" + ("; " + ", ".join(marks) if marks
                                                                                    else "") + ".")


def step_panels(count: int):
    """A figure with one small panel per step (three a row, one shared percent axis), and its axes."""
    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig = _figure(4.3 * columns, 3.1 * rows + 1.3, top=0.75, bottom=1.1, wspace=0.08, hspace=0.45)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes


def style_panel(ax, title: str):
    """A step's panel: its title, whole epochs along, percents up, a light grid."""
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(alpha=0.3)
    ax.set_xlabel("epoch")


def overfitting_chart(steps: pd.DataFrame, history_of: dict, seed) -> Chart:
    """Per step, training against validation accuracy per epoch: the gap between them is overfitting."""
    fig, axes = step_panels(len(steps))
    for i, (ax, (_, run)) in enumerate(zip(axes, steps.iterrows(), strict=False)):
        history = history_of.get(run["run_id"], pd.DataFrame())
        if {"accuracy", "val_accuracy"} <= set(history.columns):
            train, val = 100 * history["accuracy"], 100 * history["val_accuracy"]
            ax.plot(train.index, train, "-", color=_color(i), linewidth=1.6, label="training (augmented, dropout on)")
            ax.plot(val.index, val, "--", color=_color(i), marker="o", markersize=3, label="validation")
            ax.fill_between(train.index, train, val, where=train > val, color=_color(i), alpha=0.15,
                            label="training above validation")
        style_panel(ax, run["step"])
    axes[0].set_ylabel("accuracy")
    fig.legend(handles=_overfitting_legend(), loc="lower center", ncols=3, fontsize=9)
    fig.suptitle(f"Training vs validation accuracy per step (training seed {seed})")
    return Chart("overfitting.png", _png(fig), "Training accuracy (solid; the epoch's running mean on augmented "
                 "images with dropout on) against validation accuracy (dashed; at the epoch's end) for every step; "
                 "the shaded gap is where training outruns validation, the mark of overfitting.")


def _overfitting_legend() -> list:
    return [Line2D([], [], color="0.3", linestyle="-", label="training accuracy"),
            Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=3, label="validation accuracy"),
            Patch(facecolor="0.3", alpha=0.15, label="training above validation")]


# ---------------------------------------------------------------------------------------------
# Baselines against the ladder's final step.


def baselines_chart(compared: pd.DataFrame, steps: pd.DataFrame, history_of: dict, seed) -> Chart:
    """The final step against the baselines: four numbers side by side and their validation curves."""
    fig = _figure(13, 8.6, left=0.8, top=0.8, bottom=0.6, wspace=0.45, hspace=0.45)
    grid = fig.add_gridspec(2, 4, height_ratios=(1, 1.15))
    names = [f"{r['step']}\n({r['model']}, n={r['n']})" for _, r in compared.iterrows()]
    panels = (("test_accuracy_mean", "test accuracy (%)", 100.0, lambda v: f"{v:.1f}%"),
              ("num_params", "parameters", 1.0, eng),
              ("flops", "forward FLOPs per image", 1.0, eng),
              ("cpu_seconds_per_epoch", "CPU-s per epoch", 1.0, lambda v: f"{v:.1f} CPU-s"))
    for column, panel in enumerate(panels):
        _bar_panel(fig.add_subplot(grid[0, column]), compared, names, *panel)
    ax_accuracy, ax_loss = fig.add_subplot(grid[1, :2]), fig.add_subplot(grid[1, 2:])
    runs = steps.set_index("step").loc[list(compared["step"])].reset_index()
    lowered, stopped = plot_curves((ax_accuracy, ax_loss), runs, history_of)
    ax_accuracy.set_title(f"validation accuracy (training seed {seed})")
    ax_loss.set_title(f"validation loss (training seed {seed})")
    handles, _ = ax_accuracy.get_legend_handles_labels()
    ax_accuracy.legend(handles=handles + event_legend(lowered, stopped), loc="lower right", fontsize=9)
    fig.suptitle("Baselines vs the ladder's final step: accuracy, size, cost and validation curves")
    return Chart("baselines.png", _png(fig), "The ladder's final step against the baseline(s): mean test accuracy "
                 "over the seeds (95% interval), parameters, forward FLOPs per image, CPU seconds per epoch "
                 "(training CPU time / epochs run; wall seconds beside), and validation curves overlaid.")


def _bar_panel(ax, compared: pd.DataFrame, names, key, label, scale, text):
    """One number per compared step as bars, the value written on each."""
    values = scale * compared[key].to_numpy(float)
    errors = None
    if key == "test_accuracy_mean":
        errors = np.nan_to_num([values - 100 * compared["test_accuracy_low"].to_numpy(float),
                                100 * compared["test_accuracy_high"].to_numpy(float) - values])
    ax.bar(np.arange(len(values)), values, yerr=errors, capsize=4, color=[_color(i) for i in range(len(values))],
           edgecolor="black", linewidth=0.6)
    for i, value in enumerate(values):
        note = f"\n(wall {compared['wall_seconds_per_epoch'].iloc[i]:.1f} s)" if key.startswith("cpu") else ""
        top = value + (errors[1][i] if errors is not None else 0)
        ax.text(i, top, text(value) + note, ha="center", va="bottom", fontsize=8.5)
    ax.set_xticks(np.arange(len(values)), names, fontsize=8)
    ax.set_ylabel(label)
    ax.set_ylim(0, max(np.nanmax(values) if len(values) else 0, 1e-9) * 1.25)
    if key in ("num_params", "flops"):
        ax.yaxis.set_major_formatter(EngFormatter())
    ax.set_title(label.split(" (")[0])
    ax.grid(axis="y", alpha=0.3)


# ---------------------------------------------------------------------------------------------
# The confusion matrix.


MAX_NUMBERED_CLASSES = 20  # more classes: no numbers in the cells, every k-th name on the axes


def confusion_chart(labels, predictions, class_names, run_label: str) -> Chart:
    """Counts of (true, predicted) class on the test set, numbers in the cells."""
    n = len(class_names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    fig = _figure(8, 7, left=1.3, right=0.3, top=0.75, bottom=1.2)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="test images", shrink=0.8)
    for (row, column), count in np.ndenumerate(matrix if n <= MAX_NUMBERED_CLASSES else np.zeros((0, 0))):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    shown = range(0, n, math.ceil(n / MAX_NUMBERED_CLASSES))  # CIFAR-100's 100 names would overprint each other
    ax.set_xticks(shown, [class_names[i] for i in shown], rotation=45, ha="right")
    ax.set_yticks(shown, [class_names[i] for i in shown])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"Confusion matrix of the best run by validation accuracy: {run_label}\n"
                 f"test accuracy {100 * accuracy:.1f}% on {matrix.sum()} test images")
    return Chart("confusion.png", _png(fig), f"Confusion matrix of the best run ({run_label}), chosen by its best "
                 "validation accuracy (the test set never chooses), on its test images: rows are the true classes, "
                 "columns the predicted ones.")
