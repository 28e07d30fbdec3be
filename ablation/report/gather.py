"""What the report reads: the experiment's runs from MLflow, a few runs' epochs and predictions, the
search's Optuna study. The only part of the report that touches a store, and it only reads.

Which runs: the latest ladder parent run of the study (its kind tag is `Kind.LADDER`) that has
finished steps, and those steps. A step's replicas are the finished runs of the same step with the
same config except the seed, under any ladder parent with the same profile, one per distinct piece
of work (its work key), so a reused copy of a run is not counted twice.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from ablation import tracking
from ablation.config import EPOCH_METRICS, SearchSpace, StudyError, load_study
from ablation.data import DataError, load_cifar10, make_splits, resolve_data_path
from ablation.report import DEFAULT_STUDY, ReportError
from ablation.tracking import Kind, Tag


def col(tag: str) -> str:
    """The runs frame's column of a project tag: its name without the prefix (`Tag.STEP` -> `step`)."""
    return tag[len(Tag.PREFIX):] if tag.startswith(Tag.PREFIX) else tag


KIND, STEP, STEP_INDEX, PROFILE, WORK_KEY = (col(t) for t in (Tag.KIND, Tag.STEP, Tag.STEP_INDEX, Tag.PROFILE,
                                                              Tag.WORK_KEY))
COUNT_METRICS = ("epochs_run", "num_params", "flops")  # whole numbers that MLflow stores as floats
# Tags holding numbers; other tags stay text (a hex digest such as '12e4...' must not become a float).
NUMERIC_TAGS = tuple(col(t) for t in (Tag.STEP_INDEX, Tag.REPORTED_TEST_ACCURACY, Tag.OPTUNA_TRIAL,
                                      Tag.PRUNED_AT_EPOCH))


@dataclass(frozen=True)
class StudyInfo:
    """What the report needs of a study: its name (the MLflow experiment), title and file."""

    name: str
    title: str
    source: str = ""
    path: Path | None = None
    search: SearchSpace | None = None


@dataclass
class Ladder:
    """The latest ladder: its parent run, its steps in order, each step's replicas and epochs."""

    parent: pd.Series
    steps: pd.DataFrame
    replicas: dict[str, pd.DataFrame]
    histories: dict[str, pd.DataFrame]  # run id -> per-epoch metrics, indexed by epoch (from 1)


@dataclass
class Search:
    """The trials of the latest search's Optuna study, one row per trial number."""

    name: str  # the Optuna study
    parent: pd.Series  # the latest search parent run
    trials: pd.DataFrame  # number, state, value, test_accuracy, epochs_run, epochs, run_id, run_name, params
    params: list[str]
    log_params: set[str]
    monitor: str
    direction: str
    importances: dict | None = None
    importance_note: str = ""


@dataclass
class Confusion:
    """The best run's test predictions and labels; a note instead when they cannot be had."""

    run: pd.Series | None = None
    labels: np.ndarray | None = None
    predictions: list | None = None
    class_names: list | None = None
    note: str = ""


@dataclass
class Gathered:
    """Everything the report shows, as read from the store."""

    study: StudyInfo
    experiment: str
    uri: str
    runs: pd.DataFrame  # every run of the experiment, tidy
    config_columns: list[str]
    ladder: Ladder | None
    search: Search | None
    confusion: Confusion = field(default_factory=Confusion)
    log_run_id: str | None = None  # the study's latest parent run


def gather(study_name_or_path=DEFAULT_STUDY, experiment=None, data=None) -> Gathered:
    """Read what the report needs; a ReportError when there is nothing to report."""
    study = resolve_study(study_name_or_path)
    experiment = experiment or study.name
    runs, config_columns = read_runs(experiment, study)
    ladder, search = read_ladder(runs, config_columns), read_search(runs, study)
    if ladder is None and (search is None or search.trials.empty):
        raise ReportError(f"experiment {experiment!r} in {tracking.tracking_uri()} has no finished ladder steps "
                          f"or search trials; {how_to_make_runs(study)}")
    parents = runs[runs[KIND].isin([Kind.LADDER, Kind.SEARCH])].sort_values("start_time")
    found = Gathered(study, experiment, tracking.tracking_uri(), runs, config_columns, ladder, search,
                     log_run_id=parents["run_id"].iloc[-1] if len(parents) else None)
    # The best run on the test set: among the ladder's steps and the search's trials.
    reported = list(ladder.steps["run_id"]) if ladder is not None else []
    if search is not None:
        reported += list(search.trials["run_id"])
    found.confusion = read_confusion(runs[runs["run_id"].isin(reported)], data)
    return found


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
    return out, params


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


def isna(value) -> bool:
    """None, NaN or pandas' NA: a value a run does not have."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


# ---------------------------------------------------------------------------------------------
# The ladder.


def read_ladder(runs: pd.DataFrame, config_columns: list[str]) -> Ladder | None:
    """The latest ladder with its replicas and its steps' epochs; None when no ladder finished a step."""
    parent, steps = latest_ladder(runs)
    if parent is None:
        return None
    return Ladder(parent, steps, replicas(runs, parent, steps, config_columns), histories(steps["run_id"]))


def latest_ladder(runs: pd.DataFrame):
    """The newest ladder parent with finished steps, and those steps in order; (None, None) if none."""
    steps = runs[runs[KIND].eq(Kind.LADDER_STEP) & runs["status"].eq("FINISHED")]
    parents = runs[runs[KIND].eq(Kind.LADDER) & runs["run_id"].isin(steps["parent_run_id"])]
    if parents.empty:
        return None, None
    parent = parents.sort_values("start_time").iloc[-1]
    mine = steps[steps["parent_run_id"].eq(parent["run_id"])].sort_values(STEP_INDEX)
    return parent, mine.reset_index(drop=True)


def replicas(runs, parent, steps, config_columns) -> dict[str, pd.DataFrame]:
    """Each step's replicas: same step, same config but the seed, a ladder of the same profile; one per work key."""
    ladders = runs[runs[KIND].eq(Kind.LADDER) & runs[PROFILE].eq(parent[PROFILE])]["run_id"]
    pool = runs[runs[KIND].eq(Kind.LADDER_STEP) & runs["status"].eq("FINISHED")
                & runs["parent_run_id"].isin(ladders)]
    compare = [c for c in config_columns if c != "seed"]
    groups = {}
    for _, step in steps.iterrows():
        same = pool[pool[STEP].eq(step[STEP])]
        for column in compare:
            if isna(step[column]):  # a knob this step's model does not have
                same = same[same[column].isna()]
            else:
                same = same[same[column].eq(step[column]).fillna(False).astype(bool)]
        # The newest run of each piece of work: a ladder that reused a run repeats it, it does not replicate it.
        groups[step[STEP]] = same.sort_values("start_time").drop_duplicates(WORK_KEY, keep="last")
    return groups


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
    parent = runs[runs[KIND].eq(Kind.SEARCH)].sort_values("start_time").iloc[-1]
    space = study.search
    monitor, direction = (space.monitor, space.direction) if space else ("val_accuracy", "maximize")
    name = parent[col(Tag.OPTUNA_STUDY)]
    trials, params = trial_frame(runs, name, monitor)
    log_params = {p.name for p in space.params if p.log} if space else set()
    order = [p.name for p in space.params] if space else []  # the study file's order, not the tag's sorted JSON
    params.sort(key=lambda p: order.index(p) if p in order else len(order))
    trials = trials[[c for c in trials.columns if c not in params] + params]
    search = Search(name, parent, trials, params, log_params, monitor, direction)
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


# ---------------------------------------------------------------------------------------------
# The confusion matrix of the best run: predictions from its artifact, labels logged or re-derived.


def read_confusion(candidates: pd.DataFrame, data) -> Confusion:
    """The best run (highest test accuracy) that logged its test predictions, and its test labels."""
    for _, run in candidates.sort_values("test_accuracy", ascending=False, na_position="last").iterrows():
        payload = tracking.load_json_artifact(run["run_id"], "test_predictions.json")
        if payload is not None:
            break
    else:
        return Confusion(note="no run of this report logged test_predictions.json; nothing to draw")
    labels, note = test_labels(run, payload, data)
    if labels is not None and len(labels) != len(payload["predictions"]):
        labels, note = None, (f"no confusion matrix: {len(labels)} test labels for {len(payload['predictions'])} "
                              f"predictions of run {run['run_name']}")
    if labels is None:
        return Confusion(note=note)
    return Confusion(run, labels, payload["predictions"], payload["class_names"])


def test_labels(run: pd.Series, payload: dict, data) -> tuple[np.ndarray | None, str]:
    """The run's true test labels: logged beside its predictions, else re-drawn from the data it recorded."""
    if "labels" in payload:
        return np.asarray(payload["labels"]), ""
    path = resolve_data_path(data)
    if path is None:
        return None, ("the run did not log its test labels and no data was given: pass --data PATH "
                      "(or set ABLATION_DATA) to draw the confusion matrix")
    whole = lambda value: None if isna(value) else int(value)  # noqa: E731
    split_seed = run.get("split_seed")
    try:
        splits = make_splits(load_cifar10(path), validation_split=float(run["validation_split"]),
                             seed=int(run["seed"] if isna(split_seed) else split_seed),
                             train_subset=whole(run["train_subset"]), test_subset=whole(run["test_subset"]))
    except DataError as error:
        return None, f"no confusion matrix: {error}"
    recorded = run.get(Tag.DATA_PREFIX + "digest")
    if splits.fingerprint["digest"] != recorded:
        return None, (f"no confusion matrix: the data at {path} is not the data run {run['run_name']} used "
                      f"(digest {splits.fingerprint['digest']}, the run recorded {recorded})")
    return splits.y_test, ""
