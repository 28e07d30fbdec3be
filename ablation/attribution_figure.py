"""The attribution figure: per component, a bar for each measure the store could give, with its 95% interval."""

import math

from matplotlib.figure import Figure  # Agg through a Figure object: no pyplot, no display

COLORS = {"ladder_gain": "#9e9e9e", "leave_one_out": "#d95f02", "add_one_in": "#1b9e77", "shapley": "#3b5bdb"}


def draw_attribution(result: dict, path, labels: dict):
    """Horizontal bars, points of test accuracy, one group per component; error bars are 95% intervals over seeds."""
    measures = [name for name in labels if result["measures"].get(name)]
    names = [component["name"] for component in result["components"]]
    height = 0.8 / max(1, len(measures))
    figure = Figure(figsize=(8, 1.5 + 0.25 * len(names) * max(2, len(measures))), layout="constrained")
    axes = figure.add_subplot()
    for j, measure in enumerate(measures):
        # A component without a value of its own here (a split step's later parts, in the ladder gain) gets no bar.
        summaries = [s or {"mean": 0.0, "low": math.nan, "high": math.nan} for s in result["measures"][measure]["components"]]
        means = [100 * s["mean"] for s in summaries]
        # One seed has no interval (its bounds are NaN): no error bar rather than a made-up one.
        errors = [[0 if math.isnan(s["low"]) else 100 * (s["mean"] - s["low"]) for s in summaries],
                  [0 if math.isnan(s["high"]) else 100 * (s["high"] - s["mean"]) for s in summaries]]
        positions = [i - 0.4 + height * (j + 0.5) for i in range(len(names))]
        axes.barh(positions, means, height, xerr=errors, capsize=2, color=COLORS[measure], label=labels[measure])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()  # the ladder's order, top to bottom
    axes.set_xlabel("points of test accuracy (mean over training seeds, 95% interval)")
    axes.set_title(f"{result['study']}: what each change is worth ({result['profile']} profile, "
                   f"seeds {result['seeds']})", fontsize=10)
    if measures:  # none when every unit a measure needs failed: an empty chart, no legend
        axes.legend(fontsize=8, loc="best")
    figure.savefig(path, dpi=120)
