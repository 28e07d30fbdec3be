"""Tracking on a real MLflow store in a temp folder: runs that always end, reuse of finished work, the stale sweep."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.tracking import Kind, Tag


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_runs_end_finished_failed_or_killed(store):
    experiment = tracking.experiment_id("t")
    with tracking.run(experiment, "ok", {Tag.KIND: Kind.LADDER}):
        pass
    with pytest.raises(ValueError), tracking.run(experiment, "bad", {Tag.KIND: Kind.LADDER}):
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracking.run(experiment, "stopped", {Tag.KIND: Kind.LADDER}):
        raise KeyboardInterrupt
    runs = {r.data.tags["mlflow.runName"]: r for r in MlflowClient().search_runs([experiment])}
    assert {name: r.info.status for name, r in runs.items()} == {"ok": "FINISHED", "bad": "FAILED", "stopped": "KILLED"}
    assert runs["bad"].data.tags[Tag.ERROR] == "ValueError: boom"
    assert runs["ok"].data.tags[Tag.PID] == str(os.getpid()) and runs["ok"].data.tags[Tag.CODE_VERSION]


def test_a_finished_run_is_found_by_its_work_key_and_copied_whole(store):
    experiment = tracking.experiment_id("t")
    with tracking.run(experiment, "first", {Tag.WORK_KEY: "k1"}) as first:
        tracking.log_metrics({"val_accuracy": 0.2}, step=1)
        tracking.log_metrics({"val_accuracy": 0.3}, step=2)
        tracking.log_text("hello", "note.txt")
        mlflow.log_param("epochs", 2)
    assert tracking.find_finished(experiment, "missing") is None
    found = tracking.find_finished(experiment, "k1")
    assert found.info.run_id == first.info.run_id
    with tracking.run(experiment, "parent", {}):
        copy = tracking.copy_run(found, experiment, "again", {Tag.STEP: "again"})
    client = MlflowClient()
    assert copy.data.tags[Tag.REUSED_FROM] == first.info.run_id and copy.data.params == {"epochs": "2"}
    assert [m.value for m in client.get_metric_history(copy.info.run_id, "val_accuracy")] == [0.2, 0.3]
    assert [a.path for a in client.list_artifacts(copy.info.run_id)] == ["note.txt"]


def test_a_run_left_running_by_a_killed_process_is_swept(store):
    script = textwrap.dedent("""
        import os, time
        from ablation import tracking
        experiment = tracking.experiment_id("t")
        with tracking.run(experiment, "doomed", {}):
            print("started", flush=True)
            time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    experiment = tracking.experiment_id("t")
    [run] = MlflowClient().search_runs([experiment])
    assert run.info.status == "RUNNING"  # nothing in the dead process could close it
    assert tracking.sweep_stale_runs(experiment) == [run.info.run_id]
    swept = MlflowClient().get_run(run.info.run_id)
    assert swept.info.status == "KILLED" and "process died" in swept.data.tags[Tag.ERROR]


def test_write_run_records_a_whole_run_under_a_parent(store):
    experiment = tracking.experiment_id("t")
    parent = tracking.write_run(experiment, "p", tags={Tag.KIND: Kind.LADDER}, params={}, metrics=[])
    child = tracking.write_run(experiment, "c", tags={Tag.KIND: Kind.LADDER_STEP}, params={"lr_schedule": [[1, 0.1]]},
                               metrics=[("val_accuracy", 0.5, 1), ("val_accuracy", 0.6, 2)], parent_run_id=parent)
    run = MlflowClient().get_run(child)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
    assert json.loads(run.data.params["lr_schedule"]) == [[1, 0.1]] and run.data.metrics["val_accuracy"] == 0.6


def test_data_tags_carry_the_fingerprint():
    assert tracking.data_tags({"digest": "abc", "train_size": 128}) == {"data.digest": "abc", "data.train_size": "128"}


def test_the_default_optuna_storage_is_a_journal_beside_the_store(store):
    _, kind, where = tracking.open_storage(None)
    assert kind == "journal" and where == str((store / "optuna.journal").resolve())
