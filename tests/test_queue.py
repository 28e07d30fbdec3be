"""The work queue's planning and its checks, on real storages (PostgreSQL, a journal file), without training."""

import dataclasses
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ablation import tracking, worker
from ablation.core.config import StudyError
from ablation.core.profiles import get_profile
from ablation.core.study import load_study
from ablation.data import LazySplits
from ablation.engine import queue, units

REPO = Path(__file__).resolve().parents[1]
FINGERPRINT = {"source": "cifar-10-python.tar.gz", "train_size": 128, "val_size": 32, "test_size": 100,
               "subset_train": 160, "subset_test": 100, "seed": 0, "validation_split": 0.2,
               "digest": "0123456789abcdef"}


def ladder_specs(parent_run_id="parent") -> list[dict]:
    """The specs of the assignment's smoke ladder with 2 seeds, as a planner makes them (a made-up digest)."""
    study, profile = load_study(REPO / "studies" / "assignment.toml"), get_profile("smoke")
    study = dataclasses.replace(study, seeds=(0, 1))
    planned = units.ladder_units(study, profile, units.resolve_steps(study, profile))
    return [queue.unit_spec(unit, FINGERPRINT, study.name, parent_run_id, force=False) for unit in planned]


def test_planners_of_the_same_work_started_together_queue_it_once(postgres):
    """Four planners at once on a fresh database: one creates the queue and enqueues, three join it."""
    storage_url = postgres.create_database("plan_once")
    specs = ladder_specs()
    name = queue.queue_name("assignment", "assignment-smoke", specs)
    together, said = threading.Barrier(4), []

    def planner():
        storage = tracking.open_storage(storage_url)[0]
        together.wait()
        queue.plan_units(storage, name, specs, [FINGERPRINT], said.append)

    threads = [threading.Thread(target=planner) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    assert len(specs) == 12 and len(trials) == 12  # 6 steps x 2 seeds, each queued once
    assert sorted(t.user_attrs["unit"]["work_key"] for t in trials) == sorted(s["work_key"] for s in specs)
    assert said.count(f"queue {name!r} exists: joining the planner that made it") == 3
    # A unit rebuilt from its spec is the planned unit: same config hash, same work key.
    unit = queue.unit_from_spec(trials[0].user_attrs["unit"])
    assert units.work_key(unit.config, FINGERPRINT) == trials[0].user_attrs["unit"]["work_key"]


def test_a_worker_whose_data_differs_from_the_planners_stops_with_both_digests(tmp_path, cifar_path):
    journal = tmp_path / "queue.journal"
    storage = tracking.open_storage(str(journal))[0]
    planned = LazySplits(cifar_path).fingerprint(validation_split=0.2, seed=0, train_subset=160, test_subset=100)
    wrong = {**planned, "digest": "ffffffffffffffff"}
    queue.plan_units(storage, "units-other-data", ladder_specs()[:1], [wrong], print)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "ablation.worker", "--storage", str(journal), "--data",
                           str(cifar_path), "--idle", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"gives digest {planned['digest']}" in done.stderr and "gave ffffffffffffffff" in done.stderr
    assert "point --data or $ABLATION_DATA at the same data as the planner" in done.stderr
    trial = optuna.load_study(study_name="units-other-data", storage=storage).trials[0]
    assert trial.state == optuna.trial.TrialState.WAITING  # nothing was taken


def test_bad_heartbeat_settings_are_input_errors(monkeypatch):
    monkeypatch.setenv("ABLATION_HEARTBEAT", "10")
    monkeypatch.setenv("ABLATION_GRACE", "5")
    with pytest.raises(StudyError, match="ABLATION_GRACE=5 must exceed"):
        tracking.heartbeat_settings()
    monkeypatch.setenv("ABLATION_GRACE", "soon")
    with pytest.raises(StudyError, match="expected a whole number of seconds"):
        tracking.heartbeat_settings()


@pytest.mark.parametrize("module", ["worker", "migrate"])
def test_help_imports_no_framework(module):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", f"ablation.{module}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "storage" in done.stdout, done.stdout + done.stderr
    assert "ablation.cli" in done.stderr  # -X importtime lists every module imported: --help must stay light
    assert not {"tensorflow", "mlflow", "optuna", "keras"} & {line.rsplit("|", 1)[-1].strip().split(".")[0]
                                                             for line in done.stderr.splitlines()}


def test_a_queue_whose_planner_died_before_it_had_queued_everything_is_an_error_naming_it(tmp_path):
    storage = tracking.open_storage(str(tmp_path / "queue.journal"))[0]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    planner = f"{tracking.worker_id().rpartition(':')[0]}:{int(gone.stdout)}"  # a process of this host, exited
    study = optuna.create_study(study_name="units-half-planned", storage=storage)
    study.set_user_attr(queue.OWNER_ATTR, planner)  # and never `planned`
    expected = re.escape(f"its planner ({planner}) died before it had queued every unit")
    with pytest.raises(queue.WorkError, match=expected):
        queue.wait_until_planned(study, print)
    alive = optuna.create_study(study_name="units-planned", storage=storage)
    alive.set_user_attr(queue.OWNER_ATTR, planner)
    alive.set_user_attr(queue.PLANNED_ATTR, 1)
    queue.wait_until_planned(alive, print)  # planned: returns at once, whoever planned it


WORKER_OPTIONS = ["--processes", "--gpus", "--per-gpu", "--idle", "--queue", "--storage", "--data", "--bogus"]


@settings(max_examples=150, deadline=None)
@given(argv=st.lists(st.tuples(st.sampled_from(WORKER_OPTIONS), st.one_of(
    st.text(max_size=8), st.sampled_from(["0", "1", "2", "-1", "0,1", "0,0", "1,x", "nan", "1e3", ",", "4294967296"]))),
    max_size=4).map(lambda pairs: [part for option, word in pairs for part in (option, word)]))
@example(argv=["--idle", "nan"])
@example(argv=["--per-gpu", "2"])
@example(argv=["--gpus", "0,1", "--per-gpu", "3"])
def test_a_generated_worker_command_line_parses_or_is_one_line(argv):
    """The worker's options (processes, GPUs, workers per GPU): accepted consistently, or one line and exit 2."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = worker.parse_args(argv)
    except SystemExit as exit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        assert exit.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return
    assert 0 <= args.idle < float("inf") and (args.processes is None or args.processes >= 1)
    assert args.per_gpu is None or (args.gpus is not None and args.per_gpu >= 1)
    assert not (args.processes is not None and args.gpus is not None)
    assert args.gpus is None or (all(g.isdigit() for g in args.gpus) and len(set(args.gpus)) == len(args.gpus))
