"""Where the tracking store is, opening it, and checking it before anything runs (creating nothing).

Default store: a SQLite database `mlruns/mlflow.db` with artifacts in `mlruns/artifacts/`
(MLflow 3.13+ refuses its legacy folder store). `MLFLOW_TRACKING_URI` points elsewhere: another
SQLite file (artifacts go beside it), a database, or a tracking server.
"""

import contextlib
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import filelock
import mlflow
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ablation.core.config import StoreError
from ablation.tracking.tags import Tag


DEFAULT_STORE = Path("mlruns")
PROBE_SECONDS = 5  # how long a store check waits for a server or a database before it gives up
UI_ADDRESS = "http://127.0.0.1:5000"  # where the README's `mlflow ui` serves an embedded store
# The experiment kind MLflow's UI reads: "model training" opens on the runs, not the GenAI traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

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


def store_folder() -> Path:
    """Folder of a SQLite tracking store (./mlruns by default); ./mlruns for any other store.

    The search keeps its embedded Optuna storage here, and training its checkpoints, so a temp
    MLFLOW_TRACKING_URI keeps them all together.
    """
    folder = _sqlite_dir(tracking_uri())
    return folder if folder is not None else DEFAULT_STORE


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
