"""The BatchNormalization check as a chart: per step, validation accuracy with moving and with recomputed statistics."""

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ablation.report.figures import Chart, _color, _png, step_panels, style_panel

MOVING, RECOMPUTED = "val_accuracy_moving_bn", "val_accuracy_recomputed_bn"
LAGGING = 0.02  # a last-epoch gap above this many (2 points) is called a lag in the caption


def last_gap(history: pd.DataFrame) -> float:
    """Recomputed minus moving accuracy at the last epoch that has both (NaN if none has)."""
    if not {MOVING, RECOMPUTED} <= set(history.columns):
        return float("nan")
    both = history[[MOVING, RECOMPUTED]].dropna()
    return float(both[RECOMPUTED].iloc[-1] - both[MOVING].iloc[-1]) if len(both) else float("nan")


def bn_chart(steps: pd.DataFrame, history_of: dict, seed) -> Chart | None:
    """One panel per step with the check's two curves and the gap shaded; None when no run has the check."""
    drawn = [(run, history_of[run["run_id"]]) for _, run in steps.iterrows()
             if run["run_id"] in history_of and {MOVING, RECOMPUTED} <= set(history_of[run["run_id"]].columns)]
    if not drawn:
        return None
    fig, axes = step_panels(len(drawn))
    for i, (ax, (run, history)) in enumerate(zip(axes, drawn)):
        moving, recomputed = 100 * history[MOVING], 100 * history[RECOMPUTED]
        ax.plot(recomputed.index, recomputed, "-", color=_color(i), marker="o", markersize=3, linewidth=1.6)
        ax.plot(moving.index, moving, "--", color=_color(i), linewidth=1.4)
        ax.fill_between(moving.index, recomputed, moving, color=_color(i), alpha=0.15)
        style_panel(ax, f"{run['step']} (gap {100 * last_gap(history):+.1f} at the end)")
    axes[0].set_ylabel("validation accuracy")
    fig.legend(handles=[Line2D([], [], color="0.3", marker="o", markersize=3, label="recomputed statistics"),
                        Line2D([], [], color="0.3", linestyle="--", label="moving statistics"),
                        Patch(facecolor="0.3", alpha=0.15, label="the lag")], loc="lower center", ncols=3, fontsize=9)
    fig.suptitle(f"BatchNormalization check: the same network scored with two sets of statistics (seed {seed})")
    lagging = [str(run["step"]) for run, history in drawn if abs(last_gap(history)) > LAGGING]
    verdict = (f" At the last epoch the moving statistics lag by more than {100 * LAGGING:.0f} points in: "
               f"{', '.join(lagging)}: their logged numbers measure the lag, not the network (a small data set or "
               "an unusual batch size; docs/recipe.md#batchnorm-statistics)." if lagging else
               f" No step's gap exceeds {100 * LAGGING:.0f} points at its last epoch.")
    return Chart("batchnorm.png", _png(fig), "Per epoch, accuracy on a fixed set of validation images (not augmented) "
                 "with BatchNormalization's moving statistics (dashed) and with statistics recomputed from training "
                 "images at the same weights (solid)." + verdict)
