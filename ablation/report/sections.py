"""What the report shows, in order: sections of text, tables and charts, from what `gather` read."""

import time
from dataclasses import dataclass, field

import pandas as pd

from ablation.report import figures, tables
from ablation.report.figures import Chart
from ablation.report.gather import Gathered, Ladder, Search, how_to_make_runs


@dataclass
class Section:
    """One part of the report: a paragraph, an optional table (display strings), charts, notes."""

    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    figures: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The whole report, ready to render."""

    title: str
    meta: list[tuple[str, str]]
    sections: list[Section]
    runs: pd.DataFrame  # the tidy runs, one row per run
    log_run_id: str | None
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)  # file name -> table written beside the report


def assemble(found: Gathered, log: bool = False) -> Report:
    """Every section of the report, from what was read; `log` only adds a line saying where it is logged."""
    study = found.study
    meta = [("study", f"{study.name}" + (f" ({study.path})" if study.path else "")),
            ("experiment", f"{found.experiment} in {found.uri}")]
    sections = []
    if found.ladder is not None:
        parent = found.ladder.parent
        meta += [("ladder run", f"{parent['run_name']} ({parent['run_id']}, {parent['status'].lower()}, "
                                f"started {parent['start_time']:%Y-%m-%d %H:%M} UTC)"),
                 ("profile", str(parent["profile"]))]
        sections += ladder_sections(found.ladder, study.title)
    else:
        sections.append(Section("Ladder", notes=[f"no ladder runs yet; {how_to_make_runs(study)}"]))
    if found.search is not None:
        search = found.search
        meta.append(("search", f"Optuna study {search.name} ({search.parent.get('optuna_storage', '')}), "
                               f"{len(search.trials)} finished trials"))
        sections.append(search_section(search))
    sections.append(confusion_section(found))
    if log and found.log_run_id is not None:
        meta.append(("report logged to", f"run {found.log_run_id} (the study's latest parent run), "
                                         "artifacts under report/"))
    meta.append(("generated", time.strftime("%Y-%m-%d %H:%M %Z")))
    return Report(study.title, meta, sections, found.runs, found.log_run_id)


def ladder_sections(ladder: Ladder, title: str) -> list[Section]:
    """The ladder table and bars, the training curves, the architectures and the baselines."""
    steps = ladder.steps
    table = tables.ladder_table(steps, ladder.replicas)
    several = int(table["seeds"].max())
    section = Section("Ladder", table=tables.show_ladder(table), figures=[figures.figure_ladder(table, title)])
    section.text = ("Each step keeps everything before it. Test accuracy of the latest ladder run"
                    + (f"; with several seeds, mean ± std over up to {several} runs of the same step and config "
                       "(other seeds) under ladders of the same profile" if several > 1 else "")
                    + ". Change: from the step before, in percentage points; a baseline's, from the last step. "
                      "Epochs: run / configured (fewer when early stopping fired). Time: training wall time "
                      "(reused: the run was copied from an earlier one with the same config and data).")
    curves = Section("Training curves", figures=[figures.figure_curves(steps, ladder.histories)])
    architectures = Section("Architectures: baselines vs the final step", table=tables.architecture_table(steps))
    final = steps[~steps["baseline"]].tail(1)
    baselines = steps[steps["baseline"]]
    if baselines.empty:
        architectures.notes.append("this ladder ran no baseline ([[baselines]] in the study file): "
                                   "nothing to compare the final step with")
    else:
        architectures.figures.append(figures.figure_baselines(pd.concat([final, baselines]), ladder.histories))
    return [section, curves, architectures]


def search_section(search: Search) -> Section:
    """The best trials, the optimization history, the importances and the objective against each parameter."""
    section = Section("Search", table=tables.show_trials(search))
    counts = search.trials["state"].value_counts()
    section.text = (f"Optuna study {search.name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} "
                    f"pruned and {counts.get('failed', 0)} failed trials; the objective is the best epoch's "
                    f"{search.monitor} on the validation split ({search.direction}).")
    complete = search.trials[search.trials["state"].eq("complete")]
    if complete.empty:
        section.notes.append("no complete trial yet: the plots wait for one (python -m ablation.search adds trials)")
        return section
    section.figures.append(figures.figure_search_history(search))
    if search.importances:
        section.figures.append(figures.figure_importances(search, search.importances))
    else:
        section.notes.append(search.importance_note or "parameter importances: none (too few complete trials)")
    if search.params:
        section.figures.append(figures.figure_search_params(search))
    return section


def confusion_section(found: Gathered) -> Section:
    """The confusion matrix of the best run, or the note saying why there is none."""
    section = Section("Confusion matrix of the best run")
    confusion = found.confusion
    if confusion.run is None:
        section.notes.append(confusion.note)
        return section
    run = confusion.run
    label = run["step"] if isinstance(run.get("step"), str) else run["run_name"]
    section.text = (f"The run with the highest test accuracy among the report's runs: {label} "
                    f"(run {run['run_id']}).")
    section.figures.append(figures.figure_confusion(confusion.labels, confusion.predictions,
                                                    confusion.class_names, label))
    return section
