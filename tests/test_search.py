"""The Optuna search: real Optuna storages, a real MLflow store in a temp dir, real CIFAR-10 slices.

Trials train a minimal template ResNet (no identity blocks) on 64-96 images for 1-3 epochs: seconds each.
"""

import contextlib
import dataclasses
import io
import os
import socket
import subprocess
import sys
import types

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ablation import search, tracking
from ablation.core.config import StudyError, with_values
from ablation.core.profiles import get_profile
from ablation.core.study import apply_overrides, load_study
from ablation.engine import trials
from ablation.tracking import Kind, Tag
from conftest import tiny_study

DEPTH_DROPOUT_LR = """
[search.params.stage2_blocks]
type = "int"
low = 0
high = 1

[search.params.dropout_rate]
type = "float"
low = 0.0
high = 0.5

[search.params.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""
# A learning rate of 1e30 is a valid number, but Adam's first steps overflow float32: the loss goes
# non-finite and training raises. `epochs` is a Config field, searched like a knob.
BREAKABLE = """
[search.params.learning_rate]
type = "categorical"
choices = [1e-3, 1e30]

[search.params.epochs]
type = "int"
low = 1
high = 3
"""


def write_study(tmp_path, params=DEPTH_DROPOUT_LR, epochs=1, monitor="val_accuracy"):
    """The tests' tiny study (conftest), one step "small", searched over `params` for `monitor`."""
    return tiny_study(tmp_path / "tiny.toml", '[[steps]]\nname = "small"\n', epochs=epochs,
                      after=f'[search]\nmonitor = "{monitor}"\n{params}')


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A temp MLflow store (and so the default Optuna journal beside it); reports/ under tmp_path too."""
    folder = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return folder


def optuna_study(journal, name):
    storage, _, _ = tracking.open_storage(str(journal))
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(folder, experiment="tiny"):
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SEARCH]
    trials = sorted((r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SEARCH_TRIAL),
                    key=lambda r: int(r.data.tags[Tag.OPTUNA_TRIAL]))
    return client, parents, trials


# ---------------------------------------------------------------------------------------------
# Fast: no training.


def test_help_imports_no_framework():
    code = ("import runpy, sys\nsys.argv = ['search', '--help']\n"
            "try:\n    runpy.run_module('ablation.search', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('loaded:', sorted(m for m in ('keras', 'tensorflow', 'mlflow', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--storage" in done.stdout and "--trials" in done.stdout
    assert "loaded: []" in done.stdout  # its time is measured by the benchmark, not asserted here


def test_misspelled_monitor_is_an_error_before_anything_runs(tmp_path, store, capsys):
    # In the study file, the loader refuses it.
    path = write_study(tmp_path, monitor="val_acc")
    assert search.main(["--study", str(path), "--profile", "smoke", "--trials", "1"]) == 2
    assert "val_acc" in capsys.readouterr().err
    # Given to the search directly, the search refuses it before any storage, data or training.
    study = load_study(write_study(tmp_path))
    study = dataclasses.replace(study, search=dataclasses.replace(study.search, monitor="val_acuracy"))
    with pytest.raises(StudyError, match="val_acuracy.*allowed: loss, accuracy, val_loss, val_accuracy"):
        trials.run_search(study, get_profile("smoke"), trials=1, data_path="/nonexistent")
    assert not store.exists()  # no MLflow store, no Optuna journal


def test_storage_option(tmp_path, store):
    storage, kind, where = tracking.open_storage(None)
    assert kind == "journal" and where == str((store / "optuna.journal").resolve())  # beside the MLflow store
    _, kind, where = tracking.open_storage(str(tmp_path / "other.log"))
    assert kind == "journal" and where.endswith("other.log")
    storage, kind, _ = tracking.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    assert kind == "sqlite" and storage.get_heartbeat_interval() == tracking.HEARTBEAT_SECONDS
    with pytest.raises(StudyError, match="journal"):
        tracking.open_storage(str(tmp_path / "optuna.db"))


def test_sampler_is_reproducible_and_never_repeats_across_trials():
    def draws(n):
        study = optuna.create_study(sampler=trials.TrialSeededTPE(7))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
        return [t.params["x"] for t in study.trials]

    first, again = draws(4), draws(4)
    assert first == again  # same seed, same draws
    assert len(set(first)) == 4  # trial k's draws depend on k: a resumed study or a second worker won't replay them


def test_stale_trial_of_a_dead_worker_is_failed_and_queued_again(tmp_path):
    storage, _, _ = tracking.open_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    stale.set_user_attr("worker", f"{host}:{dead.pid}")
    stale.set_user_attr("mlflow_run_id", "abc")
    live = study.ask()
    live.set_user_attr("worker", f"{host}:{os.getpid()}")
    other_host = study.ask()
    other_host.set_user_attr("worker", f"elsewhere:{dead.pid}")

    # Another process (a new worker) opens the same journal and sweeps.
    storage, _, _ = tracking.open_storage(str(tmp_path / "optuna.journal"))
    again = optuna.load_study(study_name="s", storage=storage)
    assert trials.sweep_stale_trials(again) == [(0, "abc")]
    states = [t.state for t in again.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    retry = again.trials[3]  # a copy, as the queue's workers and Optuna's heartbeat retry make it
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == {"x": stale.params["x"]}
    assert retry.user_attrs == {"worker": f"{host}:{dead.pid}", "mlflow_run_id": "abc"}
    assert trials.sweep_stale_trials(again) == []  # swept once only


def test_resuming_with_another_search_is_refused(tmp_path, store):
    study = load_study(write_study(tmp_path))
    space, base, smoke = study.search, study.step("small").config, get_profile("smoke")
    storage, _, where = tracking.open_storage(None)

    def open_with(base, space):
        return trials.open_study(storage, where, "s", "maximize", trials.study_identity(study, space, base, smoke),
                                 trials.TrialSeededTPE(0), None)

    open_with(base, space)
    open_with(base, space)  # the same search resumes
    with pytest.raises(StudyError, match="base config.*learning_rate.*--study-name"):
        open_with(dataclasses.replace(base, learning_rate=0.01), space)
    narrower = dataclasses.replace(space, params=space.params[:1])
    with pytest.raises(StudyError, match="search_space"):
        open_with(base, narrower)


# ---------------------------------------------------------------------------------------------
# Slow: trials train.


@pytest.mark.slow
def test_pruned_and_failed_trials_are_recorded_and_the_search_goes_on(tmp_path, store, cifar_path):
    study = load_study(write_study(tmp_path, params=BREAKABLE))
    # Fixed trials, in this order: completes (1 epoch), fails (diverges), pruned at epoch 2 of 3.
    storage, _, _ = tracking.open_storage(None)
    queued = optuna.create_study(storage=storage, study_name="tiny-full", direction="maximize")
    for params in ({"learning_rate": 1e-3, "epochs": 1}, {"learning_rate": 1e30, "epochs": 1},
                   {"learning_rate": 1e-3, "epochs": 3}):
        queued.enqueue_trial(params)
    # A real pruner that prunes every trial from the second epoch on: no accuracy exceeds 1.1.
    pruner = optuna.pruners.ThresholdPruner(lower=1.1, n_warmup_steps=1)
    summary = trials.run_search(study, get_profile("full"), trials=3, data_path=cifar_path, pruner=pruner)

    recorded = optuna_study(store / "optuna.journal", "tiny-full").trials
    assert [t.state for t in recorded] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    assert "diverged" in recorded[1].user_attrs["error"]
    assert recorded[2].user_attrs["epochs_run"] == 2 and sorted(recorded[2].intermediate_values) == [0, 1]
    assert (summary["complete"], summary["pruned"], summary["failed"], summary["epochs_saved"]) == (1, 1, 1, 1)

    client, _, runs = trial_runs(store)
    assert [(r.info.status, r.data.tags[Tag.TRIAL_STATE]) for r in runs] == [
        ("FINISHED", "complete"), ("FAILED", "failed"), ("FINISHED", "pruned")]
    assert "diverged" in runs[1].data.tags[Tag.ERROR]
    assert runs[2].data.tags["ablation.pruned_at_epoch"] == "2"
    history = client.get_metric_history(runs[2].info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]  # the epochs it ran are logged before it was pruned
    assert "test_accuracy" not in runs[2].data.metrics
    assert "complete, 1 pruned, 1 failed; pruning saved 1 of" in search.format_table(summary, "val_accuracy")


@pytest.fixture(scope="module")
def workers_then_resume(tmp_path_factory, cifar_path):
    """Two worker processes run the same command on one (fresh) store at once; then the command runs again."""
    tmp = tmp_path_factory.mktemp("workers")
    store, path = tmp / "store", write_study(tmp)
    args = ["--study", str(path), "--profile", "smoke", "--data", str(cifar_path), "--trials", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
        patch.chdir(tmp)
        workers = [subprocess.Popen([sys.executable, "-m", "ablation.search", *args], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        outputs = [w.communicate(timeout=600)[0] for w in workers]
        for worker, output in zip(workers, outputs):
            assert worker.returncode == 0, output
        after_workers = optuna_study(store / "optuna.journal", "tiny-smoke").trials
        _, _, runs_after_workers = trial_runs(store)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert search.main(args) == 0
    return types.SimpleNamespace(tmp=tmp, store=store, path=path, after_workers=after_workers,
                                 runs_after_workers=runs_after_workers, printed=printed.getvalue())


@pytest.mark.slow
def test_two_workers_share_one_study_and_record_every_trial_once(workers_then_resume):
    trials, runs = workers_then_resume.after_workers, workers_then_resume.runs_after_workers
    assert sorted(t.number for t in trials) == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # one trial from each worker
    assert [r.data.tags["ablation.optuna_trial"] for r in runs] == ["0", "1"]  # each exactly once
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in runs}
    assert all(r.info.status == "FINISHED" and r.data.tags[Tag.TRIAL_STATE] == "complete" for r in runs)
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 2  # each under its worker's parent run


@pytest.mark.slow
def test_a_second_invocation_adds_trials_to_the_same_study(workers_then_resume):
    store, path, printed = workers_then_resume.store, workers_then_resume.path, workers_then_resume.printed
    assert "2 trials so far" in printed
    trials = optuna_study(store / "optuna.journal", "tiny-smoke").trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[2].params not in (trials[0].params, trials[1].params)  # no replay of earlier draws
    client, parents, runs = trial_runs(store)
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)
    assert [r.data.tags["mlflow.runName"] for r in runs] == ["trial-0000", "trial-0001", "trial-0002"]
    for run, trial in zip(runs, trials):
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED" and tags[Tag.TRIAL_STATE] == "complete"
        assert tags["ablation.optuna_study"] == "tiny-smoke" and trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert params["learning_rate"] == str(trial.params["learning_rate"])  # the resolved config, flat
        assert params["stage2_blocks"] == str(trial.params["stage2_blocks"]) and params["epochs"] == "1"
        assert params["train_subset"] == "80"  # the study's subset, smaller than the smoke profile's
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
        assert "test_accuracy" in run.data.metrics

    # The top-trials table, and the best trial as a study step that loads and reproduces its config.
    assert "3 complete, 0 pruned, 0 failed" in printed
    best = max(trials, key=lambda t: t.value)
    snippet = (workers_then_resume.tmp / "reports" / "tiny" / "best_step-tiny-smoke.toml").read_text()
    assert f"trial {best.number}" in snippet and snippet in printed
    extended = workers_then_resume.tmp / "extended.toml"
    extended.write_text(path.read_text() + "\n" + snippet)
    step = load_study(extended).step("search_best")
    assert step.config == with_values(load_study(path).step("small").config, best.params)
    latest = max(parents, key=lambda p: p.info.start_time)
    assert "best_step.toml" in {a.path for a in client.list_artifacts(latest.info.run_id)}



@pytest.mark.slow
def test_a_queued_search_trains_every_trial_with_the_set_values(tmp_path, store, cifar_path):
    """`search --workers --plan-only --set batch_size=16` with `worker --processes 2`: the workers train every
    trial at 16 (the queue carries the resolved search, not a file to read again), as a local search names
    and records it; the planner trains none."""
    path = write_study(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    planner = subprocess.Popen([sys.executable, "-m", "ablation.search", "--study", str(path), "--profile", "smoke",
                                "--data", str(cifar_path), "--trials", "2", "--workers", "--plan-only",
                                "--set", "batch_size=16"], env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "ablation.worker", "--data", str(cifar_path), "--idle", "30",
                               "--processes", "2"], env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    outputs = [process.communicate(timeout=900)[0] for process in (planner, worker)]
    assert planner.returncode == 0 and worker.returncode == 0, "\n\n".join(outputs)
    client, (parent,), runs = trial_runs(store)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), "\n\n".join(outputs)
    assert [r.data.params["batch_size"] for r in runs] == ["16", "16"], "\n\n".join(outputs)
    assert {r.data.tags[Tag.PID] for r in runs}.isdisjoint({str(planner.pid), str(worker.pid)})  # the children's
    assert all("system/cpu_utilization_percentage" in r.data.metrics for r in runs)
    name = trials.default_study_name(apply_overrides(load_study(path), {"batch_size": 16}), get_profile("smoke"), None)
    assert name != "tiny-smoke" and name.startswith("tiny-smoke-set")  # as a local search with --set names it
    assert {r.data.tags[Tag.OPTUNA_STUDY] for r in runs} == {parent.data.tags[Tag.OPTUNA_STUDY]} == {name}
    assert parent.data.tags[Tag.PRUNER] == "MedianPruner" and parent.data.tags[Tag.OVERRIDES] == '{"batch_size": 16}'
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


def test_a_queued_search_starts_no_trial_after_its_timeout(tmp_path, store, cifar_path):
    """--timeout reaches the queue: a trial taken after it fails untrained and is left out of the outcome."""
    path = write_study(tmp_path)
    done = subprocess.run([sys.executable, "-m", "ablation.search", "--study", str(path), "--profile", "smoke",
                           "--data", str(cifar_path), "--trials", "2", "--workers", "--timeout", "0.001"],
                          text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 trial(s) added" in done.stdout and "0 complete, 0 pruned, 0 failed" in done.stdout, done.stdout
    trials = optuna_study(store / "optuna.journal", "tiny-smoke").trials
    assert [t.user_attrs.get("not_started") for t in trials] == [True, True]
    client, (parent,), runs = trial_runs(store)
    assert runs == [] and parent.info.status == "FINISHED"
