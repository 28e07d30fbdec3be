"""A user's first hour: progress on a terminal and in a log, what MLflow shows, --set, a quiet start.

Real commands on real CIFAR-10 slices and temp MLflow stores: under a pseudo-terminal and under a
pipe, the trained model reloaded through MLflow, and the printed UI address opened in headless Chromium.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import mlflow.keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ablation.core.config import Config
from ablation.core.study import load_study
from ablation.data import load_cifar10, make_splits
from ablation.tracking import Kind, Tag
from conftest import run_command, tiny_study_text

pty = pytest.importorskip("pty")  # pseudo-terminals: POSIX only

STEPS = ["template", "augmentation", "deeper_early_stopping", "lr_schedule", "deeper_dropout", "vgg_like"]
ETA = re.compile(r"ETA\s+\d+:\d\d:\d\d")  # rich's bar: "... 0:00:03 ETA 0:00:05"
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves
# The tests' tiny study (conftest) at the template's default dropout and batch size on 200 training images,
# 50 epochs (2 at the smoke profile, so that a bar has an epoch to come), and a search.
TINY = tiny_study_text('[[steps]]\nname = "small"\ndescription = "the template without identity blocks"\n',
                       model_args={"stage2_blocks": 0, "stage3_blocks": 0, "stage4_blocks": 0}, batch_size=None,
                       epochs=50, train_subset=200, test_subset=50,
                       after='[search]\n[search.params.dropout_rate]\ntype = "float"\nlow = 0.0\nhigh = 0.5\n')


def environment(store, **extra):
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "PYTHONUNBUFFERED": "1", **extra}


def run_in_terminal(module, args, store, timeout=900, **extra) -> tuple[int, str]:
    """`python -m ablation.<module> ARGS` writing to a pseudo-terminal, as in a user's shell; (exit code, output)."""
    leader, follower = pty.openpty()
    env = environment(store, TERM="xterm-256color", COLUMNS="140", LINES="40", **extra)
    process = subprocess.Popen([sys.executable, "-m", f"ablation.{module}", *args], env=env,
                               stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([leader], [], [], 1)[0]:
            continue
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=60), ESCAPES.sub("", b"".join(chunks).decode(errors="replace"))


def runs_of(store, experiment):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client, found, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.toml").write_text(TINY)
    return folder


# ---------------------------------------------------------------------------------------------
# Progress: bars with an ETA on a terminal, plain lines in a pipe.


@pytest.mark.slow
def test_ladder_draws_bars_on_a_terminal_and_plain_lines_in_a_pipe(tiny, cifar_path):
    args = ["--study", str(tiny / "tiny.toml"), "--profile", "smoke", "--no-report", "--data", str(cifar_path)]
    # Sampled every second, so that a run of seconds has some.
    code, shown = run_in_terminal("ladder", args, tiny / "terminal", MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    assert code == 0, shown[-3000:]
    assert ETA.search(shown), shown[-3000:]  # a live bar with its ETA was drawn
    assert re.search(r"\[1/1\] small .* \d/2 epochs", shown) and re.search(r"epoch 1/2 .* \d/4 batches", shown)
    assert "epoch   2/2  loss" in shown  # the same lines as in a log, above the bars
    # In a pipe (a log file): the same lines, no bar, no escape codes, nothing on stderr; --set recorded.
    piped = run_command("ladder", [*args, "--set", "dropout_rate=0.25", "--no-system-metrics"], tiny / "pipe")
    assert piped.returncode == 0, piped.stdout[-3000:] + piped.stderr[-3000:]
    assert "ETA" not in piped.stdout and "\x1b" not in piped.stdout
    assert "epoch   2/2  loss" in piped.stdout and 'overrides (every step): {"dropout_rate": 0.25}' in piped.stdout
    assert piped.stderr == ""  # TensorFlow's and MLflow's start-up lines are hidden (--verbose shows them)
    _, _, terminal_runs = runs_of(tiny / "terminal", "tiny")
    _, _, piped_runs = runs_of(tiny / "pipe", "tiny")
    trained, overridden = (next(r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER_STEP)
                           for runs in (terminal_runs, piped_runs))
    assert overridden.data.params["dropout_rate"] == "0.25" and trained.data.params["dropout_rate"] == "0.0"
    assert json.loads(overridden.data.tags[Tag.OVERRIDES]) == {"dropout_rate": 0.25}
    assert json.loads(trained.data.tags[Tag.OVERRIDES]) == {}
    parent = next(r for r in piped_runs if r.data.tags.get(Tag.KIND) == Kind.LADDER)
    assert json.loads(parent.data.tags[Tag.OVERRIDES]) == {"dropout_rate": 0.25}
    assert overridden.data.tags[Tag.CONFIG_HASH] != trained.data.tags[Tag.CONFIG_HASH]
    # System metrics: sampled by default, off with --no-system-metrics.
    assert "system/cpu_utilization_percentage" in trained.data.metrics
    assert not any(key.startswith("system/") for key in overridden.data.metrics)
    # A re-run copies the finished run, artifacts and all, without a download bar.
    again = run_command("ladder", [*args, "--set", "dropout_rate=0.25"], tiny / "pipe")
    assert again.returncode == 0 and "reused finished run" in again.stdout and again.stderr == "", again.stderr


@pytest.mark.slow
def test_search_draws_bars_on_a_terminal_and_plain_lines_in_a_pipe(tiny, cifar_path):
    args = ["--study", str(tiny / "tiny.toml"), "--profile", "smoke", "--trials", "1", "--data", str(cifar_path),
            "--reports", str(tiny / "reports")]
    store = tiny / "search"
    code, shown = run_in_terminal("search", args, store)
    assert code == 0, shown[-3000:]
    assert ETA.search(shown), shown[-3000:]
    assert re.search(r"trials: best val_accuracy \d\.\d{4} \(trial \d\)", shown)  # the best value so far
    piped = run_command("search", [*args, "--epoch-lines"], store)
    assert piped.returncode == 0, piped.stdout[-3000:] + piped.stderr[-3000:]
    assert "ETA" not in piped.stdout and "\x1b" not in piped.stdout and piped.stderr == ""
    assert re.search(r"trial +1 complete", piped.stdout) and "epoch   2/2  loss" in piped.stdout
    _, _, runs = runs_of(store, "tiny")
    trials = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SEARCH_TRIAL]
    assert len(trials) == 2 and all(r.data.tags[Tag.NOTE].startswith("trial ") for r in trials)


# ---------------------------------------------------------------------------------------------
# What MLflow holds: datasets, notes, every knob, the final step's model.


@pytest.mark.slow
def test_step_runs_carry_their_datasets_notes_and_every_knob(smoke_store):
    store, printed = smoke_store
    client, experiment, runs = runs_of(store, "assignment")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    steps = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER_STEP]
    study = {s.name: s for s in load_study("assignment").steps}
    assert [r.data.tags[Tag.STEP] for r in steps[:6]] == STEPS
    orders = [r.data.tags[Tag.ORDER] for r in steps[:6]]
    assert orders == sorted(orders) and orders[0] == "001-seed00000"  # as text, the UI sorts them in ladder order
    for run in steps:
        step = study[run.data.tags[Tag.STEP]]
        assert run.data.tags[Tag.NOTE] == step.description
        inputs = {i.dataset.name: (i.dataset.digest, [t.value for t in i.tags]) for i in run.inputs.dataset_inputs}
        digest = run.data.tags["data.digest"]
        assert inputs == {"cifar10-train": (digest, ["training"]), "cifar10-validation": (digest, ["validation"]),
                          "cifar10-test": (digest, ["evaluation"])}
        assert set(step.config.model_args) <= set(run.data.params)
    vgg = next(r for r in steps if r.data.tags[Tag.STEP] == "vgg_like")
    assert (vgg.data.params["filters"], vgg.data.params["dropout_rate"]) == ("[32, 64, 128]", "0.2")  # its defaults
    assert "vgg_like {}" not in printed and "vgg_like {'filters': (32, 64, 128)" in printed
    # The runs group by dataset through MLflow's own search.
    found = client.search_runs([experiment.experiment_id], f"dataset.name = 'cifar10-test' AND "
                               f"dataset.digest = '{steps[0].data.tags['data.digest']}'")
    assert {r.info.run_id for r in steps} <= {r.info.run_id for r in found}


@pytest.mark.slow
def test_the_final_steps_model_reloads_and_scores_its_test_accuracy(smoke_store, cifar_path):
    store, _ = smoke_store
    client, experiment, runs = runs_of(store, "assignment")
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    assert len(models) == 1  # --log-models final: the study's last step only
    run = client.get_run(models[0].source_run_id)
    assert run.data.tags[Tag.STEP] == "deeper_dropout" and models[0].name == "model"
    network = mlflow.keras.load_model(models[0].model_uri)
    config = Config(**json.loads(open(client.download_artifacts(run.info.run_id, "config.json")).read()))
    splits = make_splits(load_cifar10(cifar_path), **config.split_args())
    test_input = next(i for i in run.inputs.dataset_inputs if i.tags[0].value == "evaluation")
    assert test_input.dataset.digest == splits.fingerprint["digest"]  # the logged test subset, made again
    predictions = network.predict(splits.x_test.astype("float32") / 255.0, verbose=0).argmax(axis=1)
    assert np.mean(predictions == splits.y_test) == run.data.metrics["test_accuracy"]
    # Where the project is not installed (a serving host, a colleague): a process with only MLflow and Keras.
    np.save(store / "x_test.npy", splits.x_test.astype("float32") / 255.0)
    fresh = subprocess.run([sys.executable, "-c", (
        "import sys, mlflow, numpy, keras\n"
        f"mlflow.set_tracking_uri('sqlite:///{store}/mlflow.db')\n"
        f"network = mlflow.keras.load_model('{models[0].model_uri}')\n"
        f"numpy.save('{store}/fresh.npy', network.predict(numpy.load('{store}/x_test.npy'), verbose=0).argmax(axis=1))\n"
        "assert not [m for m in sys.modules if m.startswith('ablation')]\n")],
        capture_output=True, text=True, cwd=store, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert np.array_equal(np.load(store / "fresh.npy"), predictions)


# ---------------------------------------------------------------------------------------------
# The README's MLflow section in a real browser.


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} did not answer within {seconds} s")


@pytest.mark.slow
def test_the_printed_url_opens_the_ladders_step_runs_in_the_mlflow_ui(smoke_store, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    store, printed = smoke_store
    url = re.search(r"MLflow UI: (\S+)", printed).group(1)
    command = re.search(r"serve it with: (mlflow ui .*)\)", printed).group(1)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/") and "--port 5000" in command
    # The README's command, on a free port (one worker: starts faster); the printed address on that port.
    port = free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mlflow"), *command.split()[1:-2],
                               "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 300)
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                              "--window-size=1400,1200", "--virtual-time-budget=30000", "--dump-dom",
                              url.replace(":5000/", f":{port}/")], capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert dom.returncode == 0, dom.stderr[-3000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom.stdout, flags=re.S)))
    assert "6 matching runs" in text, text[:3000]  # the parent's six step runs, not the GenAI overview
    positions = [text.find(f" {name} ") for name in STEPS]
    assert -1 not in positions and positions == sorted(positions), text[:3000]  # each name shown, in ladder order


# ---------------------------------------------------------------------------------------------
# Bad --set values: refused before anything runs, as in a study file.


@pytest.mark.parametrize("module", ["ladder", "search"])
def test_a_bad_set_is_an_error_before_anything_runs(tmp_path, module):
    done = run_command(module, ["--profile", "smoke", "--set", "epochs=0"], tmp_path)
    assert done.returncode == 2
    assert "--set" in done.stderr and "epochs must be a positive integer" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()
