"""A network too large to build is refused before a run opens; a stop request ends a long build at once."""

import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_command
from test_resilience import ladder

DEEP = """
[study]
name = "tiny"
cumulative = false
[base]
model = "template_resnet"
model_args = { stage2_blocks = 60, stage3_blocks = 1, stage4_blocks = 1 }
epochs = 1
batch_size = 16
train_subset = 80
test_subset = 32
run_eagerly = true
[[steps]]
name = "deep"
"""


def test_an_absurd_block_count_is_refused_in_one_line_before_any_run(tmp_path, cifar_tree):
    done = run_command("ladder", ["--profile", "smoke", "--no-report", "--data", str(cifar_tree),
                                  "--set", "stage2_blocks=100000"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "stage2_blocks" in message[0] and "0..64" in message[0], done.stderr
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()])


def _wait_for_params(store, process, timeout: float = 300.0):
    """Until the run has logged its params (training, and so the build, starts right after), or the process ended.

    The store is read only once the ladder has printed the step's line: it has made the store by then.
    """
    for line in process.stdout:
        if "template_resnet {" in line:
            break
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (store / "mlflow.db").exists():
            client = MlflowClient(f"sqlite:///{store}/mlflow.db")
            experiment = client.get_experiment_by_name("tiny")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if any(r.data.params.get("stage2_blocks") == "60" for r in runs):
                return client, experiment
        time.sleep(0.5)
    pytest.fail("the ladder never logged the deep step's params")


@pytest.mark.slow
def test_sigterm_while_a_deep_network_builds_ends_the_ladder_within_seconds(tmp_path, cifar_tree):
    # 60 blocks build for about half a minute on a 2-core machine: the stop must not wait for the first batch end.
    process = ladder(tmp_path, DEEP, cifar_tree, start_new_session=True)
    try:
        client, experiment = _wait_for_params(tmp_path, process)
        time.sleep(2.0)  # well inside the build
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        output = process.communicate(timeout=300)[0]
    finally:
        process.kill()  # a failed wait must not leave the ladder building
    assert time.monotonic() - sent < 10, output[-2000:]
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    states = {r.data.tags.get("ablation.kind"): r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert states and set(states.values()) == {"KILLED"}, states
    assert "Traceback" not in output
