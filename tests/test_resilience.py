"""Faults performed for real on a tiny network: a kill mid-epoch and the re-run that resumes it, Ctrl-C,
a diverging step, a reused run's tags, a copied store, a data error on a store that holds runs."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablation.tracking import Tag
from conftest import run_command
from probe_errors import snapshot, tiny_vgg, truncated_archive

pytestmark = pytest.mark.slow
ONE_STEP = tiny_vgg('[[steps]]\nname = "only"\ndescription = "the source step"\nreported_test_accuracy = 0.5\n', epochs=3)


def ladder(folder: Path, study: str, data: Path, *extra, **popen):
    (folder / "tiny.toml").write_text(study)
    args = ["--study", str(folder / "tiny.toml"), "--profile", "full", "--no-report", "--data", str(data), *extra]
    return run_command("ladder", args, folder, **popen)


def runs_of(store: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def history(client, run, key="val_loss") -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def stop_at(process, trigger: str, signum, delay: float) -> str:
    """Send `signum` `delay` seconds after the line holding `trigger`; the whole output."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if trigger in line:
            time.sleep(delay)
            process.send_signal(signum)
            break
    return "".join(lines) + process.communicate(timeout=600)[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cifar_tree) -> Path:
    """A store holding one uninterrupted ladder of the one-step study: the reference, copied by tests that add runs."""
    store = tmp_path_factory.mktemp("finished")
    done = ladder(store, ONE_STEP, cifar_tree, "--keep-checkpoints")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return store


def test_keep_checkpoints_keeps_a_finished_steps_last_save(finished):
    saves = list((finished / "checkpoints").glob("*/latest"))
    assert len(saves) == 1
    assert json.loads((saves[0].parent / saves[0].read_text() / "state.json").read_text())["epoch"] == 3


def test_sigkill_mid_epoch_then_the_same_command_resumes_the_same_run(tmp_path, cifar_tree, finished):
    process = ladder(tmp_path, ONE_STEP, cifar_tree, start_new_session=True)
    killed = stop_at(process, "epoch   1/3", signal.SIGKILL, 0.3)  # in epoch 2: epoch 1 is saved
    assert process.returncode == -signal.SIGKILL, killed
    assert (tmp_path / "checkpoints").is_dir() and any((tmp_path / "checkpoints").glob("*/latest"))
    _, before = runs_of(tmp_path)
    assert [r.info.status for r in before] == ["RUNNING", "RUNNING"]  # what SIGKILL leaves

    again = ladder(tmp_path, ONE_STEP, cifar_tree)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from the checkpoint after epoch" in again.stdout and "resumed parent run" in again.stdout
    client, after = runs_of(tmp_path)
    reference_client, reference = runs_of(finished)
    # The same runs (no duplicate), finished, with the epochs and metrics of an uninterrupted ladder.
    assert [r.info.run_id for r in after] == [r.info.run_id for r in before]
    assert [r.info.status for r in after] == ["FINISHED", "FINISHED"] and len(after) == len(reference)
    step, reference_step = after[1], reference[1]
    assert step.data.metrics["epochs_run"] == reference_step.data.metrics["epochs_run"] == 3
    # MLflow samples system/* metrics every 10 s of wall time: a resumed tail may be too short for a sample.
    trained = lambda run: {name for name in run.data.metrics if not name.startswith("system/")}  # noqa: E731
    assert trained(step) == trained(reference_step)
    assert [s for s, _ in history(client, step)] == [1, 2, 3]
    # Weights, optimizer and random states came back: the resumed epochs repeat the uninterrupted ones.
    resumed, uninterrupted = history(client, step), history(reference_client, reference_step)
    assert [v for _, v in resumed] == pytest.approx([v for _, v in uninterrupted])
    assert step.data.tags["ablation.resumed_at_epoch"] in ("1", "2")
    assert not any((tmp_path / "checkpoints").iterdir())  # removed once the step finished


def test_ctrl_c_mid_epoch_ends_killed_keeps_the_checkpoint_and_exits_130(tmp_path, cifar_tree):
    process = ladder(tmp_path, ONE_STEP, cifar_tree, start_new_session=True)
    output = stop_at(process, "epoch   1/3", signal.SIGINT, 0.3)
    assert process.returncode == 130, output
    assert "interrupted by SIGINT" in output and "Run the same command again to resume" in output
    _, runs = runs_of(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    assert runs[1].data.tags["ablation.error"] == "interrupted"
    assert any((tmp_path / "checkpoints").glob("*/latest"))


def test_the_report_shows_the_ladder_that_ended_last_a_resumed_one_included(tmp_path, cifar_tree):
    stopped = ladder(tmp_path, ONE_STEP, cifar_tree, start_new_session=True)
    output = stop_at(stopped, "epoch   1/3", signal.SIGINT, 0.3)
    assert stopped.returncode == 130, output
    newer = ladder(tmp_path, ONE_STEP, cifar_tree, "--seed", "1")  # starts after it, ends before it resumes
    resumed = ladder(tmp_path, ONE_STEP, cifar_tree)
    assert newer.returncode == 0 and resumed.returncode == 0, newer.stdout[-2000:] + resumed.stdout[-2000:]
    _, runs = runs_of(tmp_path)
    parents = {r.data.tags["ablation.seeds"]: r.info.run_id for r in runs if r.data.tags.get("ablation.kind") == "ladder"}
    assert f"resumed parent run {parents['[0]']}" in resumed.stdout and len(parents) == 2
    report = run_command("report", ["--study", str(tmp_path / "tiny.toml"), "--no-log", "--out", str(tmp_path / "r")],
                         tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert f"**ladder run**: tiny-full ({parents['[0]']}, finished" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("second_args", [(), ("--workers",)], ids=["alone", "through-the-queue"])
def test_a_second_command_waits_for_the_live_run_of_the_same_work_and_reuses_it(tmp_path, cifar_tree, second_args):
    first = ladder(tmp_path, ONE_STEP, cifar_tree, start_new_session=True)
    second = None
    try:
        lines = []
        for line in first.stdout:  # its step's run is open once an epoch is logged
            lines.append(line)
            if "epoch   1/3" in line:
                first.send_signal(signal.SIGSTOP)  # paused mid-training: alive, its run RUNNING
                break
        second = ladder(tmp_path, ONE_STEP, cifar_tree, *second_args, start_new_session=True)
        waited = []
        for line in second.stdout:
            waited.append(line)
            if "waiting: run" in line:
                break
        first.send_signal(signal.SIGCONT)
        first_output = "".join(lines) + first.communicate(timeout=600)[0]
        second_output = "".join(waited) + second.communicate(timeout=600)[0]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
    assert first.returncode == 0 and second.returncode == 0, first_output[-2000:] + second_output[-2000:]
    _, runs = runs_of(tmp_path)
    steps = [r for r in runs if r.data.tags.get("mlflow.runName") == "only"]
    trained = [r for r in steps if Tag.REUSED_FROM not in r.data.tags]
    assert [r.info.status for r in steps] == ["FINISHED", "FINISHED"] and len(trained) == 1
    assert f"waiting: run {trained[0].info.run_id} (process {first.pid})" in second_output
    assert f"reused finished run {trained[0].info.run_id}" in second_output
    assert "epoch   1/3" not in second_output  # it trained nothing


DIVERGING = ('[[steps]]\nname = "before"\n[[steps]]\nname = "diverging"\noptimizer = "sgd"\nlearning_rate = 1e12\n'
             '[[steps]]\nname = "after"\nlearning_rate = 0.002\n')


def test_a_diverging_step_fails_in_its_first_epoch_and_the_ladder_completes(tmp_path, cifar_tree):
    done = ladder(tmp_path, tiny_vgg(DIVERGING, epochs=2), cifar_tree)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    client, runs = runs_of(tmp_path)
    by_name = {r.data.tags["mlflow.runName"]: r for r in runs}
    statuses = {name: by_name[name].info.status for name in ("tiny-full", "before", "diverging", "after")}
    assert statuses == {"tiny-full": "FINISHED", "before": "FINISHED", "diverging": "FAILED", "after": "FINISHED"}
    error = by_name["diverging"].data.tags["ablation.error"]
    assert error.startswith("Diverged: training diverged: loss") and "at epoch 1, batch" in error
    assert history(client, by_name["diverging"], "loss") == []  # it stopped before its first epoch ended
    summary = json.loads(Path(client.download_artifacts(by_name["tiny-full"].info.run_id, "summary.json",
                                                        str(tmp_path))).read_text())
    assert [f["step"] for f in summary["failed"]] == ["diverging"]
    assert [s["step"] for s in summary["steps"]] == ["before", "after"]
    table_line = next(line for line in done.stdout.splitlines() if line.startswith("diverging "))
    assert "FAILED" in table_line and "diverged" in table_line
    assert "1 step run(s) failed: diverging" in done.stderr
    report = run_command("report", ["--study", str(tmp_path / "tiny.toml"), "--no-log", "--out", str(tmp_path / "r")],
                         tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "not counted: diverging failed (Diverged: training diverged: loss" in (tmp_path / "r" / "report.md").read_text()


def test_stop_on_failure_ends_the_ladder_at_the_failing_step(tmp_path, cifar_tree):
    study = tiny_vgg(DIVERGING[DIVERGING.index('[[steps]]\nname = "diverging"'):], epochs=1)
    done = ladder(tmp_path, study, cifar_tree, "--stop-on-failure")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error: diverging failed: Diverged" in done.stderr and "--stop-on-failure" in done.stderr
    _, runs = runs_of(tmp_path)
    assert [(r.data.tags["mlflow.runName"], r.info.status) for r in runs] == [("tiny-full", "FAILED"),
                                                                              ("diverging", "FAILED")]


def test_a_reused_run_carries_exactly_the_new_steps_tags_and_a_link(tmp_path, cifar_tree, finished):
    shutil.copytree(finished, tmp_path / "store")
    store = tmp_path / "store"
    renamed = ONE_STEP.replace('name = "only"\ndescription = "the source step"\nreported_test_accuracy = 0.5\n',
                               'name = "renamed"\n')
    done = ladder(store, renamed, cifar_tree)
    assert done.returncode == 0 and "reused finished run" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    _, runs = runs_of(store)
    source, copy = runs[1], runs[-1]
    assert copy.data.tags[Tag.REUSED_FROM] == source.info.run_id
    ours = lambda run: {k for k in run.data.tags if k.startswith(Tag.PREFIX)}  # noqa: E731
    # The source's step set a reported accuracy; the new step sets none, so its copy has none.
    assert Tag.REPORTED_TEST_ACCURACY in source.data.tags
    assert ours(copy) == (ours(source) - {Tag.REPORTED_TEST_ACCURACY}) | {Tag.REUSED_FROM}
    assert copy.data.tags[Tag.STEP] == "renamed" and copy.data.tags[Tag.DESCRIPTION] == ""


def test_a_copied_store_reads_and_writes_its_own_artifacts(tmp_path, cifar_tree, finished):
    shutil.copytree(finished, tmp_path / "copy")
    original = snapshot(finished / "artifacts")
    done = ladder(tmp_path / "copy", ONE_STEP, cifar_tree)
    assert done.returncode == 0 and "reused finished run" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    report = run_command("report", ["--study", str(tmp_path / "copy" / "tiny.toml"), "--out", str(tmp_path / "report")],
                         tmp_path / "copy")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert snapshot(finished / "artifacts") == original  # the original store got nothing, from either command
    client, runs = runs_of(tmp_path / "copy")
    here = (tmp_path / "copy" / "artifacts").resolve().as_uri()
    assert len(runs) == 4 and all(r.info.artifact_uri.startswith(here) for r in runs)
    assert {"config.json", "history.csv"} <= {a.path for a in client.list_artifacts(runs[-1].info.run_id)}
    assert "report" in {a.path for a in client.list_artifacts(runs[-2].info.run_id)}  # the latest parent's


def test_a_data_error_on_a_store_with_runs_adds_no_run(tmp_path, cifar_path, finished):
    shutil.copytree(finished, tmp_path / "store")
    truncated_archive(tmp_path, cifar_path)
    (tmp_path / "store" / "tiny.toml").write_text(ONE_STEP)
    before = snapshot(tmp_path / "store")
    done = run_command("ladder", ["--study", str(tmp_path / "store" / "tiny.toml"), "--profile", "full", "--no-report",
                                  "--force", "--data", str(tmp_path / "cifar-10-python.tar.gz")], tmp_path / "store")
    assert done.returncode == 2 and done.stderr.startswith("error: cannot read"), done.stdout + done.stderr
    assert snapshot(tmp_path / "store") == before


def test_a_killed_queue_workers_unit_goes_on_from_its_checkpoint_on_the_same_machine(tmp_path, cifar_tree, finished):
    process = ladder(tmp_path, ONE_STEP, cifar_tree, "--workers", start_new_session=True)
    killed = stop_at(process, "epoch   1/3", signal.SIGKILL, 0.3)  # in epoch 2: epoch 1 is saved
    assert process.returncode == -signal.SIGKILL, killed
    assert any((tmp_path / "checkpoints").glob("*/latest")), killed

    again = ladder(tmp_path, ONE_STEP, cifar_tree, "--workers")  # joins the queue, retries the dead worker's unit
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "retries the unit its dead worker left" in again.stdout, again.stdout[-3000:]
    assert "resuming from the checkpoint after epoch" in again.stdout, again.stdout[-3000:]
    client, runs = runs_of(tmp_path)
    steps = {r.info.status: r for r in runs if r.data.tags.get("mlflow.runName") == "only"}
    assert sorted(steps) == ["FINISHED", "KILLED"]  # the dead attempt's run, and the retry's
    retry = steps["FINISHED"]
    assert retry.data.tags["ablation.resumed_at_epoch"] in ("1", "2")
    # The retry's run holds every epoch, those of the dead attempt included, with the uninterrupted values.
    reference_client, reference = runs_of(finished)
    resumed, uninterrupted = history(client, retry), history(reference_client, reference[1])
    assert [s for s, _ in resumed] == [1, 2, 3]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in uninterrupted])
    assert not any((tmp_path / "checkpoints").iterdir())  # removed once the unit finished
