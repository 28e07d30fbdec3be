"""Tracking: the only module that talks to MLflow and opens Optuna storages.

Default store: a SQLite database `mlruns/mlflow.db` with artifacts in `mlruns/artifacts/`
(MLflow 3.13+ refuses its legacy folder store). `MLFLOW_TRACKING_URI` points elsewhere: another
SQLite file (artifacts go beside it), a database, or a tracking server. The search's default
Optuna storage is a journal file beside the SQLite store (see `open_storage`).
"""

import contextlib
import importlib.metadata
import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlencode

import filelock
import mlflow
import mlflow.data
import optuna
import pandas as pd
import psutil
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import Metric, Param
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

import ablation
from ablation.config import StoreError, StudyError

DEFAULT_STORE = Path("mlruns")
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # Optuna RDB storages only; $ABLATION_HEARTBEAT / $ABLATION_GRACE
MAX_RETRIES = 2  # times a trial whose worker died is queued again
PROBE_SECONDS = 5  # how long a store check waits for a server or a database before it gives up
KERAS_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # what Keras downloads
KERAS_URLS = {"cifar10": KERAS_CIFAR10_URL, "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
              "mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
              "fashion_mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"}  # by the config's data
UI_ADDRESS = "http://127.0.0.1:5000"  # where the README's `mlflow ui` serves an embedded store
# The experiment kind MLflow's UI reads: "model training" opens on the runs, not the GenAI traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class Tag:
    """The project's MLflow tags (and the Optuna study attributes of a search), each named once."""

    PREFIX = "ablation."
    DATA_PREFIX = "data."  # the data fingerprint: data.source, data.digest, data.train_size, ...
    # Who a run is.
    KIND = PREFIX + "kind"  # one of the Kind values
    STUDY = PREFIX + "study"
    PROFILE = PREFIX + "profile"
    DESCRIPTION = PREFIX + "description"
    NOTE = "mlflow.note.content"  # MLflow's own description of a run, shown on its page and in the list
    OVERRIDES = PREFIX + "overrides"  # the --set values a command ran with (JSON), "{}" for none
    # A ladder step.
    STEP = PREFIX + "step"
    STEP_INDEX = PREFIX + "step_index"
    ORDER = PREFIX + "order"  # "003-seed00001": as text (the UI sorts tags so) it sorts a ladder's runs in its order
    BASELINE = PREFIX + "baseline"
    REPORTED_TEST_ACCURACY = PREFIX + "reported_test_accuracy"
    # The work a run did, and where it came from.
    CONFIG_HASH = PREFIX + "config_hash"
    WORK_KEY = PREFIX + "work_key"
    SEED = PREFIX + "seed"  # the training seed of a run; a ladder parent lists all of them in SEEDS
    SPLIT_SEED = PREFIX + "split_seed"  # which images were train / validation / test subset
    SEEDS = PREFIX + "seeds"  # on a ladder parent: the JSON list of training seeds every step ran with
    COMPARE_TO = PREFIX + "compare_to"  # on a baseline: the step its change is tested against
    # On a ladder parent: the equivalence margin (accuracy, 0.01 = 1 point) and the family-wise level its
    # verdicts used, so that the report judges the changes as the ladder did.
    ROPE = PREFIX + "rope"
    ALPHA = PREFIX + "alpha"
    REUSED_FROM = PREFIX + "reused_from"
    MIGRATED_FROM = PREFIX + "migrated_from"  # on a run copied by python -m ablation.migrate: its id in the source
    PLAN_KEY = PREFIX + "plan_key"  # on a parent: its units' work, so that the same command resumes it
    RESUMED_AT_EPOCH = PREFIX + "resumed_at_epoch"  # the epoch a killed run's checkpoint took it on from
    STOPPED_EARLY = PREFIX + "stopped_early"
    BN_STATISTICS = PREFIX + "bn_statistics"  # which BatchNormalization statistics evaluation used (moving | recomputed)
    ERROR = PREFIX + "error"
    # The process that ran it (the stale-run sweep reads these).
    HOST = PREFIX + "host"
    PID = PREFIX + "pid"
    CODE_VERSION = PREFIX + "code_version"
    # The search.
    OPTUNA_STUDY = PREFIX + "optuna_study"
    OPTUNA_STORAGE = PREFIX + "optuna_storage"
    OPTUNA_STORAGE_KIND = PREFIX + "optuna_storage_kind"
    OPTUNA_TRIAL = PREFIX + "optuna_trial"
    BASE_STEP = PREFIX + "base_step"
    PRUNER = PREFIX + "pruner"
    TRIAL_STATE = PREFIX + "trial_state"  # complete | pruned | failed
    PRUNED_AT_EPOCH = PREFIX + "pruned_at_epoch"
    SEARCH_PARAMS = PREFIX + "search_params"
    # Optuna study attributes that identify a search (a resumed study must match them).
    BASE_CONFIG = PREFIX + "base_config"
    MONITOR = PREFIX + "monitor"
    SEARCH_SPACE = PREFIX + "search_space"
    # An attribution design (python -m ablation.attribute).
    DESIGN = PREFIX + "design"  # leave-one-out | add-one-in | shapley, on the parent and its runs
    SUBSET = PREFIX + "subset"  # on a design's run: the JSON list of the components applied


class Kind:
    """Values of Tag.KIND."""

    LADDER = "ladder"  # a ladder invocation: the parent run
    LADDER_STEP = "ladder_step"
    SEARCH = "search"  # a search invocation: the parent run
    SEARCH_TRIAL = "search_trial"
    DESIGN = "design"  # an attribution design's invocation: the parent run
    DESIGN_UNIT = "design_unit"  # one subset of components, one seed


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded store under ./mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def _sqlite_dir(uri: str) -> Path | None:
    """Folder of a sqlite:/// store: its artifacts live beside it."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).parent


def connect() -> MlflowClient:
    """Point MLflow at the store, creating a SQLite one (tables included) under a file lock.

    Two processes creating one fresh SQLite store at once fail ("table ... already exists",
    "duplicate column name") every time here (MLflow 3.17): parallel search workers start exactly so.
    A store that cannot be opened is a StoreError (`check_store` says why before anything runs).
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    folder = _sqlite_dir(uri)
    try:
        if folder is None:
            return MlflowClient(uri)
        folder.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(folder / ".mlflow-create.lock"):
            client = MlflowClient(uri)  # creates or upgrades the tables as it opens the store
            _relocate_artifacts(Path(uri[len("sqlite:///"):]))
            return client
    except (mlflow.exceptions.MlflowException, SQLAlchemyError, sqlite3.Error, OSError) as error:
        raise StoreError(f"cannot open the tracking store {_safe(uri)}: {_first_line(error)}") from None


_RELOCATED: set[Path] = set()  # stores whose artifact locations this process has checked


def _relocate_artifacts(database: Path):
    """Point a SQLite store's artifact locations into its own folder, after the folder was copied or moved.

    Experiments keep their artifacts in `<store folder>/artifacts/<experiment>`, but MLflow records that
    as an absolute location in the experiment and in each run: a copy of the folder would go on reading
    and writing the original's artifacts. Only locations of that layout are rewritten, once per process.
    """
    if database.resolve() in _RELOCATED:
        return
    here = (database.parent / "artifacts").resolve().as_uri()
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as db, db:
        for name, location in db.execute("SELECT name, artifact_location FROM experiments").fetchall():
            old = (location or "").removesuffix(f"/{name}")
            if old == location or not old.endswith("/artifacts") or old == here:
                continue
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                           f"WHERE substr({column}, 1, ?) = ?", (here, len(old) + 1, len(old) + 1, old + "/"))
    _RELOCATED.add(database.resolve())


# ---------------------------------------------------------------------------------------------
# Is the store usable? Checked before anything runs, creating nothing, so an input error writes nothing.

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
OTHER_MLFLOW_SCHEMES = ("databricks", "databricks-uc", "uc")  # MLflow's own: not probed here


def check_store():
    """Raise StoreError, naming the store and what to do, unless the tracking store can be opened and written."""
    uri = tracking_uri()
    scheme = uri.split(":", 1)[0].split("+")[0] if "://" in uri else ""
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in DATABASE_SCHEMES:
        check_database(uri, "tracking store")
    elif scheme not in OTHER_MLFLOW_SCHEMES:
        kind = "a folder store (MLflow 3 keeps runs in a database)" if scheme in ("", "file") else f"scheme {scheme!r}"
        raise StoreError(f"MLFLOW_TRACKING_URI={_safe(uri)}: {kind} is not supported; use sqlite:///PATH/mlflow.db, "
                         "postgresql://..., mysql://... or http(s)://SERVER:PORT")


def _check_sqlite(uri: str):
    """The database file (if it exists) is SQLite and writable, and its folder is (or can be made) writable."""
    path = Path(uri[len("sqlite:///"):])
    if not uri.startswith("sqlite:///") or not path.name or path.name == ":memory:":
        raise StoreError(f"tracking store {uri}: needs a file, e.g. sqlite:///mlruns/mlflow.db")
    existing = existing_ancestor(path, f"tracking store {path}")
    if path.exists():
        if not path.is_file():
            raise StoreError(f"tracking store {path} is not a file; point MLFLOW_TRACKING_URI at a database file")
        _check_sqlite_file(path)
    check_writable_folder(path.parent if path.parent.exists() else existing, f"tracking store {path}")


def _check_sqlite_file(path: Path):
    """An existing store file: writable, an SQLite database, undamaged, and not locked by another writer."""
    try:
        with open(path, "r+b") as file:  # opened for writing (nothing written): a read-only file fails here
            header = file.read(16)
    except OSError as error:
        raise StoreError(f"tracking store {path} is not writable ({error.strerror}); fix its permissions, "
                         "or point MLFLOW_TRACKING_URI at another store") from None
    try:
        if header and header != b"SQLite format 3\x00":
            raise sqlite3.DatabaseError("not an SQLite database")
        with contextlib.closing(sqlite3.connect(path, timeout=PROBE_SECONDS, isolation_level=None)) as db:
            damage = db.execute("PRAGMA quick_check").fetchone()[0]
            if damage != "ok":
                raise sqlite3.DatabaseError(f"damaged: {damage}")
            db.execute("BEGIN IMMEDIATE")  # the write lock, taken and given back: nothing is written
            db.execute("ROLLBACK")
    except sqlite3.Error as error:
        raise StoreError(f"tracking store {path} cannot be used: {_first_line(error)}; repair or move it, "
                         "or point MLFLOW_TRACKING_URI at another store") from None


def existing_ancestor(path: Path, what: str) -> Path:
    """The nearest of `path` and its parents that exists; a StoreError when it is a file above `path`."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise StoreError(f"{what}: {existing} is a file, not a folder; choose another path")
    return existing


def check_writable_folder(folder: Path, what: str):
    """A file can be made (and is removed again) in `folder`, or a StoreError naming `what`."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise StoreError(f"{what}: cannot write in {folder} ({error.strerror or error})") from None


def _check_server(uri: str):
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError as error:
        raise StoreError(f"tracking server {_safe(uri)} answered /health with HTTP {error.code}: "
                         "is it an MLflow tracking server?") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StoreError(f"cannot reach the tracking server {_safe(uri)} ({reason}; waited up to {PROBE_SECONDS} s): "
                         "start it, or point MLFLOW_TRACKING_URI at another store") from None


def check_database(url: str, what: str):
    """One connection to a database URL within PROBE_SECONDS, or a StoreError saying why not."""
    scheme = url.split(":", 1)[0].split("+")[0]
    timeout = {"postgresql": {"connect_timeout": PROBE_SECONDS}, "mysql": {"connect_timeout": PROBE_SECONDS},
               "sqlite": {"timeout": PROBE_SECONDS}}.get(scheme, {})
    engine = None
    try:
        engine = create_engine(url, connect_args=timeout)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except ImportError as error:
        raise StoreError(f"{what} {_safe(url)}: its database driver is not installed ({error.name}); "
                         "pip install it (e.g. psycopg2-binary for postgresql)") from None
    except (SQLAlchemyError, ValueError) as error:
        raise StoreError(f"cannot open the {what} {_safe(url)}: {_first_line(error)}") from None
    finally:
        if engine is not None:
            engine.dispose()


def _safe(url: str) -> str:
    """A URL as shown in messages: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True) if "@" in url else url
    except (ValueError, SQLAlchemyError):
        return url


def _first_line(error: BaseException) -> str:
    """An error's message on one line (SQLAlchemy appends SQL and a help link on further lines)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return (lines[0] if lines else type(cause).__name__)[:300]


def experiment_id(name: str) -> str:
    """The experiment of a study, created on first use (artifacts beside a SQLite store)."""
    client = connect()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if not EXPERIMENT_KIND.items() <= found.tags.items():  # made before the kind was set
            client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return found.experiment_id
    folder = _sqlite_dir(tracking_uri())
    location = (folder / "artifacts" / name).resolve().as_uri() if folder else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        return client.get_experiment_by_name(name).experiment_id


BY_ORDER, BY_NAME = f"tags.`{Tag.ORDER}`", "tags.`mlflow.runName`"  # sort keys of the UI's runs list


def ui_url(experiment: str, parent_run_id: str, order_by: str = BY_ORDER) -> str:
    """The MLflow UI's page of a parent run's children in the model-training view, sorted by `order_by` (ascending).

    The UI's own address when the store is a tracking server, else the README's `mlflow ui` on
    127.0.0.1:5000. Sorting by a tag, not by start time, also keeps the list flat: sorted by time,
    the UI folds the children under their parent.
    """
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    query = urlencode({"workflowType": "machine_learning",
                       "searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
                       "orderByKey": order_by, "orderByAsc": "true"})
    return f"{base}/#/experiments/{experiment}/runs?{query}"


def ui_command() -> str | None:
    """The command that serves this store's UI at `UI_ADDRESS`; None for a tracking server (it is the UI)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def code_version() -> str:
    """Package version and git commit (with +dirty) of the code that ran."""
    root = Path(ablation.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=root,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{ablation.__version__}" + (f"@{commit}" if commit else "")


def process_tags() -> dict[str, str]:
    """Who runs this: lets a later sweep tell a live run from one whose process died."""
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid()), Tag.CODE_VERSION: code_version()}


def sweep_stale_runs(experiment: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host no longer exists (SIGKILL, power loss)."""
    client = connect()
    stale = []
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=5000):
        pid = local_pid(run.data.tags)
        if pid is not None and not process_alive(pid):
            client.set_tag(run.info.run_id, Tag.ERROR, "process died without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")
            stale.append(run.info.run_id)
    return stale


def live_run_of(experiment: str, work_key: str):
    """A RUNNING run doing this work in another live process of this host, or None.

    Runs of other hosts are not judged: a plain command cannot tell a live one from a dead one there
    (the shared queue's heartbeats can, and hand each unit to one worker).
    """
    client = connect()
    query = f"tags.`{Tag.WORK_KEY}` = '{work_key}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment], query, max_results=100):
        pid = local_pid(run.data.tags)
        if pid is not None and pid != os.getpid() and process_alive(pid):
            return run
    return None


def local_pid(tags: dict) -> int | None:
    """The pid of the process that ran a run, when it ran on this host (see `process_tags`); else None."""
    return _pid_here(tags.get(Tag.HOST, ""), tags.get(Tag.PID, ""))


def _pid_here(host: str, pid: str) -> int | None:
    """`pid` as a number when `host` is this host and the pid is readable; else None."""
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def worker_id() -> str:
    """This process, as recorded on the trials it runs and the queues it plans: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_here(worker: str) -> bool:
    """Whether `worker` (as `worker_id` writes it) was a process of this host that is gone; another
    host's process, or an unreadable value, is not ours to judge (False)."""
    host, _, pid = worker.rpartition(":")
    pid = _pid_here(host, pid)
    return pid is not None and not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (on every OS: no signal is sent)."""
    return psutil.pid_exists(pid)


@contextlib.contextmanager
def run(experiment: str, name: str, tags: dict, nested: bool = False, resume: str | None = None,
        system_metrics: bool = False, parent_run_id: str | None = None):
    """An MLflow run that always ends: FINISHED, KILLED on Ctrl-C/SIGTERM, FAILED with the error.

    `resume`: the id of an earlier, unfinished run of the same work, set RUNNING again and continued.
    `parent_run_id` nests a new run under a run of another process (a worker's unit under its planner's parent).
    `system_metrics`: sample CPU, memory (and GPU) while it runs, if MLflow's switch is on
    (`MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`: the commands turn it on unless --no-system-metrics).
    """
    tags = {**{k: str(v) for k, v in tags.items()}, **process_tags()}
    sampling = None if system_metrics else False  # None: as MLflow's switch says
    if resume is None:
        active = mlflow.start_run(experiment_id=experiment, run_name=name, nested=nested, parent_run_id=parent_run_id,
                                  tags=tags, log_system_metrics=sampling)
    else:
        active = mlflow.start_run(run_id=resume, nested=nested, tags=tags, log_system_metrics=sampling)
        if Tag.ERROR in active.data.tags:  # why it stopped last time is no longer true
            connect().delete_tag(resume, Tag.ERROR)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.set_tag(Tag.ERROR, "interrupted")
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag(Tag.ERROR, f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


@contextlib.contextmanager
def held_run(experiment: str, name: str, tags: dict):
    """A parent run for other processes' runs, kept off this process's active-run stack; yields its id.

    MLflow nests a new run under the active one only, so a planner whose parent were active could
    not train a unit planned by another planner. Ends as `run` does: FINISHED, KILLED, FAILED.
    """
    client = connect()
    tags = {**{k: str(v) for k, v in tags.items()}, **process_tags()}
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    try:
        yield run_id
    except KeyboardInterrupt:
        client.set_tag(run_id, Tag.ERROR, "interrupted")
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as error:
        client.set_tag(run_id, Tag.ERROR, f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


@contextlib.contextmanager
def resumed(run_id: str):
    """Make a held run the active one for a while (to log its summary with the `log_*` functions)."""
    connect()
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run()  # FINISHED; an error propagating to `held_run` ends it FAILED or KILLED after


def get_run(run_id: str):
    """A run by id (params, metrics, tags, status)."""
    return connect().get_run(run_id)


def supersede(run_id: str, reason: str) -> bool:
    """Mark KILLED the run of an attempt that another attempt replaces (its worker died, or was judged
    dead), whatever state it ended in; whether it was not KILLED already."""
    client = connect()
    if client.get_run(run_id).info.status == "KILLED":
        return False
    client.set_tag(run_id, Tag.ERROR, reason)
    client.set_terminated(run_id, "KILLED")
    return True


def log_config(config, extra_tags: dict):
    """Params (the whole resolved config, flat) and the config as a JSON artifact."""
    params = {k: _param(v) for k, v in config.params().items()}
    mlflow.log_params(params)
    mlflow.set_tags({k: str(v) for k, v in extra_tags.items()})
    mlflow.log_dict(config.to_dict(), "config.json")


def _param(value) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def data_tags(fingerprint: dict) -> dict[str, str]:
    """The data fingerprint as tags: source, sizes, subsets, seed, digest."""
    return {Tag.DATA_PREFIX + k: str(v) for k, v in fingerprint.items()}


def log_epoch(epoch: int, logs: dict):
    """One epoch's metrics in one call, the epoch (from 1) as the step: an epoch hook of `train`."""
    values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
    mlflow.log_metrics(values, step=epoch)


def log_result(result, class_names):
    """Final metrics, the per-epoch history as CSV and the test-set predictions."""
    mlflow.log_metrics({k: float(v) for k, v in result.metrics().items()})
    mlflow.set_tag(Tag.STOPPED_EARLY, str(result.stopped_early))
    with tempfile.TemporaryDirectory() as folder:
        history = Path(folder) / "history.csv"
        keys = [k for k, v in result.history.items() if v]
        rows = ["epoch," + ",".join(keys)]
        for i in range(result.epochs_run):
            rows.append(",".join([str(i + 1)] + [repr(result.history[k][i]) for k in keys]))
        history.write_text("\n".join(rows) + "\n")
        mlflow.log_artifact(str(history))
    mlflow.log_dict({"class_names": list(class_names), "labels": result.test_labels.tolist(),
                     "predictions": result.test_predictions.tolist()}, "test_predictions.json")


def dataset_source(data: str, data_file: Path | None):
    """Where the images of the config's `data` come from, as an MLflow dataset source."""
    if ":" in data:  # a loader package.module:function: its code makes the arrays, whatever --data says
        return CodeDatasetSource({"loader": data})
    if data_file is not None:
        return LocalArtifactDatasetSource(data_file.resolve().as_uri())
    return HTTPDatasetSource(KERAS_URLS[data])


def log_datasets(splits, data_file: Path | None):
    """The images a run trained, validated and was tested on, as MLflow dataset inputs.

    Named by part, with the split's fingerprint digest (runs on the same images group together) and
    their source: a loader's import path, the data file or folder, or the URL Keras downloads from.
    """
    fingerprint = splits.fingerprint
    source = dataset_source(fingerprint.get("dataset", "cifar10"), data_file)
    parts = (("train", splits.x_train, splits.y_train, "training"),
             ("validation", splits.x_val, splits.y_val, "validation"),
             ("test", splits.x_test, splits.y_test, "evaluation"))
    for part, images, labels, context in parts:
        name = f"{fingerprint.get('dataset', 'cifar10')}-{part}"  # cifar10-train, images-test, mnist-validation
        dataset = mlflow.data.from_numpy(images, targets=labels, source=source, name=name,
                                         digest=fingerprint["digest"])
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException as error:
            if "UNIQUE constraint" not in str(error):
                raise
            # Another worker inserted the same dataset (experiment, name, digest) between MLflow's look-up
            # and its insert: the row exists now, and a second call links it.
            mlflow.log_input(dataset, context=context)


def log_keras_model(network, sample_inputs, metadata: dict) -> str:
    """The trained network as the active run's MLflow logged model (Keras format); returns its models:/ URI.

    `mlflow.keras.load_model(uri)` reloads it with only MLflow and Keras installed (the runner saves it
    with Keras' own layers). Requirements are pinned from the installed packages: MLflow's
    own inference would import the model again in a subprocess.
    """
    import mlflow.keras  # imports TensorFlow: only once a network has been trained, so it is loaded already

    signature = infer_signature(sample_inputs, network.predict(sample_inputs, verbose=0))
    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in ("keras", "tensorflow", "numpy")]
    info = mlflow.keras.log_model(network, name="model", signature=signature, pip_requirements=requirements,
                                  metadata=metadata)
    return info.model_uri


def has_logged_model(run) -> bool:
    """Whether a run logged (or took over) a trained model."""
    return bool(run.outputs and run.outputs.model_outputs)


def find_finished(experiment: str, work_key: str):
    """The newest FINISHED run that did exactly this work, or None."""
    client = connect()
    found = client.search_runs(
        [experiment],
        f"tags.`{Tag.WORK_KEY}` = '{work_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


RESULT_TAGS = (Tag.STOPPED_EARLY,)  # tags that describe a run's result, so a copy of the result keeps them


def copy_run(source, experiment: str, name: str, tags: dict, parent_run_id: str | None = None):
    """A nested run that repeats a finished one (params, metrics with their history, artifacts).

    Its tags are the new unit's, a link to the source and the result's own (RESULT_TAGS): none of the
    source's other tags, which describe what the source was run for, not what this run is.
    """
    client = connect()
    result = {k: source.data.tags[k] for k in RESULT_TAGS if k in source.data.tags}
    with run(experiment, name, {**tags, **result, Tag.REUSED_FROM: source.info.run_id}, nested=True,
             parent_run_id=parent_run_id):
        mlflow.log_params(source.data.params)
        run_id = mlflow.active_run().info.run_id
        metrics = []
        for key in source.data.metrics:
            metrics.extend(client.get_metric_history(source.info.run_id, key))
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        # The same datasets, and the source's logged model (if any) as this run's output too.
        if source.inputs and source.inputs.dataset_inputs:
            client.log_inputs(run_id, datasets=source.inputs.dataset_inputs)
        if has_logged_model(source):
            client.log_outputs(run_id, models=source.outputs.model_outputs)
        with tempfile.TemporaryDirectory() as folder:
            local = client.download_artifacts(source.info.run_id, "", folder)
            mlflow.log_artifacts(local)
        return client.get_run(run_id)


def find_interrupted(experiment: str, tags: dict):
    """The newest KILLED run carrying all of `tags` (e.g. a parent with this plan key), or None."""
    client = connect()
    query = " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'KILLED'"])
    found = client.search_runs([experiment], query, order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def child_runs(experiment: str, parent_run_id: str) -> dict:
    """The runs nested under a parent, by run name (the newest of a name wins)."""
    client = connect()
    found = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                               order_by=["attributes.start_time ASC"], max_results=5000)
    return {r.data.tags.get("mlflow.runName", ""): r for r in found}


def logged_epochs(run_id: str) -> int:
    """How many epochs a run has logged (its last `loss` step; 0 for none)."""
    return max((m.step for m in connect().get_metric_history(run_id, "loss")), default=0)


def checkpoint_folder(work: str) -> Path:
    """Where a unit of work keeps its training checkpoints: with the store, keyed by the work, so a re-run finds them."""
    return store_folder() / "checkpoints" / work


def log_study_file(path: Path):
    """Keep the study file with the results it produced."""
    mlflow.log_artifact(str(path))


def log_dict(data: dict, name: str):
    """A JSON artifact of the active run."""
    mlflow.log_dict(data, name)


def log_table(rows: list[dict], name: str):
    """A summary table (list of rows) as a JSON artifact of the active run."""
    mlflow.log_dict({"rows": rows}, name)


# ---------------------------------------------------------------------------------------------
# Optuna storage (the search's trials live there).


def store_folder() -> Path:
    """Folder of a SQLite tracking store (./mlruns by default); ./mlruns for any other store.

    The search keeps its embedded Optuna storage here, so a temp MLFLOW_TRACKING_URI keeps both together.
    """
    folder = _sqlite_dir(tracking_uri())
    return folder if folder is not None else DEFAULT_STORE


def check_storage(spec: str | None):
    """Raise StoreError unless the Optuna storage of --storage can be opened and written; creates nothing."""
    if spec is not None and "://" in spec:
        kind = spec.split(":", 1)[0].split("+")[0]
        if kind not in ("sqlite", *DATABASE_SCHEMES, "oracle"):
            raise StoreError(f"--storage {_safe(spec)}: unknown scheme {kind!r}; expected an Optuna storage URL "
                             "(sqlite:///search.db, postgresql://user@host/db, mysql://...) or a .journal file")
        check_database(spec, "Optuna storage")
        return
    path = _journal_path(spec)
    existing = existing_ancestor(path, f"Optuna storage {path}")
    if path.exists():
        if not path.is_file():
            raise StoreError(f"Optuna storage {path} is not a file; pass another --storage")
        try:  # every complete line is one JSON record (the last may be a write in progress)
            for line in path.read_bytes().split(b"\n")[:-1]:
                json.loads(line)
        except (OSError, ValueError) as error:
            raise StoreError(f"Optuna storage {path} cannot be read ({_first_line(error)}): is it an Optuna "
                             "journal? Move it away or pass another --storage") from None
    check_writable_folder(path.parent if path.parent.exists() else existing, f"Optuna storage {path}")


def _journal_path(spec: str | None) -> Path:
    if spec is None:
        return store_folder() / "optuna.journal"
    if spec.endswith((".journal", ".log")):
        return Path(spec)
    raise StudyError(f"--storage {spec!r}: expected an Optuna storage URL (sqlite:///search.db, "
                     "postgresql://user@host/db) or a journal file path ending in .journal or .log")


def open_storage(spec: str | None):
    """(storage, kind, location) for --storage: a journal file by default, beside the MLflow store.

    RDB URLs get Optuna's heartbeat, so a dead worker's trial is failed and queued again (`rdb_storage`).
    A storage that cannot be opened is a StoreError (see `check_storage`).
    """
    check_storage(spec)
    if spec is not None and "://" in spec:
        kind = spec.split(":", 1)[0].split("+")[0]
        return rdb_storage(spec, kind), kind, make_url(spec).render_as_string(hide_password=True)
    path = _journal_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path))), "journal", str(path.resolve())


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: $ABLATION_HEARTBEAT and $ABLATION_GRACE, else 60 and 180."""
    values = []
    for variable, default in (("ABLATION_HEARTBEAT", HEARTBEAT_SECONDS), ("ABLATION_GRACE", GRACE_SECONDS)):
        text = os.environ.get(variable, "").strip() or str(default)
        if not text.isdigit() or int(text) < 1:
            raise StudyError(f"${variable}={text!r}: expected a whole number of seconds, at least 1")
        values.append(int(text))
    if values[1] <= values[0]:
        raise StudyError(f"$ABLATION_GRACE={values[1]} must exceed $ABLATION_HEARTBEAT={values[0]}: a live "
                         "worker's trial would be judged dead between two heartbeats")
    return values[0], values[1]


def rdb_storage(url: str, kind: str, attempts: int = 4):
    """Optuna's RDBStorage with heartbeats and the retry of a dead worker's trial.

    Workers that open an empty PostgreSQL database at once race while Optuna creates its tables
    (UniqueViolation on pg_type_typname_nsp_index, or a table that already exists): creation checks
    for each table first, so opening again after the winner finished succeeds.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {}  # wait out a busy writer
    heartbeat, grace = heartbeat_settings()
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES))
        except (IntegrityError, ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)


def write_run(experiment: str, name: str, *, tags: dict, params: dict, metrics: list[tuple[str, float, int]],
              parent_run_id: str | None = None, status: str = "FINISHED") -> str:
    """A whole run written at once, not from a live process (the benchmark fills a store so)."""
    client = connect()
    tags = {**{k: str(v) for k, v in tags.items()}, "mlflow.runName": name,
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    stamp = client.get_run(run_id).info.start_time
    entries = [Metric(key, float(value), stamp + step, step) for key, value, step in metrics]
    for start in range(0, len(entries), 1000):  # MLflow's batch limits: 1,000 metrics, 100 params
        client.log_batch(run_id, metrics=entries[start:start + 1000])
    params = [Param(k, _param(v)) for k, v in params.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.set_terminated(run_id, status)
    return run_id


# ---------------------------------------------------------------------------------------------
# Moving a study's stores (the embedded ones on a laptop to servers): python -m ablation.migrate.

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


# ---------------------------------------------------------------------------------------------
# Writing to the active run.


def active_run_id() -> str:
    return mlflow.active_run().info.run_id


def set_tags(tags: dict, run_id: str | None = None):
    """Tags on the active run, or on run `run_id` (e.g. one whose process died)."""
    tags = {k: str(v) for k, v in tags.items()}
    if run_id is None:
        mlflow.set_tags(tags)
        return
    client = connect()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def log_metrics(metrics: dict, step: int | None = None):
    """Metrics of the active run in one call."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_text(text: str, artifact_file: str):
    """A text artifact of the active run (e.g. the search's best step as TOML)."""
    mlflow.log_text(text, artifact_file)


# ---------------------------------------------------------------------------------------------
# Reading results back (the report): nothing here creates a store or an experiment.


def store_exists() -> bool:
    """Whether the tracking store holds anything yet (a missing SQLite file means no runs at all)."""
    uri = tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()


def experiment_names() -> list[str]:
    """Names of the store's experiments (none when there is no store)."""
    if not store_exists():
        return []
    return sorted(e.name for e in connect().search_experiments())


def runs_frame(experiment: str):
    """Every run of an experiment as a pandas DataFrame, MLflow's columns (params.*, metrics.*, tags.*)."""
    if experiment not in experiment_names():
        return pd.DataFrame()
    connect()
    frame = mlflow.search_runs(experiment_names=[experiment], max_results=100_000,
                               order_by=["attributes.start_time ASC"])
    return frame.reset_index(drop=True)


def metric_histories(run_id: str, keys) -> "dict[str, list[tuple[int, float]]]":
    """Per-epoch values of each metric as (step, value) pairs in step order; missing keys are left out."""
    client = connect()
    out = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        if history:
            out[key] = [(m.step, m.value) for m in history]
    return out


def load_json_artifact(run_id: str, path: str):
    """A JSON artifact of a run, parsed; None when the run has no such artifact."""
    client = connect()
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, path, folder)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def log_report(folder: Path, run_id: str, artifact_path: str = "report") -> str:
    """Log a report folder as artifacts of a run (finished or not); returns the artifact URI."""
    client = connect()
    client.log_artifacts(run_id, str(folder), artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
