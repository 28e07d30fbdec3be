"""Many workers, one study: a real PostgreSQL cluster (Optuna's RDB storage) and a real MLflow tracking server.

The cluster and the server are started once per session (fixtures `postgres` and `mlflow_tracking_server`
in conftest.py, from `tests/servers.py`): about 2 s and 15 s here.
Optuna and MLflow get a database each: both keep an `alembic_version` table.
"""

import collections
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import types
import urllib.request
from pathlib import Path

import pytest

from conftest import tiny_study_text

REPO = Path(__file__).resolve().parents[1]
DATABASE_NUMBERS = itertools.count()

TINY_STUDY = tiny_study_text('[[steps]]\nname = "small"\n', name="tiny_pg", after="""
[search]
monitor = "val_accuracy"

[search.params.dropout_rate]
type = "float"
low = 0.0
high = 0.5

[search.params.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true
""")


@pytest.fixture
def database(postgres):
    """A fresh, empty database of the session's cluster for one test; its SQLAlchemy URL."""
    return postgres.create_database(f"test_{next(DATABASE_NUMBERS)}")


def env_with(**extra) -> dict:
    """The environment for a command: this checkout's `ablation` first (the venv may hold another)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def all_at_once(count: int, work) -> list[str]:
    """Run `work(index, start)` in `count` threads that pass `start()` together; each failure, in one line.

    Threads stand in for worker processes where the race is in a database: they start together without
    paying imports."""
    together, errors = threading.Barrier(count), []

    def thread(index):
        try:
            work(index, together.wait)
        except Exception as error:  # noqa: BLE001 - every failure is reported by the caller
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")

    threads = [threading.Thread(target=thread, args=(index,)) for index in range(count)]
    for each in threads:
        each.start()
    for each in threads:
        each.join(120)
    return errors


# ---------------------------------------------------------------------------------------------


def test_cluster_accepts_connections_and_optuna_creates_a_study_on_it(database):
    import optuna
    import sqlalchemy

    engine = sqlalchemy.create_engine(database)
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
        assert connection.execute(sqlalchemy.text("select inet_server_addr()")).scalar() == "127.0.0.1"
    engine.dispose()

    storage = optuna.storages.RDBStorage(database)
    study = optuna.create_study(storage=storage, study_name="pg", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="pg", storage=optuna.storages.RDBStorage(database))
    assert [t.state.name for t in again.trials] == ["COMPLETE", "COMPLETE"]
    assert again.best_value == max(t.params["x"] for t in study.trials)

    # The search's --storage takes the URL with or without the driver: SQLAlchemy 2.1 reads a plain
    # postgresql:// as postgresql+psycopg:// (psycopg 3), so the `postgres` extra installs both drivers.
    from ablation import tracking

    for url in (database, database.replace("postgresql+psycopg2://", "postgresql://")):
        storage, kind, where = tracking.open_storage(url)
        assert kind == "postgresql" and where == url
        assert optuna.load_study(study_name="pg", storage=storage).best_value == again.best_value


def test_mlflow_server_logs_and_reads_back_through_http(mlflow_tracking_server, tmp_path):
    from mlflow.tracking import MlflowClient

    url = mlflow_tracking_server
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        assert answer.status == 200
    # A client process configured only by MLFLOW_TRACKING_URI, as the search's workers are.
    client_code = textwrap.dedent("""
        import mlflow
        mlflow.set_experiment("pg_client")
        with mlflow.start_run(run_name="client") as run:
            mlflow.log_param("depth", 3)
            mlflow.log_metric("val_accuracy", 0.5, step=1)
            mlflow.log_text("hello through the proxy", "notes/hello.txt")
        print(run.info.run_id)
    """)
    done = subprocess.run([sys.executable, "-c", client_code], capture_output=True, text=True, timeout=300,
                          env=env_with(MLFLOW_TRACKING_URI=url), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store

    client = MlflowClient(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"depth": "3"} and run.data.metrics == {"val_accuracy": 0.5}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, not a client path
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/hello.txt"]
    local = client.download_artifacts(run_id, "notes/hello.txt", str(tmp_path))
    assert Path(local).read_text() == "hello through the proxy"


def test_workers_opening_a_fresh_storage_together_all_succeed(postgres):
    """Each worker opens the storage as it starts: on an empty database that creates Optuna's schema.

    Two databases, two openers each (threads: `all_at_once`): each pair collided every time here before
    `tracking.rdb_storage` retried the creation.
    """
    from ablation import tracking

    urls = [postgres.create_database(f"fresh_{next(DATABASE_NUMBERS)}") for _ in range(2)]

    def worker(index, start):
        start()
        tracking.open_storage(urls[index // 2])

    errors = all_at_once(2 * len(urls), worker)
    assert not errors, f"{len(errors)} of {2 * len(urls)} workers could not open a fresh storage: {errors}"


@pytest.mark.slow
def test_two_workers_share_one_study_through_postgres_and_the_tracking_server(
        postgres, mlflow_tracking_server, cifar_path, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from ablation.tracking import Tag

    storage_url = postgres.create_database("search_e2e")  # empty: the workers create Optuna's schema together
    study_file = tmp_path / "tiny_pg.toml"
    study_file.write_text(TINY_STUDY)
    args = ["--study", str(study_file), "--profile", "smoke", "--trials", "2", "--storage", storage_url,
            "--data", str(cifar_path)]
    env = env_with(MLFLOW_TRACKING_URI=mlflow_tracking_server, ABLATION_DATA=str(cifar_path))
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    try:
        for log in logs:
            with open(log, "w") as out:
                workers.append(subprocess.Popen([sys.executable, "-m", "ablation.search", *args], env=env,
                                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        for worker in workers:
            worker.wait(timeout=600)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, log in zip(workers, logs):
        output = log.read_text()
        assert worker.returncode == 0, output
        assert "(postgresql)" in output and f"tracking: {mlflow_tracking_server}" in output

    # Optuna: four finished trials in the PostgreSQL storage, two from each worker.
    trials = optuna.load_study(study_name="tiny_pg-smoke", storage=storage_url).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert sorted(collections.Counter(t.user_attrs["worker"] for t in trials).values()) == [2, 2]

    # MLflow, read through the server: four trial runs, none left RUNNING, each under its worker's parent.
    client = MlflowClient(mlflow_tracking_server)
    experiment = client.get_experiment_by_name("tiny_pg")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ablation.kind") == "search"]
    trial_runs = [r for r in runs if r.data.tags.get("ablation.kind") == "search_trial"]
    assert len(trial_runs) == 4 and len(parents) == 2
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert all(r.info.status == "FINISHED" and r.data.tags[Tag.TRIAL_STATE] == "complete" for r in trial_runs)
    assert sorted(int(r.data.tags["ablation.optuna_trial"]) for r in trial_runs) == [0, 1, 2, 3]
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in trial_runs}
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {p.info.run_id for p in parents}
    for parent in parents:
        assert parent.data.tags["ablation.optuna_storage_kind"] == "postgresql"
        assert "best_step.toml" in {a.path for a in client.list_artifacts(parent.info.run_id)}  # uploaded via proxy


def test_runs_logging_the_same_images_together_through_the_server_all_succeed(mlflow_tracking_server):
    """Every run logs its images as MLflow dataset inputs, keyed by (experiment, name, digest). MLflow looks the
    dataset up, then inserts it: runs of workers that start together race, and the losers hit PostgreSQL's unique
    key ("duplicate key value violates unique constraint"). A loser links the row the winner made.

    Eight runs in threads (`all_at_once`); before the fix, a queued ladder's unit failed so, with three test
    workers on two cores.
    """
    import mlflow
    import numpy as np

    from ablation.tracking import record

    client = mlflow.MlflowClient(mlflow_tracking_server)
    experiment = client.create_experiment(f"datasets_{next(DATABASE_NUMBERS)}")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 16)
    splits = types.SimpleNamespace(fingerprint={"dataset": "cifar10", "digest": "0123456789abcdef"},
                                   x_train=images, y_train=labels, x_val=images[:8], y_val=labels[:8],
                                   x_test=images[8:], y_test=labels[8:])
    workers, runs = 8, []

    def worker(index, start):
        with mlflow.start_run(experiment_id=experiment) as run:  # the active run is the thread's own
            runs.append(run.info.run_id)
            start()
            record.log_datasets(splits, None)

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_tracking_server)
    try:
        errors = all_at_once(workers, worker)
    finally:
        mlflow.set_tracking_uri(previous)
    assert not errors, f"{len(errors)} of {workers} runs could not log their images: {errors}"
    assert len(runs) == workers
    for run_id in runs:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == ["cifar10-test", "cifar10-train", "cifar10-validation"]
