"""Moving a study's stores (the embedded ones on a laptop to servers): python -m ablation.migrate."""

import tempfile
from pathlib import Path

import filelock
import optuna
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from ablation.tracking.store import DEFAULT_STORE, _sqlite_dir
from ablation.tracking.tags import Tag


def copy_store(source_uri: str, target_uri: str, say=print) -> tuple[int, int]:
    """Copy every run of one MLflow store into another; (runs copied, runs skipped as copied before).

    Experiments by name; each run whole (tags, params, metric histories, artifacts, status and
    times), its parent link and `reused_from` remapped to the copies. A run copied before (tag
    `ablation.migrated_from`) is skipped, so an interrupted migration is finished by running it again.
    """
    source, target = MlflowClient(source_uri), _store_client(target_uri)
    copied = skipped = 0
    for experiment in source.search_experiments():
        runs = _all_runs(source, experiment.experiment_id)
        if not runs:
            continue
        target_id = _store_experiment(target, target_uri, experiment.name)
        ids = {r.data.tags[Tag.MIGRATED_FROM]: r.info.run_id for r in _all_runs(target, target_id)
               if Tag.MIGRATED_FROM in r.data.tags}
        for run in _parents_first(runs):
            if run.info.run_id in ids:
                skipped += 1
                continue
            ids[run.info.run_id] = _copy_between(source, target, run, target_id, ids)
            copied += 1
        say(f"experiment {experiment.name!r}: {len(runs)} runs")
    return copied, skipped


def _store_client(uri: str) -> MlflowClient:
    """A client of another store; a SQLite one is created (tables too) under the same lock as `connect`."""
    folder = _sqlite_dir(uri)
    if folder is None:
        return MlflowClient(uri)
    folder.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(folder / ".mlflow-create.lock"):
        return MlflowClient(uri)


def _store_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment `name` of another store, created there (artifacts beside a SQLite store) if missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    folder = _sqlite_dir(uri)
    return client.create_experiment(name, artifact_location=(folder / "artifacts" / name).resolve().as_uri()
                                    if folder else None)


def _all_runs(client: MlflowClient, experiment: str) -> list:
    """Every run of an experiment, oldest first, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], max_results=1000, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parents_first(runs: list) -> list:
    """The runs ordered so that a parent comes before its children (parent links are remapped as copied)."""
    ids, ordered, placed = {r.info.run_id for r in runs}, [], set()
    pending = list(runs)
    while pending:
        ready = [r for r in pending if r.data.tags.get("mlflow.parentRunId") not in ids - placed]
        ordered += ready
        placed |= {r.info.run_id for r in ready}
        pending = [r for r in pending if r.info.run_id not in placed] if ready else []
    return ordered


def _copy_between(source: MlflowClient, target: MlflowClient, run, experiment: str, ids: dict) -> str:
    """One run into another store; returns its new id."""
    tags = {**run.data.tags, Tag.MIGRATED_FROM: run.info.run_id}
    for link in ("mlflow.parentRunId", Tag.REUSED_FROM):
        if link in tags and tags[link] in ids:
            tags[link] = ids[tags[link]]
    new_id = target.create_run(experiment, start_time=run.info.start_time, tags=tags).info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    metrics = [m for key in run.data.metrics for m in source.get_metric_history(run.info.run_id, key)]
    for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits: 100 params, 1,000 metrics
        target.log_batch(new_id, params=params[start:start + 100], metrics=metrics[start:start + 100])
    with tempfile.TemporaryDirectory() as folder:
        local = source.download_artifacts(run.info.run_id, "", folder)
        if any(Path(local).iterdir()):
            target.log_artifacts(new_id, local)
    if run.info.status != "RUNNING":
        target.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    return new_id


def journal_beside(uri: str) -> Path:
    """The search's default Optuna journal for the MLflow store `uri`: beside a SQLite store, else in ./mlruns."""
    return (_sqlite_dir(uri) or DEFAULT_STORE) / "optuna.journal"


def copy_studies(source, target, say=print) -> tuple[list[str], list[str]]:
    """Copy every Optuna study of one storage into another (optuna.copy_study); (copied, already there)."""
    copied, present = [], []
    existing = set(optuna.get_all_study_names(target))
    for name in optuna.get_all_study_names(source):
        if name in existing:
            present.append(name)
            continue
        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
        say(f"Optuna study {name!r}: {len(optuna.load_study(study_name=name, storage=target).trials)} trials")
        copied.append(name)
    return copied, present
