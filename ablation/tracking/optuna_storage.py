"""Optuna storages (the search's and the queue's trials): a journal file beside the SQLite store
by default, or a database; checked before use.
"""

import json
import os
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError

from ablation.core.config import StoreError, StudyError
from ablation.tracking.store import (DATABASE_SCHEMES, _first_line, _safe, check_database, check_writable_folder,
                                     existing_ancestor, store_folder)


HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # Optuna RDB storages only; $ABLATION_HEARTBEAT / $ABLATION_GRACE
MAX_RETRIES = 2  # times a trial whose worker died is queued again


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
