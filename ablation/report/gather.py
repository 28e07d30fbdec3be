"""What the report reads: the experiment's runs from MLflow, a few runs' epochs and predictions, the
search's Optuna study. The only part of the report that touches a store, and it only reads.

Which runs: the latest ladder parent run of the study (its kind tag is `Kind.LADDER`) that has
finished steps, and those steps, one run per step and training seed. The evidence over seeds
counts, for each step, those runs and the same step's finished runs with the same config but the
training seed under any other ladder of the same profile: one per piece of work (work key) and one
per seed (see `replicates`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from ablation import tracking
from ablation.analysis import evidence
from ablation.cli import DEFAULT_STUDY
from ablation.core.config import EPOCH_METRICS, StudyError
from ablation.core.study import find_study, load_study
from ablation.report.errors import ReportError
from ablation.report.found import (BASELINE, COMPARE_TO, COUNT_METRICS, KIND, NUMERIC_TAGS, PROFILE, STEP, STEP_INDEX,
                                   WORK_KEY, Gathered, Ladder, Search, StudyInfo, col, isna)
from ablation.report.predictions import Predictions, confusion_candidates, read_confusion, read_correct
from ablation.tracking import Kind, Tag


def gather(study_name_or_path=DEFAULT_STUDY, experiment=None, data=None) -> Gathered:
    """Read what the report needs; a ReportError when there is nothing to report.

    Store calls: one search over the experiment's runs, the epochs of one run per ladder step (the
    curves), the test predictions of the runs a one-seed McNemar test or the confusion matrix
    needs, and the search's Optuna study: a number bounded by the ladder's size, not the store's.
    """
    study = resolve_study(study_name_or_path)
    experiment = experiment or study.name
    runs, config_columns = read_runs(experiment, study)
    ladder, search = read_ladder(runs, config_columns), read_search(runs, study)
    if ladder is None and (search is None or search.trials.empty):
        raise ReportError(f"experiment {experiment!r} in {tracking.tracking_uri()} has no finished ladder steps "
                          f"or search trials; {how_to_make_runs(study)}")
    parents = runs[runs[KIND].isin([Kind.LADDER, Kind.SEARCH])]
    found = Gathered(study, experiment, tracking.tracking_uri(), runs, config_columns, ladder, search,
                     log_run_id=newest(parents)["run_id"] if len(parents) else None)
    predictions = Predictions()
    if ladder is not None:
        ladder.correct = read_correct(ladder, predictions)
    found.confusion = read_confusion(confusion_candidates(runs, ladder, search), data, predictions)
    return found


# ---------------------------------------------------------------------------------------------
# Which study, which runs.


def resolve_study(study_name_or_path) -> StudyInfo:
    """A study file (a path, or a name: studies/NAME.toml here, else shipped); a name with no file is an experiment."""
    text = str(study_name_or_path)
    is_path = text.endswith(".toml") or "/" in text
    path = Path(text) if is_path else find_study(text)
    if not path.is_file():
        if is_path:
            raise ReportError(f"study file {text} not found; give a study file's path, or a shipped study's name "
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


def read_runs(experiment: str, study: StudyInfo) -> tuple[pd.DataFrame, list[str]]:
    """Every run of the experiment, tidied, and the config's column names; a ReportError when there are none."""
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


def _tidy_names(columns) -> tuple[dict, list[str]]:
    """MLflow's column names -> the project's, and the params' names."""
    rename = {"tags.mlflow.runName": "run_name", "tags.mlflow.parentRunId": "parent_run_id"}
    params = [c[len("params."):] for c in columns if c.startswith("params.")]
    rename.update({f"params.{p}": p for p in params})
    taken = {"run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time", *rename.values()}
    for column in columns:
        if column in rename:
            continue
        if column.startswith("metrics."):
            short = column[len("metrics."):]
            rename[column] = short if short not in taken else column
        elif column.startswith("tags."):
            tag = column[len("tags."):]
            rename[column] = col(tag) if col(tag) not in taken else tag
        else:
            continue
        taken.add(rename[column])
    return rename, params


def tidy(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """MLflow's columns under the project's names, and the config's column names.

    Params take the bare name (`dropout_rate`); metrics and the project's tags too unless the name
    is taken (then they keep a prefix: `metrics.learning_rate`, `ablation.seed`); `data.*` tags keep
    theirs. Params and numeric tags become numbers where every value is one.
    """
    rename, params = _tidy_names(frame.columns)
    out = frame.rename(columns=rename)
    for column in params + [c for c in NUMERIC_TAGS if c in out.columns]:
        out[column] = _maybe_numeric(out[column])
    for column in [c for c in COUNT_METRICS if c in out.columns]:
        out[column] = out[column].round().astype("Int64")
    if col(Tag.BASELINE) in out.columns:
        out[col(Tag.BASELINE)] = out[col(Tag.BASELINE)].eq("True")
    if KIND not in out.columns:
        out[KIND] = None
    return _with_seeds(out), params


def _with_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """`seed` (training) and `split_seed` columns on every frame; a run from before the split seed was
    its own field drew its split with the data seed it recorded (the `data.seed` tag)."""
    for column in ("seed", "split_seed"):
        if column not in runs.columns:
            runs[column] = pd.Series(pd.NA, index=runs.index, dtype="Int64")
    data_seed = Tag.DATA_PREFIX + "seed"
    if data_seed in runs.columns:
        recorded = pd.to_numeric(runs[data_seed], errors="coerce").astype("Int64")
        runs["split_seed"] = runs["split_seed"].fillna(recorded)
    return runs


def _maybe_numeric(column: pd.Series) -> pd.Series:
    """A text column as numbers when every value is one ('None' counts as missing); else unchanged.

    Whole numbers written without a point become nullable integers, so that a run without the
    param (a parent run) does not turn `epochs` into 25.0.
    """
    text = column.where(column.ne("None"))
    try:
        numbers = pd.to_numeric(text)
    except (ValueError, TypeError):
        return column
    present = text.dropna().astype(str)
    if len(present) and present.str.fullmatch(r"-?\d+").all():
        return numbers.astype("Int64")
    return numbers




# ---------------------------------------------------------------------------------------------
# The ladder.


@dataclass(frozen=True)
class StepRef:
    """A ladder step as `evidence.ladder_pairs` reads it."""

    name: str
    is_baseline: bool
    compare_to: str | None = None


def read_ladder(runs: pd.DataFrame, config_columns: list[str]) -> Ladder | None:
    """The latest ladder, its replicates, the changes to test and its curves; None when no ladder finished a step."""
    parent, mine = latest_ladder(runs)
    if parent is None:
        return None
    order = list(dict.fromkeys(mine[STEP]))
    seeds = sorted(int(s) for s in mine["seed"].dropna().unique())
    # The curves show one training seed, the first that every step ran with (the ladder's own seed when one).
    shared = [s for s in seeds if all(mine[mine[STEP].eq(n)]["seed"].eq(s).any() for n in order)]
    curve_seed = (shared or seeds or [None])[0]
    steps = pd.DataFrame([_run_at(mine[mine[STEP].eq(name)], curve_seed) for name in order]).reset_index(drop=True)
    refs = [StepRef(r[STEP], bool(r[BASELINE]), _text(r.get(COMPARE_TO))) for _, r in steps.iterrows()]
    pool = replicates(runs, parent, mine, config_columns)
    pairs = evidence.ladder_pairs(refs)
    unfinished = runs[runs[KIND].eq(Kind.LADDER_STEP) & runs["parent_run_id"].eq(parent["run_id"])
                      & ~runs["status"].eq("FINISHED")]
    return Ladder(parent, mine, steps, pool, pairs, seeds, curve_seed, histories(steps["run_id"]),
                  unfinished=unfinished.sort_values("start_time"))


def _run_at(runs: pd.DataFrame, seed) -> pd.Series:
    """The run of that training seed, else the first."""
    at = runs[runs["seed"].eq(seed)] if seed is not None else runs.iloc[:0]
    return (at if len(at) else runs).iloc[0]


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def newest(parents: pd.DataFrame) -> pd.Series:
    """The parent run that ended last, a running one (no end yet) counting as newest.

    Not the one that started last: an interrupted ladder resumed by the same command keeps its
    start time, and it is the ladder the user just finished.
    """
    return parents.sort_values(["end_time", "start_time"], na_position="last").iloc[-1]


def latest_ladder(runs: pd.DataFrame):
    """The newest ladder parent with finished steps (`newest`), and those steps by step then seed; (None, None) if none."""
    steps = runs[runs[KIND].eq(Kind.LADDER_STEP) & runs["status"].eq("FINISHED")]
    parents = runs[runs[KIND].eq(Kind.LADDER) & runs["run_id"].isin(steps["parent_run_id"])]
    if parents.empty:
        return None, None
    parent = newest(parents)
    mine = steps[steps["parent_run_id"].eq(parent["run_id"])]
    if "seed" not in mine.columns:
        mine = mine.assign(seed=pd.NA)
    return parent, mine.sort_values([STEP_INDEX, "seed", "start_time"]).reset_index(drop=True)


def replicates(runs: pd.DataFrame, parent: pd.Series, mine: pd.DataFrame, config_columns) -> pd.DataFrame:
    """The runs the evidence counts: one per step and training seed.

    A step's replicates are the latest ladder's runs of it (one per seed) and the finished runs of
    the same step with the same config but the training seed under any ladder of the same profile
    (a `--seed 1` ladder run after a `--seed 0` one adds seed 1). One run per piece of work (work
    key): a reused copy repeats a run, it does not replicate it. One run per seed: the latest
    ladder's own, else the newest.
    """
    ladders = runs[runs[KIND].eq(Kind.LADDER) & runs[PROFILE].eq(parent[PROFILE])]["run_id"]
    pool = runs[runs[KIND].eq(Kind.LADDER_STEP) & runs["status"].eq("FINISHED")
                & runs["parent_run_id"].isin(ladders) & ~runs["parent_run_id"].eq(parent["run_id"])]
    compare = [c for c in config_columns if c != "seed"]
    chosen = []
    for name in dict.fromkeys(mine[STEP]):
        own = mine[mine[STEP].eq(name)]
        same = _same_config(pool[pool[STEP].eq(name)], own.iloc[0], compare)
        both = pd.concat([same.assign(_own=0), own.assign(_own=1)]).sort_values(["_own", "start_time"])
        work = both[WORK_KEY].fillna(both["run_id"]) if WORK_KEY in both.columns else both["run_id"]
        both = both[~work.duplicated(keep="last")]
        chosen.append(both.drop_duplicates("seed", keep="last"))
    out = pd.concat(chosen).drop(columns="_own")
    return out[out["seed"].notna()].sort_values([STEP_INDEX, "seed"]).reset_index(drop=True)


def _same_config(runs: pd.DataFrame, reference: pd.Series, columns) -> pd.DataFrame:
    """The runs whose values in `columns` are the reference's (both missing counts as the same)."""
    keep = pd.Series(True, index=runs.index)
    for column in columns:
        if column not in runs.columns:
            continue
        if isna(reference.get(column)):  # a knob this step's model does not have
            keep &= runs[column].isna()
        else:
            keep &= runs[column].eq(reference[column]).fillna(False).astype(bool)
    return runs[keep]


def histories(run_ids) -> dict[str, pd.DataFrame]:
    """Per-epoch metrics of each run: a DataFrame indexed by epoch (from 1), one column per metric."""
    out = {}
    for run_id in run_ids:
        recorded = tracking.metric_histories(run_id, EPOCH_METRICS)
        frame = pd.DataFrame({key: pd.Series(dict(values)) for key, values in recorded.items()})
        frame.index.name = "epoch"
        out[run_id] = frame
    return out


# ---------------------------------------------------------------------------------------------
# The search: its latest Optuna study as MLflow recorded it; the study itself for importances.


def read_search(runs: pd.DataFrame, study: StudyInfo) -> Search | None:
    """The Optuna study of the latest search parent run, with every trial any invocation recorded for it."""
    if not runs[KIND].eq(Kind.SEARCH).any():
        return None
    parent = newest(runs[runs[KIND].eq(Kind.SEARCH)])
    space = study.search
    monitor, direction = (space.monitor, space.direction) if space else ("val_accuracy", "maximize")
    name = parent[col(Tag.OPTUNA_STUDY)]
    trials, params = trial_frame(runs, name, monitor)
    log_params = {p.name for p in space.params if p.log} if space else set()
    order = [p.name for p in space.params] if space else []  # the study file's order, not the tag's sorted JSON
    params.sort(key=lambda p: order.index(p) if p in order else len(order))
    trials = trials[[c for c in trials.columns if c not in params] + params]
    search = Search(name, parent, trials, params, log_params, monitor, direction, space)
    search.importances, search.importance_note = importances(search)
    return search


def trial_frame(runs: pd.DataFrame, optuna_study: str, monitor: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per trial number of an Optuna study (its newest run), and the searched params' names."""
    state = col(Tag.TRIAL_STATE)
    # A run still RUNNING has no state yet; the newest run of a trial number is the one that counts.
    states = runs[state] if state in runs.columns else pd.Series("", index=runs.index)
    trials = runs[runs[KIND].eq(Kind.SEARCH_TRIAL) & runs[col(Tag.OPTUNA_STUDY)].eq(optuna_study)
                  & states.isin(["complete", "pruned", "failed"])]
    number = col(Tag.OPTUNA_TRIAL)
    trials = trials.sort_values("start_time").drop_duplicates(number, keep="last").sort_values(number)
    rows, params = [], []
    for _, run in trials.iterrows():
        searched = run.get(col(Tag.SEARCH_PARAMS))
        searched = json.loads(searched) if isinstance(searched, str) else {}
        params += [p for p in searched if p not in params]
        value = run.get(f"best_{monitor}") if run[state] == "complete" else run.get(monitor)
        rows.append({"number": int(run[number]), "state": run[state], "value": value,
                     "test_accuracy": run.get("test_accuracy"), "epochs_run": run.get("epochs_run"),
                     "epochs": run.get("epochs"), "run_id": run["run_id"], "run_name": run["run_name"], **searched})
    columns = ["number", "state", "value", "test_accuracy", "epochs_run", "epochs", "run_id", "run_name", *params]
    return pd.DataFrame(rows, columns=columns), params


def importances(search: Search) -> tuple[dict | None, str]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA) of the study; (None, why) if not."""
    location = search.parent.get(col(Tag.OPTUNA_STORAGE), "")
    if search.parent.get(col(Tag.OPTUNA_STORAGE_KIND)) == "journal" and not Path(location).is_file():
        return None, f"parameter importances need the Optuna study; its journal {location} is not on this machine"
    try:
        storage, _, _ = tracking.open_storage(location)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=search.name, storage=storage)
        return optuna.importance.get_param_importances(study), ""
    # Storage errors come from SQLAlchemy or the journal and too few trials from the evaluator: the
    # importances are one figure of many, so their failure is a note in the report, not a crash.
    except Exception as error:  # noqa: BLE001
        return None, f"parameter importances skipped ({type(error).__name__}: {error})"
