"""Shared fixtures: the real CIFAR-10 archive from ../shared (or ABLATION_DATA), a small tree cut from it, a smoke-ladder
store, and the tiny study (tiny_study, tiny_study_text) that the end-to-end tests train."""

import atexit
import gc
import json
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


# The tiny study, defined once for every test that trains one end to end: the template network without its
# identity blocks (a few thousand weights) on 80 training and 64 test images, eager (no graph tracing: far
# faster for a few batches), so a step trains in seconds of CPU.
TINY_RESNET = {"model": "template_resnet",
               "model_args": {"stage2_blocks": 0, "stage3_blocks": 0, "stage4_blocks": 0, "dropout_rate": 0.0},
               "epochs": 1, "batch_size": 32, "train_subset": 80, "test_subset": 64, "run_eagerly": True}
# The same size with a one-group VGG of 8 filters in batches of 16: the fault tests, whose signals are timed
# on its epochs' lines.
TINY_VGG = {**TINY_RESNET, "model": "vgg_like",
            "model_args": {"filters": [8], "convs_per_group": 1, "dense_units": 16, "dropout_rate": 0.2},
            "batch_size": 16, "test_subset": 32}
ONE_STEP = '[[steps]]\nname = "only"\n'


def toml_value(value) -> str:
    """`value` (bool, number, string, list or dict) as a TOML value (a dict inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML value for {value!r}")


def tiny_study_text(steps: str = ONE_STEP, *, name: str = "tiny", network: dict = TINY_RESNET,
                    study: dict | None = None, after: str = "", **base) -> str:
    """The tiny study's TOML: [study] `name` (with `study`'s keys), [base] `network` with `base`'s changes
    (a key set to None is left out), then `steps` and `after` as written ([search], [attribution] ...)."""
    head = {"name": name, **(study or {})}
    fields = {k: v for k, v in {**network, **base}.items() if v is not None}
    lines = ["[study]", *(f"{k} = {toml_value(v)}" for k, v in head.items()), "",
             "[base]", *(f"{k} = {toml_value(v)}" for k, v in fields.items()), ""]
    return "\n".join(lines) + "\n" + steps + ("\n" + after if after else "")


def tiny_study(path: Path, steps: str = ONE_STEP, **changes) -> Path:
    """Write tiny_study_text(steps, **changes) to `path` (a folder: to tiny.toml in it); the file's path."""
    path = Path(path)
    if path.is_dir():
        path = path / "tiny.toml"
    path.write_text(tiny_study_text(steps, **changes))
    return path


# Scheduling under xdist (pyproject: -n 3 --dist loadfile). The files that read the session's smoke ladder
# (smoke_store) go to one worker as one unit, so that it is trained once, not once per worker. Files are
# handed out heaviest first (the seconds they took here, whole files), so that the last file to start is a
# short one and the workers end together; a file not listed is light and goes after these, in order.
SMOKE_STORE_FILES = ("test_ladder.py", "test_experience.py", "test_report.py")
HEAVY_FILES = ("<smoke store>", "test_signals.py", "test_device_script.py", "test_ladder_runs.py",
               "test_attribution.py", "test_resilience.py", "test_workers.py", "test_steps_per_execution.py",
               "test_bn_statistics.py", "test_search.py", "test_errors.py", "test_postgres.py",
               "test_datasets.py", "test_api.py", "test_training_fields.py", "test_own_model.py",
               "test_train.py", "test_data.py")


def work_unit(path: str) -> str:
    """The xdist work unit of the test file at `path`: `<smoke store>` for the smoke ladder's readers, else the path."""
    return "<smoke store>" if Path(path).name in SMOKE_STORE_FILES else path


def pytest_collection_modifyitems(items):
    """Heaviest work unit first (HEAVY_FILES), a unit's files together; in a file, the tests keep their order."""
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    first_seen = {}
    for item in items:
        first_seen.setdefault(item.path.name, len(first_seen))
    unit = lambda item: work_unit(str(item.path))  # noqa: E731
    items.sort(key=lambda item: (rank.get(Path(unit(item)).name, len(rank)), first_seen[item.path.name]))


def pytest_collection_finish(session):
    """Collection imported TensorFlow, Keras and MLflow into this process: its garbage collector is set as the
    commands set theirs (ablation.cli.run_and_exit), so that in-process tests do not walk those objects again and
    again."""
    from ablation.cli import YOUNG_OBJECTS_PER_COLLECTION

    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown without xdist (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with the smoke ladder's readers as one unit, units in the collected order (heaviest first)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(super()._split_scope(nodeid))

    config.option.loadscopereorder = False  # xdist's default order is by the number of tests: a long single test last
    return Scheduling(config, log)


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
