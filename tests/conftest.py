"""Shared fixtures: the real CIFAR-10 archive from ../shared (or ABLATION_DATA), a smoke-ladder store."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from servers import mlflow_server, postgres_cluster, require_driver

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-10-python.tar.gz"

# The data fingerprints the tests compute stay out of the user's cache (commands inherit this).
os.environ["ABLATION_CACHE"] = tempfile.mkdtemp(prefix="ablation-test-cache-")


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    """Path of the real CIFAR-10 archive; tests that need it fail loudly if it is missing."""
    path = Path(os.environ.get("ABLATION_DATA", SHARED_ARCHIVE))
    if not path.exists():
        pytest.fail(f"CIFAR-10 not found at {path}: set ABLATION_DATA or put the archive in ../shared/data/")
    return path


def run_command(module: str, args, store: Path, **popen):
    """`python -m ablation.<module> ARGS` on the MLflow store in folder `store`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", f"ablation.{module}", *args]
    if popen:
        return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    return subprocess.run(command, env=env, text=True, capture_output=True, timeout=1800)


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory, cifar_path):
    """One smoke ladder of the assignment study in a temp store, shared by the ladder and report tests.

    Tests may add runs to it (a re-run, a search) but must not remove any.
    """
    store = tmp_path_factory.mktemp("smoke_store")
    done = run_command("ladder", ["--profile", "smoke", "--no-report", "--data", str(cifar_path)], store)
    assert done.returncode == 0, done.stdout + done.stderr
    return store, done.stdout


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 for the session (a servers.PostgresCluster)."""
    require_driver()
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mlflow_tracking_server(postgres, tmp_path_factory):
    """URL (http://127.0.0.1:PORT) of an MLflow tracking server on database `mlflow` of the cluster."""
    with mlflow_server(postgres.create_database("mlflow"), tmp_path_factory.mktemp("mlflow-artifacts")) as url:
        yield url
