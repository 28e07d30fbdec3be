"""The report's charts, drawn with matplotlib's Figure objects (the Agg canvas: no pyplot, no display) and
returned as PNG bytes with a caption."""

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator
from matplotlib.transforms import offset_copy

from ablation.report.gather import Search
from ablation.report.tables import eng

DPI = 110
# The PNGs this module writes (a report folder's old ones are replaced).
NAMES = ("ladder.png", "curves.png", "baselines.png", "search_history.png", "search_importances.png",
         "search_params.png", "confusion.png")


@dataclass
class Chart:
    """A rendered chart: its file name, PNG bytes and a one-line caption."""

    name: str
    png: bytes
    caption: str


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


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
    return [Line2D([], [], marker="v", linestyle="", color="0.7", markeredgecolor="black", markersize=9,
                   label="learning rate lowered"),
            Line2D([], [], marker="X", linestyle="", color="0.7", markeredgecolor="black", markersize=9,
                   label="early stopping fired")]


def _plot_curves(ax_accuracy, ax_loss, runs, history_of, colors):
    """Validation accuracy and loss per epoch for several runs on two shared axes."""
    for (_, run), color in zip(runs.iterrows(), colors, strict=False):
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


def figure_ladder(table, title: str) -> Chart:
    """Test accuracy per step: bars with the change written on them, error bars, the source's number beside."""
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
    return Chart("ladder.png", _png(fig), "Test accuracy per ladder step; the label is the change from the step "
                 "before (a baseline: from the ladder's last step); grey bars: the source's reported accuracy.")


def figure_curves(steps, history_of) -> Chart:
    """Validation accuracy and loss per epoch, every step on shared axes, LR drops and early stops marked."""
    fig = _figure(12, 5.2)
    ax_accuracy, ax_loss = fig.subplots(1, 2, sharex=True)
    colors = [f"C{i % 10}" for i in range(len(steps))]
    _plot_curves(ax_accuracy, ax_loss, steps, history_of, colors)
    handles, _ = ax_accuracy.get_legend_handles_labels()
    fig.legend(handles=handles + _marker_legend(), loc="outside lower center", ncols=min(4, len(handles) + 2),
               fontsize=9)
    fig.suptitle("Training curves of every step (validation split)")
    return Chart("curves.png", _png(fig), "Validation accuracy and loss per epoch for every step; ▼ where the "
                 "learning rate was lowered, ✖ where early stopping ended training before its epoch budget.")


def figure_baselines(compared, history_of) -> Chart:
    """The final step against the baselines: four numbers side by side and their validation curves."""
    fig = _figure(13, 8)
    grid = fig.add_gridspec(2, 4, height_ratios=(1, 1.15))
    colors = [f"C{i}" for i in range(len(compared))]
    names = [f"{r['step']}\n({r['model']})" for _, r in compared.iterrows()]
    panels = (("test_accuracy", "test accuracy (%)", 100.0, lambda v: f"{v:.1f}%"),
              ("num_params", "parameters", 1.0, eng),
              ("flops", "forward FLOPs per image", 1.0, eng),
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
    return Chart("baselines.png", _png(fig), "The ladder's final step against the baseline(s): test accuracy, "
                 "parameters, forward FLOPs per image, seconds per epoch, and validation curves overlaid.")


def figure_confusion(labels, predictions, class_names, run_label: str) -> Chart:
    """Counts of (true, predicted) class on the test set, numbers in the cells."""
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
    return Chart("confusion.png", _png(fig), f"Confusion matrix of the best run ({run_label}) on its test images: "
                 "rows are the true classes, columns the predicted ones.")


# ---------------------------------------------------------------------------------------------
# The search.


PARAM_UNITS = {"dropout_rate": "fraction of units dropped", "learning_rate": "initial, Adam",
               "rotation_range": "degrees", "zoom_range": "fraction", "batch_size": "images"}


def _search_axes_values(search: Search, trials):
    scale = 100 if "accuracy" in search.monitor else 1
    return scale * trials["value"].astype(float), f"{search.monitor}" + (" (%)" if scale == 100 else "")


def figure_search_history(search: Search) -> Chart:
    """Objective value per trial, pruned trials at their value when pruned, and the best so far."""
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
    return Chart("search_history.png", _png(fig), "The search's objective per trial: complete trials at their "
                 "best epoch, pruned ones (×) at the value they had when pruned, and the best value so far.")


def figure_importances(search: Search, values: dict) -> Chart:
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
    return Chart("search_importances.png", _png(fig), "How much each searched parameter matters to the "
                 "objective, by Optuna's default importance evaluator over the complete trials.")


def figure_search_params(search: Search) -> Chart:
    """The objective against each searched parameter; pruned trials drawn as such."""
    columns = min(3, len(search.params))
    rows = math.ceil(len(search.params) / columns)
    fig = _figure(4.2 * columns, 3.6 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    trials = search.trials
    complete, pruned = trials[trials["state"].eq("complete")], trials[trials["state"].eq("pruned")]
    _, ylabel = _search_axes_values(search, complete)
    for ax, name in zip(axes, search.params, strict=False):
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
    return Chart("search_params.png", _png(fig), f"Best-epoch {search.monitor} against each searched parameter; "
                 "pruned trials (×) at the value they had when pruned.")
