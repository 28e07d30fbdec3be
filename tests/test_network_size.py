"""A network too large to build is refused before a run opens; a stop request ends a long build at once."""

import signal
import subprocess
import sys
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
model = "inception_resnet"
model_args = { blocks_a = 21, blocks_b = 21, blocks_c = 21 }
epochs = 1
batch_size = 64
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
    assert len(message) == 1 and "stage2_blocks" in message[0] and "0..21" in message[0], done.stderr
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()])


DEEPEST = {"template_resnet": ("stage2_blocks", "stage3_blocks", "stage4_blocks"),
           "inception_resnet": ("blocks_a", "blocks_b", "blocks_c")}  # its blocks are the longest paths


@pytest.mark.slow
def test_the_deepest_allowed_networks_build_and_reload_at_pythons_default_recursion_limit(tmp_path):
    from ablation.core.config import knob_rule
    from ablation.models import build_model

    paths = []
    for model, knobs in DEEPEST.items():
        deepest = {knob: max(n for n in range(1000) if knob_rule(model, knob).accepts(n)) for knob in knobs}
        paths.append(tmp_path / f"{model}.keras")
        build_model(model, **deepest).save(paths[-1])
    # A user reloads a logged network in a fresh process, with a few hundred frames of their own below it.
    code = ("import sys, keras, ablation.models.layers\n"
            "sys.setrecursionlimit(sys.getrecursionlimit() - 200)\n"
            f"for path in {[str(p) for p in paths]}: print(len(keras.models.load_model(path).layers))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.split()) == len(paths), done.stdout


def _wait_for_build(store, process, timeout: float = 300.0):
    """Until the run has logged its params and datasets (the build starts right after), or the process ended.

    The store is read only once the ladder has printed the step's line: it has made the store by then.
    """
    for line in process.stdout:
        if "inception_resnet {" in line:
            break
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if any(r.data.params.get("blocks_a") == "21" and r.inputs.dataset_inputs for r in runs):
            return client, experiment
        time.sleep(0.2)
    pytest.fail("the ladder never logged the deep step's params and datasets")


@pytest.mark.slow
def test_sigterm_while_a_deep_network_builds_ends_the_ladder_within_seconds(tmp_path, cifar_tree):
    # 63 Inception-ResNet blocks build for about 8 s on a 2-core machine, and their first eager batch takes longer:
    # the stop must not wait for the first batch end. It is timed to the line reporting it: the exit after it
    # spends seconds more in the interpreter's final garbage collection of the network (a loaded CI machine, 10).
    process = ladder(tmp_path, DEEP, cifar_tree, start_new_session=True)
    try:
        client, experiment = _wait_for_build(tmp_path, process)
        time.sleep(0.5)  # well inside the build
        process.send_signal(signal.SIGTERM)
        sent, lines = time.monotonic(), []
        for line in process.stdout:
            lines.append(line)
            if "interrupted by SIGTERM" in line:
                break
        took = time.monotonic() - sent
        output = "".join(lines) + process.communicate(timeout=300)[0]
    finally:
        process.kill()  # a failed wait must not leave the ladder building
    assert "interrupted by SIGTERM" in output and took < 1.5, f"{took:.1f} s\n{output[-2000:]}"
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    states = {r.data.tags.get("ablation.kind"): r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert states and set(states.values()) == {"KILLED"}, states
    assert "Traceback" not in output
