"""The shared work queue end to end: PostgreSQL, an MLflow tracking server, planners and workers as processes.

One smoke ladder (2 steps x 2 seeds) and a 2-trial smoke search are planned into a fresh PostgreSQL
database; three `python -m ablation.worker` processes join; one of them is SIGKILLed while it trains.
Heartbeats are shortened through $ABLATION_HEARTBEAT / $ABLATION_GRACE so the retry comes in seconds.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_study_text

REPO = Path(__file__).resolve().parents[1]

# The tests' tiny study (conftest) in batches of 16, 25 epochs (1 at the smoke profile): two steps and a search.
STEPS = """[[steps]]
name = "small"

[[steps]]
name = "flip"
horizontal_flip = true
"""
SEARCH = """
[search]
base_step = "small"

[search.params.dropout_rate]
type = "float"
low = 0.0
high = 0.5
"""
STUDY = tiny_study_text(STEPS, name="queue_e2e", epochs=25, batch_size=16, after=SEARCH)


@pytest.fixture(scope="module")
def cifar_slice(cifar_path, tmp_path_factory) -> Path:
    """The first 20 training and 10 test images of each class of the real archive, as an image-folder tree:
    each of the test's six processes reads it in a moment instead of the whole archive."""
    from PIL import Image

    from ablation.data import load_cifar10

    root, dataset = tmp_path_factory.mktemp("cifar_slice"), load_cifar10(cifar_path)
    for split, x, y, per_class in (("train", dataset.x_train, dataset.y_train, 20),
                                   ("test", dataset.x_test, dataset.y_test, 10)):
        for label, name in enumerate(dataset.class_names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number, index in enumerate(np.flatnonzero(y == label)[:per_class]):
                Image.fromarray(x[index]).save(folder / f"{number:03d}.png")
    return root


def start(module: str, args: list, env: dict, log: Path) -> subprocess.Popen:
    """`python -m ablation.<module> ARGS` in the background, output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", f"ablation.{module}", *args], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


def queue_studies(storage_url: str, count: int, timeout: float = 600) -> dict:
    """Wait until `count` queue studies are planned; name -> optuna.Study."""
    import optuna

    from ablation import tracking

    storage = tracking.open_storage(storage_url)[0]  # the planners may be creating Optuna's tables right now
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        planned = [s.study_name for s in storage.get_all_studies() if "planned" in s.user_attrs]
        if len(planned) == count:
            return {name: optuna.load_study(study_name=name, storage=storage) for name in planned}
        time.sleep(1)
    pytest.fail(f"the planners did not queue their work within {timeout} s")


def kill_a_training_worker(studies: dict, workers: list, client, timeout: float = 600):
    """SIGKILL a worker as soon as one holds a unit whose run has logged its config (training has begun)."""
    from optuna.trial import TrialState

    pids = {w.pid: w for w in workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, study in studies.items():
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                pid = int(trial.user_attrs.get("worker", "0:0").rpartition(":")[2])
                run_id = trial.user_attrs.get("mlflow_run_id")
                if pid in pids and run_id and client.get_run(run_id).data.params:
                    pids[pid].send_signal(signal.SIGKILL)
                    pids[pid].wait(30)
                    return name, trial.number, run_id
        time.sleep(0.3)
    pytest.fail(f"no worker held a unit in training within {timeout} s")


def finish(processes: list, logs: list, timeout: float = 900) -> list[str]:
    """Wait for every process (killing what is left at the timeout); their outputs."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(max(1, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [log.read_text() for log in logs]


@pytest.mark.slow
def test_workers_share_a_ladder_and_a_search_and_retry_a_killed_workers_unit(
        postgres, mlflow_tracking_server, cifar_slice, tmp_path):
    from mlflow.tracking import MlflowClient

    study_file = tmp_path / "queue_e2e.toml"
    study_file.write_text(STUDY)
    storage_url = postgres.create_database("queue_e2e")  # empty: the processes create Optuna's tables together
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_tracking_server, "ABLATION_DATA": str(cifar_slice),
           "ABLATION_HEARTBEAT": "3", "ABLATION_GRACE": "30", "PYTHONUNBUFFERED": "1",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    common = ["--study", str(study_file), "--profile", "smoke", "--workers", "--storage", storage_url]
    planners = [start("ladder", [*common, "--seeds", "2", "--no-report"], env, tmp_path / "ladder.log"),
                start("search", [*common, "--trials", "2"], env, tmp_path / "search.log")]
    client = MlflowClient(mlflow_tracking_server)
    workers = []
    try:
        studies = queue_studies(storage_url, count=2)
        workers = [start("worker", ["--storage", storage_url, "--idle", "3"], env, tmp_path / f"worker{i}.log")
                   for i in range(3)]
        killed = kill_a_training_worker(studies, workers, client)
    finally:
        outputs = finish(planners + workers, [tmp_path / n for n in ("ladder.log", "search.log")]
                         + [tmp_path / f"worker{i}.log" for i in range(len(workers))])
    codes = [p.returncode for p in planners + workers]
    assert sorted(codes) == [-signal.SIGKILL, 0, 0, 0, 0], "\n\n".join(outputs)
    assert "all 4 units of queue" in outputs[0] and "(postgresql)" in outputs[0], outputs[0]
    assert sum("retries the unit its dead worker left" in output for output in outputs) == 1, "\n\n".join(outputs)

    check_optuna(studies, killed)
    ladder_parent = check_mlflow(client, killed)
    # The same work in one process, as `python -m ablation.ladder` runs it: it finds every unit finished
    # (by work key) and summarizes the same numbers through its own path.
    single = subprocess.run([sys.executable, "-m", "ablation.ladder", "--study", str(study_file), "--profile", "smoke",
                             "--seeds", "2", "--no-report"], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0 and single.stdout.count("reused finished run") == 4, single.stdout + single.stderr
    assert summary_of(client, ladder_parent, tmp_path / "shared") == summary_of(client, latest_ladder(client),
                                                                                 tmp_path / "single")


def check_optuna(studies: dict, killed: tuple):
    """Every unit complete exactly once; the killed trial failed and its retry completed."""
    from optuna.trial import TrialState

    name, number, run_id = killed
    for study_name, study in studies.items():
        trials = study.get_trials()
        states = collections.Counter(t.state for t in trials)
        expected_failed = 1 if study_name == name else 0
        assert states[TrialState.FAIL] == expected_failed and states[TrialState.WAITING] == 0, states
        assert states[TrialState.RUNNING] == 0, states
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if study_name.startswith("units-"):
            keys = collections.Counter(t.user_attrs["unit"]["work_key"] for t in finished)
            assert len(keys) == 4 and set(keys.values()) == {1}, keys
        else:
            assert len(finished) == 2, [t.state for t in trials]
    retry = [t for t in studies[name].get_trials() if t.system_attrs.get("failed_trial") == number]
    assert len(retry) == 1 and retry[0].state != TrialState.FAIL
    assert retry[0].user_attrs["mlflow_run_id"] != run_id


def check_mlflow(client, killed: tuple) -> str:
    """One FINISHED run per unit, under its planner's parent; the killed attempt's run KILLED; none RUNNING."""
    experiment = client.get_experiment_by_name("queue_e2e").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    by_kind = collections.defaultdict(list)
    for run in runs:
        by_kind[run.data.tags["ablation.kind"]].append(run)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert client.get_run(killed[2]).info.status == "KILLED"
    (ladder_parent,), (search_parent,) = by_kind["ladder"], by_kind["search"]
    assert ladder_parent.info.status == search_parent.info.status == "FINISHED"
    steps = [r for r in by_kind["ladder_step"] if r.info.status == "FINISHED"]
    assert len(steps) == 4 and len({r.data.tags["ablation.work_key"] for r in steps}) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in steps} == {ladder_parent.info.run_id}
    trials = [r for r in by_kind["search_trial"] if r.info.status == "FINISHED"]
    assert len(trials) == 2 and len({r.data.tags["ablation.optuna_trial"] for r in trials}) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {search_parent.info.run_id}
    killed_runs = [r for r in runs if r.info.status == "KILLED"]
    assert [r.info.run_id for r in killed_runs] == [killed[2]]
    assert len(by_kind["ladder_step"]) + len(by_kind["search_trial"]) == 4 + 2 + 1
    return ladder_parent.info.run_id


def latest_ladder(client) -> str:
    """The id of the newest ladder parent run of the study."""
    experiment = client.get_experiment_by_name("queue_e2e").experiment_id
    return client.search_runs([experiment], "tags.`ablation.kind` = 'ladder'",
                              order_by=["attributes.start_time DESC"], max_results=1)[0].info.run_id


def summary_of(client, run_id: str, folder: Path) -> dict:
    """A ladder parent's summary.json: per-step intervals and the paired tests."""
    folder.mkdir()
    return json.loads(Path(client.download_artifacts(run_id, "summary.json", str(folder))).read_text())


# ---------------------------------------------------------------------------------------------
# Many workers per machine (`--processes K`, `--gpus IDS --per-gpu K`) and a planner that trains nothing.


def local_env(tmp_path: Path, cifar_slice: Path, gpus: str = "") -> dict:
    """A store and a journal queue in tmp_path; `gpus`: what a stand-in `nvidia-smi -L` lists (no GPU here)."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir(parents=True)
    (bin_folder / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(f'echo "GPU {g}: stand-in (UUID: GPU-{g})"\n'
                                                                  for g in gpus.split(",") if g))
    (bin_folder / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/store/mlflow.db", "PYTHONUNBUFFERED": "1",
           "ABLATION_DATA": str(cifar_slice), "PATH": f"{bin_folder}:{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def ladder_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")
    experiment = client.get_experiment_by_name("queue_e2e").experiment_id
    return client.search_runs([experiment], "tags.`ablation.kind` = 'ladder_step'", max_results=1000)


def test_options_that_cannot_apply_are_one_line_errors(tmp_path, cifar_slice):
    env = local_env(tmp_path, cifar_slice)  # its nvidia-smi lists no GPU
    cases = [("worker", ["--per-gpu", "2"], "--per-gpu goes with --gpus"),
             ("worker", ["--processes", "2", "--gpus", "0"], "not both"),
             ("worker", ["--gpus", "0,0"], "each once"),
             ("worker", ["--gpus", "0", "--per-gpu", "2"], "--gpus 0: no such GPU here (nvidia-smi -L lists none)"),
             ("ladder", ["--plan-only"], "--plan-only plans for the shared queue: give it with --workers"),
             ("search", ["--plan-only"], "--plan-only plans for the shared queue: give it with --workers")]
    for module, args, needle in cases:
        done = subprocess.run([sys.executable, "-m", f"ablation.{module}", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and needle in done.stderr, (module, args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
def test_two_pinned_workers_share_one_gpu_slot_and_a_plan_only_planner_trains_nothing(tmp_path, cifar_slice):
    """`ladder --workers --plan-only` queues 4 units; `worker --gpus 0 --per-gpu 2` starts two workers pinned
    to GPU 0 (a stand-in nvidia-smi lists it; TensorFlow finds no GPU and trains on the CPU). Each unit is
    trained once, by the children, none by the planner."""
    study_file = tmp_path / "queue_e2e.toml"
    study_file.write_text(STUDY)
    env = local_env(tmp_path, cifar_slice, gpus="0")
    planner = start("ladder", ["--study", str(study_file), "--profile", "smoke", "--seeds", "2", "--no-report",
                               "--workers", "--plan-only"], env, tmp_path / "ladder.log")
    workers = start("worker", ["--gpus", "0", "--per-gpu", "2", "--idle", "20"], env, tmp_path / "workers.log")
    outputs = finish([planner, workers], [tmp_path / "ladder.log", tmp_path / "workers.log"])
    assert planner.returncode == 0 and workers.returncode == 0, "\n\n".join(outputs)
    assert "all 4 units of queue" in outputs[0] and "(0 run by this process)" in outputs[0], outputs[0]
    assert outputs[1].count(", GPU 0") == 2, outputs[1]  # each child pinned: CUDA_VISIBLE_DEVICES=0
    runs = ladder_runs(tmp_path)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["ablation.work_key"] for r in runs}) == 4  # each unit trained exactly once
    trainers = collections.Counter(r.data.tags["ablation.pid"] for r in runs)
    assert str(planner.pid) not in trainers and str(workers.pid) not in trainers  # the children trained them
    assert len(trainers) == 2, trainers  # both workers of the slot took units


@pytest.mark.slow
def test_sigterm_to_a_worker_with_children_stops_every_child_and_requeues_their_units(tmp_path, cifar_slice):
    """`worker --processes 2` told SIGTERM while both children train: each puts its unit back (run KILLED,
    trial queued again) and exits; then the parent exits 143."""
    import optuna
    from optuna.trial import TrialState

    study_file = tmp_path / "queue_e2e.toml"
    # 100 epochs at miniature: still training
    study_file.write_text(tiny_study_text(STEPS, name="queue_e2e", epochs=100, batch_size=16, after=SEARCH))
    env = local_env(tmp_path, cifar_slice)
    planner = start("ladder", ["--study", str(study_file), "--profile", "miniature", "--seeds", "2", "--no-report",
                               "--workers", "--plan-only"], env, tmp_path / "ladder.log")
    workers = start("worker", ["--processes", "2", "--idle", "120"], env, tmp_path / "workers.log")
    try:
        journal = str(tmp_path / "store" / "optuna.journal")
        (study,) = queue_studies(journal, count=1).values()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.user_attrs.get("mlflow_run_id")]
            if len(running) == 2 and all(epochs_logged(tmp_path, t.user_attrs["mlflow_run_id"]) for t in running):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the two children did not both train within 600 s")
        workers.send_signal(signal.SIGTERM)
        workers.wait(120)
    finally:
        planner.send_signal(signal.SIGTERM)
        outputs = finish([planner, workers], [tmp_path / "ladder.log", tmp_path / "workers.log"])
    assert workers.returncode == 143, outputs[1]
    children = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in running}
    assert not any(psutil_alive(pid) for pid in children), outputs[1]
    study = optuna.load_study(study_name=study.study_name, storage=tracking_storage(journal))
    states = collections.Counter(t.state for t in study.get_trials())
    assert states[TrialState.FAIL] == 2 and states[TrialState.RUNNING] == 0, states  # their copies wait again
    killed = {r.info.run_id: r.info.status for r in ladder_runs(tmp_path)}
    assert [killed[t.user_attrs["mlflow_run_id"]] for t in running] == ["KILLED", "KILLED"], outputs[1]


def epochs_logged(tmp_path: Path, run_id: str) -> bool:
    from mlflow.tracking import MlflowClient

    return bool(MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db").get_metric_history(run_id, "loss"))


def psutil_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def tracking_storage(spec: str):
    from ablation import tracking

    return tracking.open_storage(spec)[0]


@pytest.mark.slow
def test_a_queued_and_a_local_ladder_record_a_unit_alike(tmp_path, cifar_slice):
    """The same unit, trained by `ladder` in one process and by `ladder --workers` through the queue: the same
    run tags (their values, but for the process and parent run), params and metric names, system metrics too."""
    from mlflow.tracking import MlflowClient

    study_file = tmp_path / "queue_e2e.toml"
    study_file.write_text(STUDY)
    runs = {}
    for mode, extra in (("local", []), ("queued", ["--workers"])):
        env = {**local_env(tmp_path / mode, cifar_slice), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
        done = subprocess.run([sys.executable, "-m", "ablation.ladder", "--study", str(study_file), "--profile", "smoke",
                               "--steps", "small", "--no-report", *extra], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        (runs[mode],) = ladder_runs(tmp_path / mode)
    local, queued = runs["local"].data, runs["queued"].data
    # Who ran it and when: the process, its parent run, and the code's commit (others may commit meanwhile).
    varying = {"ablation.pid", "mlflow.parentRunId", "ablation.code_version", "mlflow.source.git.commit"}
    assert set(local.tags) - varying == set(queued.tags) - varying
    differing = {k for k in local.tags if k not in varying and local.tags[k] != queued.tags.get(k)}
    assert not differing, {k: (local.tags[k], queued.tags.get(k)) for k in differing}
    assert local.params == queued.params
    assert set(local.metrics) == set(queued.metrics) and any(k.startswith("system/") for k in local.metrics)
    client = MlflowClient(f"sqlite:///{tmp_path}/queued/store/mlflow.db")
    assert client.get_run(queued.tags["mlflow.parentRunId"]).data.tags["ablation.kind"] == "ladder"
