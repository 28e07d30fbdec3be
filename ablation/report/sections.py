"""What the report shows, in order: sections of text, tables and charts, from what `gather` read."""

import time
from dataclasses import dataclass, field

import pandas as pd

from ablation.report import figures, search_figures, tables
from ablation.report.bn_chart import bn_chart
from ablation.report.figures import Chart
from ablation.report.found import PROFILE, Gathered, Ladder, Search, col, isna
from ablation.report.gather import how_to_make_runs
from ablation.tracking import Tag


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
    sections, csvs = [], {}
    if found.ladder is not None:
        parent = found.ladder.parent
        meta += [("ladder run", f"{parent['run_name']} ({parent['run_id']}, {parent['status'].lower()}, "
                                f"started {parent['start_time']:%Y-%m-%d %H:%M} UTC)"),
                 ("profile", str(parent[PROFILE])),
                 ("training seeds", _seeds_line(found.ladder))]
        more, csvs = ladder_sections(found.ladder, study.title)
        sections += more
    else:
        sections.append(Section("Ladder", notes=[f"no ladder runs yet; {how_to_make_runs(study)}"]))
    if found.search is not None:
        search = found.search
        meta.append(("search", f"Optuna study {search.name} ({search.parent.get(col(Tag.OPTUNA_STORAGE), '')}), "
                               f"{len(search.trials)} finished trials"))
        sections.append(search_section(search))
    sections.append(confusion_section(found))
    if log and found.log_run_id is not None:
        meta.append(("report logged to", f"run {found.log_run_id} (the study's latest parent run), "
                                         "artifacts under report/"))
    meta.append(("generated", time.strftime("%Y-%m-%d %H:%M %Z")))
    return Report(study.title, meta, sections, found.runs, found.log_run_id, csvs)


def _seeds_line(ladder: Ladder) -> str:
    split = sorted(int(s) for s in ladder.runs["split_seed"].dropna().unique())
    return (", ".join(map(str, ladder.seeds)) or "not recorded") + (
        f" (split seed {', '.join(map(str, split))}: the same train / validation / test images for every seed)"
        if len(split) == 1 else f" (split seeds {', '.join(map(str, split))})" if split else "")


def ladder_sections(ladder: Ladder, title: str) -> tuple[list[Section], dict[str, pd.DataFrame]]:
    """The ladder over seeds, which steps helped, the curves, the architectures and the baselines; and the
    per-step summary as a CSV."""
    steps_evidence, changes_evidence = tables.ladder_evidence(ladder)
    summary, changes = tables.step_summary(ladder, steps_evidence), tables.change_table(changes_evidence)
    seeds = ", ".join(map(str, ladder.seeds))
    section = Section("Ladder", table=tables.show_steps(summary),
                      figures=[figures.ladder_chart(summary, changes, title)])
    section.text = (f"Each step keeps everything before it. The latest ladder ran training seeds {seeds}; a step's "
                    "n counts its runs of distinct seeds, the finished runs of the same step and config (but the "
                    "seed) under other ladders of the same profile included. Test accuracy and best validation "
                    "accuracy: mean over the n seeds, their standard deviation (std, in points) and the 95% "
                    "t-interval of the mean (none with one seed). Epochs: run / configured (fewer when early "
                    "stopping fired). CPU-s / epoch: training CPU time / epochs run, mean over the seeds (reused: "
                    "copied from an earlier run of the same work). The same table is ladder_summary.csv beside "
                    "this report.")
    section.notes += unfinished_notes(ladder)
    sections = [section, changes_section(changes, *tables.verdict_settings(ladder))]
    sections += curve_sections(ladder)
    sections.append(architecture_section(ladder, summary))
    return sections, {"ladder_summary.csv": summary}


def unfinished_notes(ladder: Ladder) -> list[str]:
    """One line per step run of the latest ladder that did not finish: it is in no number above."""
    error = col(Tag.ERROR)
    return [f"not counted: {run['run_name']} {str(run['status']).lower()}"
            + (f" ({run[error]})" if isinstance(run.get(error), str) and run[error] else "")
            for _, run in ladder.unfinished.iterrows()]


def changes_section(changes: pd.DataFrame, rope: float, alpha: float, metric: str = "test_accuracy") -> Section:
    """Which steps helped: each change tested over the seeds both steps ran with, at the ladder's margin and level."""
    section = Section("Which steps helped", table=tables.show_changes(changes))
    if changes.empty:
        section.notes.append("nothing to compare: the ladder has a single step")
        return section
    ns = sorted(set(changes["n"]))
    section.text = (f"Each step against the step before it (a baseline against the step it is compared with), "
                    f"paired by training seed over the n seeds both ran (n = {', '.join(map(str, ns))}). Mean "
                    f"difference and its 95% interval in percentage points of {metric.replace('_', ' ')}; "
                    "p (t, pooled SD): the "
                    "t-test of the mean difference, its seed-to-seed SD pooled over this table's changes where that "
                    "is larger than the change's own (with the degrees of freedom of all of them); p (sign-flip): "
                    "the per-seed differences' sign flips, no pooling, which cannot go below 2/2^n; p (Holm): "
                    "adjusted over the changes and their equivalence tests, which the verdict uses. helped or hurt: "
                    f"p (Holm) below {alpha:.4g}; equivalent: within ±{100 * rope:.4g} pp (the ladder's --rope) by "
                    "two one-sided tests; undecided: neither, with the seeds per step that would likely decide it; "
                    "smallest detectable: the true difference found with 80% power at the level the change is "
                    "tested at. The test images are the same for every run: the verdicts speak of these images.")
    if ns[0] < 2:
        section.notes.append("with one seed there is no test over seeds and no verdict: training noise (another "
                             "seed's result) is unmeasured. McNemar's exact test on the test images both runs "
                             "scored, Holm-adjusted over those changes, is shown beside it; it measures test-set "
                             "sampling only. Run the ladder with --seeds 3 or more to test the changes over seeds.")
    return section


def curve_sections(ladder: Ladder) -> list[Section]:
    """The validation curves of every step and the training-against-validation view, for one training seed."""
    seed = ladder.curve_seed
    text = (f"Curves of training seed {seed}, one run per step"
            + (f" (the ladder ran seeds {', '.join(map(str, ladder.seeds))}; the others are in MLflow)"
               if len(ladder.seeds) > 1 else "") + ".")
    return [Section("Training curves", text=text,
                    figures=[figures.curves_chart(ladder.steps, ladder.histories, seed)]),
            Section("Overfitting: training vs validation accuracy",
                    figures=[figures.overfitting_chart(ladder.steps, ladder.histories, seed)]),
            *([Section("BatchNormalization's statistics: moving vs recomputed", figures=[chart])]
              if (chart := bn_chart(ladder.steps, ladder.histories, seed)) else [])]


def architecture_section(ladder: Ladder, summary: pd.DataFrame) -> Section:
    """Size and cost of every step; the baselines against the ladder's final step."""
    section = Section("Architectures: baselines vs the final step", table=tables.architecture_table(summary))
    section.text = ("CPU-s / epoch: training CPU time / epochs run (all cores counted), the cost that stays put "
                    "when the machine is shared; wall s / epoch beside it. Means over each step's seeds.")
    final = summary[~summary["baseline"]].tail(1)
    baselines = summary[summary["baseline"]]
    if baselines.empty:
        section.notes.append("this ladder ran no baseline ([[baselines]] in the study file): "
                             "nothing to compare the final step with")
    else:
        section.figures.append(figures.baselines_chart(pd.concat([final, baselines]), ladder.steps,
                                                       ladder.histories, ladder.curve_seed))
    return section


def search_section(search: Search) -> Section:
    """The best trials, the optimization history, the importances and the objective against each parameter."""
    section = Section("Search", table=tables.show_trials(search))
    counts = search.trials["state"].value_counts()
    section.text = (f"Optuna study {search.name}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} "
                    f"pruned and {counts.get('failed', 0)} failed trials; the objective is the best epoch's "
                    f"{search.monitor} on the validation split ({search.direction}).")
    complete = int(counts.get("complete", 0))
    if complete == 0:
        section.notes.append("no complete trial yet: the plots wait for one (python -m ablation.search adds trials)")
        return section
    study = search_figures.optuna_study(search)
    section.figures.append(search_figures.search_history_chart(search, study))
    if search.importances:
        section.figures.append(search_figures.importances_chart(search, study))
        if complete < search_figures.FEW_TRIALS:
            section.notes.append(f"parameter importances from {complete} complete trials only (fewer than "
                                 f"{search_figures.FEW_TRIALS}): read them as a rough guide, not a ranking")
    else:
        section.notes.append(search.importance_note or "parameter importances: none (too few complete trials)")
    if search.params:
        section.figures.append(search_figures.search_params_chart(search, study))
    return section


def confusion_section(found: Gathered) -> Section:
    """The confusion matrix of the best run by validation accuracy, or the note saying why there is none."""
    section = Section("Confusion matrix of the best run")
    confusion = found.confusion
    if confusion.run is None:
        section.notes.append(confusion.note)
        return section
    run = confusion.run
    label = run["step"] if isinstance(run.get("step"), str) else run["run_name"]
    seed = "" if isna(run.get("seed")) else f", training seed {int(run['seed'])}"
    section.text = (f"The run with the highest best validation accuracy among the report's runs (the latest "
                    f"ladder's runs and the search's complete trials); the test set never chooses: {label}{seed} "
                    f"(run {run['run_id']}), best validation accuracy {tables.pct(run.get('best_val_accuracy'))}, "
                    f"test accuracy {tables.pct(run.get('test_accuracy'))}.")
    section.figures.append(figures.confusion_chart(confusion.labels, confusion.predictions,
                                                   confusion.class_names, label))
    return section
