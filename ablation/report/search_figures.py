"""The search's charts: Optuna's own (`optuna.visualization.matplotlib`: optimization history,
parameter importances, slice) drawn from the trials MLflow recorded, with what Optuna's lack added on
top: pruned trials where they were pruned, units on the axes, a caveat when few trials support the
importances.
"""

import io
import warnings

import matplotlib
import numpy as np
import optuna
import pandas as pd
from matplotlib import pyplot
from matplotlib.ticker import MaxNLocator

from ablation.report.figures import DPI, Chart
from ablation.report.found import Search, isna

FEW_TRIALS = 10  # below this many complete trials, importances are shown with a caveat
PARAM_UNITS = {"dropout_rate": "fraction of units dropped", "learning_rate": "initial, Adam",
               "rotation_range": "degrees", "zoom_range": "fraction", "batch_size": "images"}


def _scale(search: Search) -> float:
    return 100.0 if "accuracy" in search.monitor else 1.0


def objective_label(search: Search) -> str:
    return f"best-epoch {search.monitor}" + (" (%)" if _scale(search) == 100 else "")


def _distribution(name: str, values: pd.Series, search: Search):
    """The parameter's distribution: the study file's when every value fits in it, else one spanning the values."""
    spec = {p.name: p for p in search.space.params}.get(name) if search.space else None
    if spec is not None:
        if spec.type == "categorical":
            made = optuna.distributions.CategoricalDistribution(list(spec.choices))
        elif spec.type == "int":
            made = optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log)
        else:
            made = optuna.distributions.FloatDistribution(float(spec.low), float(spec.high), log=spec.log)
        if all(made._contains(made.to_internal_repr(v)) for v in values):
            return made
    if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        return optuna.distributions.CategoricalDistribution(sorted(set(values), key=str))
    low, high = min(values), max(values)
    log = name in search.log_params and low > 0
    if all(float(v).is_integer() for v in values):
        return optuna.distributions.IntDistribution(int(low), int(high), log=log)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log)


def _trial(row: dict | None, search: Search, distributions: dict):
    """One frozen trial of the in-memory study; a failed one stands in for a number MLflow has no trial for."""
    state = row["state"] if row is not None else "failed"
    value = row["value"] if row is not None else None
    if state == "failed" or (state == "complete" and isna(value)):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL)
    params = {p: row[p] for p in search.params if not isna(row.get(p))}
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE if state == "complete" else optuna.trial.TrialState.PRUNED,
        value=_scale(search) * float(value) if state == "complete" else None,
        params=params, distributions={p: distributions[p] for p in params})


def optuna_study(search: Search) -> optuna.Study:
    """The recorded trials as an in-memory Optuna study, numbered as in the search (values in display units)."""
    trials = search.trials
    distributions = {p: _distribution(p, [v.item() if hasattr(v, "item") else v for v in trials[p].dropna()], search)
                     for p in search.params}
    by_number = {int(row["number"]): row for row in trials.to_dict("records")}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=search.direction, study_name=search.name)
    count = max(by_number) + 1 if by_number else 0
    study.add_trials([_trial(by_number.get(n), search, distributions) for n in range(count)])
    return study


def _optuna_chart(draw, *args, **kwargs):
    """Run one of Optuna's matplotlib plots without touching the caller's style; its axes and figure."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = draw(*args, **kwargs)
        figure = np.ravel(axes)[0].figure
    return axes, figure


def _fit(figure, width: float, height: float, left=0.9, right=0.3, top=0.8, bottom=0.7):
    """A pyplot figure (Optuna's) resized, with fixed margins in inches.

    Fixed margins, not Optuna's tight layout or a tight bounding box: each of those draws the figure
    once more, and a scatter of a thousand trials is slow to draw.
    """
    figure.set_layout_engine("none")
    figure.set_size_inches(width, height)
    figure.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height)


def _save_pyplot(figure, *size, **margins) -> bytes:
    """A pyplot figure as PNG bytes (resized first when a size is given), then closed."""
    try:
        if size:
            _fit(figure, *size, **margins)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()
    finally:
        pyplot.close(figure)


def _pruned(search: Search) -> pd.DataFrame:
    trials = search.trials
    return trials[trials["state"].eq("pruned") & trials["value"].notna()]


def search_history_chart(search: Search, study: optuna.Study) -> Chart:
    """Optuna's optimization history, with pruned trials at their value when pruned and failed ones marked."""
    ax, figure = _optuna_chart(optuna.visualization.matplotlib.plot_optimization_history, study,
                               target_name=objective_label(search))
    pruned = _pruned(search)
    if len(pruned):
        ax.plot(pruned["number"], _scale(search) * pruned["value"].astype(float), "x", color="0.35", markersize=8,
                markeredgewidth=2, label="pruned trial (value when pruned)")
    failed = search.trials[search.trials["state"].eq("failed")]
    if len(failed):
        ax.plot(failed["number"], [0.02] * len(failed), "s", color="C3", markerfacecolor="none",
                transform=ax.get_xaxis_transform(), label="failed trial (no value)")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Below the axes: "best" would search a thousand points for a free corner.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=4, fontsize=9)
    counts = search.trials["state"].value_counts()
    ax.set_title("")  # Optuna's own title; ours says more, on the left
    ax.set_title(f"Optuna study {search.name}: optimization history\n{counts.get('complete', 0)} complete, "
                 f"{counts.get('pruned', 0)} pruned, {counts.get('failed', 0)} failed", loc="left")
    return Chart("search_history.png", _save_pyplot(figure, 9, 5.4, bottom=1.1), "Optuna's optimization history: the objective "
                 "of each complete trial (its best epoch) and the best so far; pruned trials (×) at the value they "
                 "had when pruned.")


class _Given(optuna.importance.BaseImportanceEvaluator):
    """Importances already computed (on the search's own Optuna storage), handed to Optuna's chart."""

    def __init__(self, values: dict):
        self.values = values

    def evaluate(self, study, params=None, *, target=None) -> dict:
        return dict(self.values)


def importances_chart(search: Search, study: optuna.Study) -> Chart:
    """Optuna's parameter importances chart; a caveat in the title when few complete trials support it."""
    complete = int(search.trials["state"].eq("complete").sum())
    ax, figure = _optuna_chart(optuna.visualization.matplotlib.plot_param_importances, study,
                               evaluator=_Given(search.importances), target_name=objective_label(search))
    caveat = f"\ncaveat: fewer than {FEW_TRIALS} complete trials: a rough guide" if complete < FEW_TRIALS else ""
    ax.set_title("")
    ax.set_title(f"Optuna study {search.name}: parameter importances\nover {complete} complete trials{caveat}",
                 loc="left", color="C3" if caveat else "black")
    ax.set_xlabel("importance (Optuna's PED-ANOVA; the parameters' importances sum to 1)")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    return Chart("search_importances.png", _save_pyplot(figure, 8, 1.9 + 0.6 * len(search.importances), left=1.4,
                                                           top=1.0 if caveat else 0.8),
                 f"How much each searched parameter matters to the objective, by Optuna's default importance "
                 f"evaluator over the {complete} complete trials" + (f"; with fewer than {FEW_TRIALS} complete "
                                                                      "trials, a rough guide only" if caveat else "")
                 + ".")


def search_params_chart(search: Search, study: optuna.Study) -> Chart:
    """Optuna's slice plot (the objective against each parameter), pruned trials and units added."""
    axes, figure = _optuna_chart(optuna.visualization.matplotlib.plot_slice, study, params=search.params,
                                 target_name=objective_label(search))
    axes = np.ravel(axes)
    pruned = _pruned(search)
    for ax in axes:
        name = ax.get_xlabel()  # Optuna orders the panels by name and labels each with its parameter
        if len(pruned) and name in pruned.columns:
            ax.plot(pruned[name], _scale(search) * pruned["value"].astype(float), "x", color="0.35", markersize=7,
                    markeredgewidth=1.5, label="pruned trial (value when pruned)")
        unit = "log scale" if name in search.log_params else PARAM_UNITS.get(
            name, "blocks" if name.endswith("_blocks") else "")
        ax.set_xlabel(name + (f"\n({unit})" if unit else ""))
    handles = [h for h in axes[0].get_legend_handles_labels()[0] if h.get_label().startswith("pruned")]
    if axes[0].get_legend() is not None:
        axes[0].get_legend().remove()  # Optuna's lists infeasible trials, which a search without constraints has none of
    if handles:
        figure.legend(handles=handles, loc="lower left", fontsize=8, frameon=False)
    figure.suptitle(f"Optuna study {search.name}: {objective_label(search)} against each searched parameter")
    for extra in [a for a in figure.axes if a not in list(axes)]:
        extra.remove()  # Optuna's colour bar, placed for its own size: drawn again below once the panels are placed
    _fit(figure, max(6.0, 3.6 * len(search.params)), 4.8, right=0.3, top=0.6, bottom=1.0)
    figure.colorbar(axes[0].collections[0], ax=list(axes), label="trial number", fraction=0.03, pad=0.02)
    return Chart("search_params.png", _save_pyplot(figure),
                 f"Optuna's slice plot: best-epoch {search.monitor} of each complete trial against each searched "
                 "parameter, coloured by trial number; pruned trials (×) at the value they had when pruned.")
