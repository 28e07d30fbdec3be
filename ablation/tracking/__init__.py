"""Tracking: the only package that talks to MLflow and opens Optuna storages.

Split by idea: `tags` (the tag schema), `store` (where the store is, opening and checking it),
`record` (writing to runs), `runs` (their lifecycle and finding finished work), `optuna_storage`
(the search's and the queue's trials), `migration` (copying stores) and `reading` (the report's
reads). The rest of the package calls them through this module's names (`tracking.run`,
`tracking.log_epoch`, ...), so callers need not know which file holds what.

Default store: a SQLite database `mlruns/mlflow.db` with artifacts in `mlruns/artifacts/`
(MLflow 3.13+ refuses its legacy folder store). `MLFLOW_TRACKING_URI` points elsewhere: another
SQLite file (artifacts go beside it), a database, or a tracking server. The search's default
Optuna storage is a journal file beside the SQLite store (see `open_storage`).
"""

from ablation.tracking.tags import Kind, Tag
from ablation.tracking.store import (BY_NAME, BY_ORDER, check_store, connect, experiment_id, tracking_uri,
    ui_command, ui_url)
from ablation.tracking.record import (active_run_id, data_tags, has_logged_model, log_config, log_datasets, log_dict,
    log_epoch, log_keras_model, log_metrics, log_report, log_result, log_study_file, log_table, log_text, set_tags,
    write_run)
from ablation.tracking.runs import (checkpoint_folder, child_runs, copy_run, dead_here, find_finished,
    find_interrupted, get_run, held_run, live_run_of, logged_epochs, resumed, run, supersede, sweep_stale_runs,
    worker_id)
from ablation.tracking.optuna_storage import (HEARTBEAT_SECONDS, MAX_RETRIES, check_storage, heartbeat_settings,
    open_storage, rdb_storage)
from ablation.tracking.migration import copy_store, copy_studies, journal_beside
from ablation.tracking.reading import experiment_names, load_json_artifact, metric_histories, runs_frame

__all__ = ["Kind", "Tag", "BY_NAME", "BY_ORDER", "check_store", "connect", "experiment_id", "tracking_uri",
           "ui_command", "ui_url", "active_run_id", "data_tags", "has_logged_model", "log_config", "log_datasets",
           "log_dict", "log_epoch", "log_keras_model", "log_metrics", "log_report", "log_result", "log_study_file",
           "log_table", "log_text", "set_tags", "write_run", "checkpoint_folder", "child_runs", "copy_run",
           "dead_here", "find_finished", "find_interrupted", "get_run", "held_run", "live_run_of", "logged_epochs",
           "resumed", "run", "supersede", "sweep_stale_runs", "worker_id", "HEARTBEAT_SECONDS", "MAX_RETRIES",
           "check_storage", "heartbeat_settings", "open_storage", "rdb_storage", "copy_store", "copy_studies",
           "journal_beside", "experiment_names", "load_json_artifact", "metric_histories", "runs_frame"]
