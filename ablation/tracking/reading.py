"""Reading results back (the report): nothing here creates a store or an experiment."""

import json
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from ablation.tracking.store import connect, tracking_uri


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
