"""How an attribution is shown: its table (terminal, Markdown, CSV), the notes that say what it holds, and its figure.

Plain data in, text and files out: the designs (`ablation.engine.designs`) compute the result, this module
only presents it, and the command prints it or the design logs the files on its parent run.
"""

import csv
import math
from pathlib import Path

from matplotlib.figure import Figure  # Agg through a Figure object: no pyplot, no display

from ablation.engine.designs import LADDER, MEASURES, SEARCH, file_stem

HEADERS = {"ladder_gain": "ladder gain", "leave_one_out": "leave-one-out drop", "add_one_in": "add-one-in gain",
           "shapley": "Shapley value", "order_effect": "ladder - Shapley", "importance": "Optuna importance"}
RUN_IT = {"leave_one_out": "--design leave-one-out", "add_one_in": "--design add-one-in", "shapley": "--design shapley"}


def _cell(summary: dict | None) -> str:
    """Points of test accuracy: the mean over seeds and, with two seeds or more, its 95% interval."""
    if summary is None:
        return ""
    points = lambda value: f"{round(100 * value, 1) + 0.0:+.1f}"  # noqa: E731  (+ 0.0: no "-0.0" from rounding)
    return points(summary["mean"]) if summary["n"] < 2 else \
        f"{points(summary['mean'])} [{points(summary['low'])}, {points(summary['high'])}]"


def _table_columns(result: dict) -> list[str]:
    first = ["importance"] if result["game"] == SEARCH else ["ladder_gain"]
    return first + ["leave_one_out", "add_one_in", "shapley"] + (["order_effect"] if result["order_effect"] else [])


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per component, then the sum and what is left over) of the attribution table."""
    columns = _table_columns(result)
    measures = result["measures"]
    rows = []
    for i, component in enumerate(result["components"]):
        cells = []
        for name in columns:
            if name == "importance":
                importance = result["importances"].get(component["name"])
                cells.append("" if importance is None else f"{importance:.2f}")
            elif name == "order_effect":
                cells.append(_cell(result["order_effect"][i]))
            else:
                mark = " †" if name == "ladder_gain" and component["name"] in result["shared_step"] else ""
                cells.append((_cell(measures[name]["components"][i]) + mark).strip() if measures[name] else "")
        rows.append([component["name"], component["step"], *cells])
    for label, key in (("sum of the components", "sum"), ("full gain - sum (interaction)", "left_over")):
        rows.append([label, "", *(_cell(measures[name][key]) if measures.get(name) else "" for name in columns)])
    return ["component", "step", *(HEADERS[name] for name in columns)], rows


def format_table(result: dict) -> str:
    """The attribution table and what its numbers mean, for the terminal."""
    header, rows = table_rows(result)
    widths = [max(len(row[i]) for row in [header, *rows]) + 2 for i in range(len(header))]
    lines = ["".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join([lines[0], "-" * sum(widths), *lines[1:], "", *notes(result)])


def notes(result: dict) -> list[str]:
    """What the table's numbers are, which ones are missing and why, and the conflicts behind them."""
    seeds = result["seeds"]
    gain = result["full_gain"]
    out = ["Points of test accuracy, mean over training seeds with its 95% interval (paired by seed) where n >= 2."]
    if gain is not None:
        out.append(f"Full gain ({result['full']} minus {result['base']}): {_cell(gain)} over seeds {gain['seeds']}.")
    if result["measures"]["shapley"] is not None:
        out.append("Shapley values: exact, over every subset." if result["shapley_exact"] else
                   f"Shapley values: sampled from {result['plan']['orders']} antithetic orders ({result['plan']['subsets']}"
                   f" subsets); their sampling standard errors (points, added into the intervals): "
                   + ", ".join(f"{100 * se:.1f}" for se in result["sampling_se"]) + ".")
    for name, verdicts in result.get("verdicts", {}).items():
        if verdicts is not None:
            out.append(f"Verdicts on the {HEADERS[name]} over seeds (pooled-SD t and equivalence within ±1 point, Holm "
                       f"over the components): " + ", ".join(f"{c['name']} {v}" for c, v in
                                                              zip(result["components"], verdicts, strict=True)) + ".")
    out += [f"FAILED, so missing above: {result['base']} + {', '.join(f['components']) or 'nothing'}, seed {f['seed']}: "
            f"{f['error']}" for f in result.get("failed", [])]
    for name, flag in RUN_IT.items():
        if result["measures"][name] is None:
            out.append(f"{HEADERS[name]}: not all its subsets are in the store for seeds {seeds} (run {flag}).")
    if result["game"] == LADDER and result["measures"]["ladder_gain"] is None:
        out.append(f"ladder gain: no ladder run with seeds {seeds} at profile {result['profile']} "
                   f"(python -m ablation.ladder --profile {result['profile']} --seeds {len(seeds)}).")
    if result["shared_step"]:
        out.append(f"† one ladder step that [attribution] splits ({', '.join(result['shared_step'])}): its whole gain "
                   "is on the first of its components.")
    out += [f"Conflict: {c['setting']} is set by " + " < ".join(f"{name} {value!r}" for name, value in c["values"])
            + "; in a subset with several of them the last one's value holds." for c in result["conflicts"]]
    return out


def write_outputs(result: dict, folder: Path) -> list[Path]:
    """CSV, Markdown and PNG of the attribution written in `folder`; their paths."""
    stem = file_stem(result["game"], result["design"])
    header, rows = table_rows(result)
    markdown = [f"# Attribution of {result['study']}: {result['design']}, {result['profile']} profile, "
                f"seeds {result['seeds']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(row) + " |" for row in rows), "", *notes(result), "", f"![attribution]({stem}.png)", ""]
    with open(folder / f"{stem}.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(_csv_rows(result)[0]))
        writer.writeheader()
        writer.writerows(_csv_rows(result))
    (folder / f"{stem}.md").write_text("\n".join(markdown))
    draw_attribution(result, folder / f"{stem}.png", {name: HEADERS[name] for name in MEASURES})
    return [folder / f"{stem}.{suffix}" for suffix in ("csv", "md", "png")]


def _csv_rows(result: dict) -> list[dict]:
    """Per component, then their sum and what is left over: every measure's mean, interval and n (fractions)."""
    entries = [(c["name"], c["step"], i) for i, c in enumerate(result["components"])]
    rows = []
    for name, step, pick in entries + [("sum", "", "sum"), ("left_over", "", "left_over")]:
        row = {"component": name, "step": step}
        for measure in MEASURES:
            column = result["measures"][measure]
            summary = None if column is None else column["components"][pick] if step else column[pick]
            row.update({f"{measure}_{part}": "" if summary is None else summary[part]
                        for part in ("mean", "low", "high", "n")})
        order = result["order_effect"][pick] if result["order_effect"] and step else None
        row["order_effect_mean"] = "" if order is None else order["mean"]
        row["importance"] = result["importances"].get(name, "") if step else ""
        rows.append(row)
    return rows


# The figure.
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
