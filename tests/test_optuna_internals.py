"""The contract `ablation.engine.optuna_internals` needs from the installed Optuna's private API, on real storages.

If an Optuna release renames `Study._storage`, `Study._study_id`, `FrozenTrial._trial_id` or moves
`optuna.storages._heartbeat`, these fail here, by name, before a worker takes a unit twice.
"""

import re
import threading
import time
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from packaging.specifiers import SpecifierSet

from ablation.engine import optuna_internals

REPO = Path(__file__).resolve().parents[1]
X = optuna.distributions.FloatDistribution(0, 1)


def journal_study(tmp_path, name="s") -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "q.journal")))
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True)


def test_the_installed_optuna_is_within_the_versions_pyproject_allows():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [re.sub(r"^optuna", "", d).strip() for d in dependencies if re.match(r"optuna\b(?!-)", d)]
    assert "<" in spec, f"optuna{spec}: bound the major version the adapter is tested with"
    assert optuna.__version__ in SpecifierSet(spec), (optuna.__version__, spec)


def test_take_waiting_gives_a_waiting_trial_to_one_caller_and_creates_none(tmp_path):
    study = journal_study(tmp_path)
    assert optuna_internals.take_waiting(study) is None and study.trials == []  # nothing made when the queue is empty
    study.enqueue_trial({"x": 0.25}, user_attrs={"unit": "a"})
    taken, together = [], threading.Barrier(4)

    def worker():
        own = journal_study(tmp_path)  # each with its own storage object, as processes have
        together.wait()
        trial = optuna_internals.take_waiting(own)
        if trial is not None:
            taken.append(trial)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(taken) == 1
    (trial,) = taken
    assert trial.number == 0 and trial.user_attrs == {"unit": "a"} and trial.suggest_float("x", 0, 1) == 0.25
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]


def test_fail_running_wins_once_and_requeue_copies_the_trial_up_to_max_retry(tmp_path):
    study = journal_study(tmp_path)
    study.enqueue_trial({"x": 0.5}, user_attrs={"unit": "a"})
    for attempt in range(3):
        trial = optuna_internals.take_waiting(study)
        assert trial is not None and trial.user_attrs["unit"] == "a"
        assert trial.suggest_float("x", 0, 1) == 0.5  # the enqueued value, on every copy
        assert optuna_internals.fail_running(study, trial) is True
        assert optuna_internals.fail_running(study, trial) is False  # finished: another caller gets False
        optuna_internals.requeue(study, trial, max_retry=2)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL] * 3  # two copies, then no third
    copies = study.get_trials()[1:]
    assert [t.system_attrs["failed_trial"] for t in copies] == [0, 0]  # each names the first attempt


def test_a_queued_again_trial_is_taken_before_the_units_queued_after_it(tmp_path):
    """A unit whose worker died (or was stopped) goes back in its place, not behind every unit not yet
    started: on a device budget, seed 0's interrupted unit ran after all the later seeds' units."""
    study = journal_study(tmp_path)
    for unit in "abc":
        study.enqueue_trial({"x": 0.5}, user_attrs={"unit": unit})
    first = optuna_internals.take_waiting(study)
    assert first.user_attrs["unit"] == "a" and optuna_internals.fail_running(study, first)
    optuna_internals.requeue(study, first, max_retry=2)  # trial 3, a copy of trial 0
    order = []
    while (trial := optuna_internals.take_waiting(study)) is not None:
        order.append(trial.user_attrs["unit"])
    assert order == ["a", "b", "c"]


def test_a_stopped_unit_is_queued_again_however_often_it_is_stopped(tmp_path):
    """Stops (a budget, Ctrl-C) are not failures: Optuna's retry count (2 here) is for dead workers only.
    A unit longer than a device script's budget must survive any number of budgeted invocations."""
    from ablation.engine import queue

    study = journal_study(tmp_path)
    study.enqueue_trial({"x": 0.5}, user_attrs={"unit": "a"})
    stopped = queue.Queue(study, execute=lambda trial: (_ for _ in ()).throw(KeyboardInterrupt))
    for _ in range(4):
        trial = optuna_internals.take_waiting(study)
        assert trial is not None and trial.user_attrs["unit"] == "a" and trial.suggest_float("x", 0, 1) == 0.5
        with pytest.raises(KeyboardInterrupt):
            queue.attempt(stopped, trial)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 + [TrialState.WAITING]
    assert {t.system_attrs["failed_trial"] for t in trials[1:]} == {0}  # every copy keeps the first one's place
    assert all(not t.system_attrs.get("retry_history") for t in trials)  # no stop counted as a retry


def test_heartbeats_keep_a_trial_alive_and_fail_stale_retries_it_once_they_stop(tmp_path):
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=2,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    study = optuna.create_study(storage=storage, study_name="h")
    assert optuna_internals.has_heartbeat(study) and not optuna_internals.has_heartbeat(journal_study(tmp_path))
    study.enqueue_trial({"x": 0.75})
    trial = optuna_internals.take_waiting(study)
    with optuna_internals.heartbeat(study, trial):
        time.sleep(3.5)  # past the grace period: only the heartbeat keeps it alive
        optuna_internals.fail_stale(study)
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    time.sleep(3)
    optuna_internals.fail_stale(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["fixed_params"] == {"x": 0.75} and trials[1].system_attrs["failed_trial"] == 0
