"""Shared fixtures: the real CIFAR-10 archive from ../shared (or ABLATION_DATA), a small tree cut from it, a smoke-ladder store."""

import atexit
import os
import shutil
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
atexit.register(shutil.rmtree, os.environ["ABLATION_CACHE"], ignore_errors=True)  # it holds 184 MB of decoded data


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    """Path of the real CIFAR-10 archive; tests that need it fail loudly if it is missing."""
    path = Path(os.environ.get("ABLATION_DATA", SHARED_ARCHIVE))
    if not path.exists():
        pytest.fail(f"CIFAR-10 not found at {path}: set ABLATION_DATA or put the archive in ../shared/data/")
    return path


@pytest.fixture(scope="session")
def cifar_tree(tmp_path_factory, cifar_path) -> Path:
    """A small image-folder tree cut from the real CIFAR-10 (8 training and 4 test images per class).

    Commands read it in milliseconds, where the archive costs seconds of CPU per process: for tests
    that start many training processes (signals, resumes).
    """
    from PIL import Image

    from ablation.data import load_cifar10

    root, dataset = tmp_path_factory.mktemp("cifar_tree"), load_cifar10(cifar_path)
    for split, x, y, per_class in (("train", dataset.x_train, dataset.y_train, 8),
                                   ("test", dataset.x_test, dataset.y_test, 4)):
        for label, name in enumerate(dataset.class_names):
            (root / split / name).mkdir(parents=True)
            for index in [i for i in range(len(y)) if y[i] == label][:per_class]:
                Image.fromarray(x[index]).save(root / split / name / f"{index}.png")
    return root


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
