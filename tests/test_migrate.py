"""python -m ablation.migrate: an embedded store (SQLite + journal) copied whole into a second pair of stores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.tracking import Kind, Tag

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def laptop(tmp_path, monkeypatch):
    """A source store: a ladder parent with two steps (one reused from the other), artifacts, and a journal study."""
    store = tmp_path / "laptop"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    experiment = tracking.experiment_id("moved")
    with tracking.run(experiment, "moved-smoke", {Tag.KIND: Kind.LADDER}) as parent:
        with tracking.run(experiment, "first", {Tag.KIND: Kind.LADDER_STEP, Tag.WORK_KEY: "k1"}, nested=True) as first:
            tracking.log_metrics({"val_accuracy": 0.25}, step=1)
            tracking.log_metrics({"val_accuracy": 0.5}, step=2)
            mlflow.log_params({"epochs": 2, "dropout_rate": 0.1})
            tracking.log_dict({"labels": [1, 2]}, "test_predictions.json")
        tracking.copy_run(tracking.get_run(first.info.run_id), experiment, "again", {Tag.WORK_KEY: "k1"})
    storage, _, _ = tracking.open_storage(None)  # the journal beside the store
    study = optuna.create_study(storage=storage, study_name="moved-smoke", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    return store, parent.info.run_id


def migrate(source: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{source}/mlflow.db", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ablation.migrate", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_every_run_and_study_is_copied_with_links_remapped_and_a_second_run_copies_nothing(laptop, tmp_path):
    source, parent_id = laptop
    target_uri, target_storage = f"sqlite:///{tmp_path}/cluster/mlflow.db", f"sqlite:///{tmp_path}/cluster/optuna.db"
    done = migrate(source, "--to-tracking", target_uri, "--to-storage", target_storage)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 run(s) copied" in done.stdout and "1 study(ies) copied" in done.stdout, done.stdout

    old, new = MlflowClient(f"sqlite:///{source}/mlflow.db"), MlflowClient(target_uri)
    experiment = new.get_experiment_by_name("moved").experiment_id
    copies = {r.data.tags["mlflow.runName"]: r for r in new.search_runs([experiment])}
    originals = {r.data.tags["mlflow.runName"]: r for r in old.search_runs([old.get_experiment_by_name("moved").experiment_id])}
    assert sorted(copies) == sorted(originals) == ["again", "first", "moved-smoke"]
    for name, copy in copies.items():
        original = originals[name]
        assert copy.data.tags[Tag.MIGRATED_FROM] == original.info.run_id != copy.info.run_id
        assert (copy.data.params, copy.data.metrics) == (original.data.params, original.data.metrics)
        assert (copy.info.status, copy.info.start_time, copy.info.end_time) == \
               (original.info.status, original.info.start_time, original.info.end_time)
    # Parent links and reuse point at the copies.
    assert copies["first"].data.tags["mlflow.parentRunId"] == copies["moved-smoke"].info.run_id
    assert copies["again"].data.tags["mlflow.parentRunId"] == copies["moved-smoke"].info.run_id
    assert copies["again"].data.tags[Tag.REUSED_FROM] == copies["first"].info.run_id
    history = new.get_metric_history(copies["first"].info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.25), (2, 0.5)]
    local = new.download_artifacts(copies["again"].info.run_id, "test_predictions.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"labels": [1, 2]}
    assert parent_id in {c.data.tags[Tag.MIGRATED_FROM] for c in copies.values()}

    moved = optuna.load_study(study_name="moved-smoke", storage=target_storage)
    source_study = optuna.load_study(study_name="moved-smoke", storage=tracking.open_storage(
        str(source / "optuna.journal"))[0])
    assert [t.params for t in moved.trials] == [t.params for t in source_study.trials]
    assert [t.value for t in moved.trials] == [t.value for t in source_study.trials] and len(moved.trials) == 2

    again = migrate(source, "--to-tracking", target_uri, "--to-storage", target_storage)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 run(s) copied" in again.stdout and "3 copied before" in again.stdout
    assert "already there, not copied again: ['moved-smoke']" in again.stdout
    assert len(new.search_runs([experiment])) == 3


def test_a_missing_source_store_is_an_input_error(tmp_path):
    done = migrate(tmp_path / "nothing", "--to-tracking", f"sqlite:///{tmp_path}/cluster/mlflow.db")
    assert done.returncode == 2 and "no such store" in done.stderr
    assert not (tmp_path / "cluster").exists()
