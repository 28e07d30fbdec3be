"""The smoke ladder end to end: the real command, real CIFAR-10 slices, a real MLflow store in a temp dir."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from ablation.core.config import CONFIG_FIELDS
from ablation.core.study import load_study
from ablation.tracking import Kind, Tag
from conftest import run_command

pytestmark = pytest.mark.slow
STEPS = ["template", "augmentation", "deeper_early_stopping", "lr_schedule", "deeper_dropout", "vgg_like"]


def ladder(args, store, **popen):
    return run_command("ladder", ["--profile", "smoke", "--no-report", *args], store, **popen)


def runs_of(store, experiment="assignment"):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def test_one_parent_with_a_nested_run_per_step(smoke_store):
    store, _ = smoke_store
    _, runs = runs_of(store)
    parents = [r for r in runs if r.data.tags.get("ablation.kind") == "ladder"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert [r.data.tags["mlflow.runName"] for r in children] == STEPS
    assert [r.data.tags["ablation.step_index"] for r in children] == [str(i) for i in range(1, 7)]
    assert all(r.info.status == "FINISHED" for r in children)


def test_each_step_run_has_metrics_params_tags_and_artifacts(smoke_store):
    store, _ = smoke_store
    client, runs = runs_of(store)
    study = {s.name: s for s in load_study("studies/assignment.toml").steps}
    steps = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER_STEP]
    assert len(steps) == len(STEPS)
    for run in steps:
        name = run.data.tags["mlflow.runName"]
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        for key in ("test_loss", "test_accuracy", "num_params", "epochs_run", "train_seconds", "flops"):
            assert key in metrics, (name, key)
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        epochs = int(metrics["epochs_run"])
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == list(range(1, epochs + 1)), (name, key)
        # The whole resolved config, flat: config fields and the model's knobs.
        assert set(CONFIG_FIELDS) - {"model_args"} <= set(params)
        assert set(study[name].config.model_args) <= set(params)
        assert params["model"] == study[name].config.model
        for key in ("ablation.config_hash", "ablation.seed", "ablation.code_version", "data.digest",
                    "data.source", "data.train_size"):
            assert tags[key], (name, key)
        assert tags["ablation.profile"] == "smoke"
        assert tags["data.train_size"] == "128" and tags["data.test_size"] == "100"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "history.csv", "test_predictions.json"} <= artifacts
        config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json")).read())
        assert config["model"] == params["model"] and config["epochs"] == int(params["epochs"])


def test_parameter_counts_and_the_final_table(smoke_store):
    store, stdout = smoke_store
    _, runs = runs_of(store)
    by_name = {r.data.tags["mlflow.runName"]: r for r in runs if "ablation.step" in r.data.tags}
    assert by_name["template"].data.metrics["num_params"] == 316_394
    assert by_name["deeper_dropout"].data.metrics["num_params"] > by_name["deeper_early_stopping"].data.metrics["num_params"]
    table = stdout[stdout.index("step "):]
    for name, reported in zip(STEPS, ["72.3%", "82.9%", "83.4%", "87.3%", "89.2%", "87.9%"], strict=True):
        line = next(line for line in table.splitlines() if line.startswith(name))
        assert reported in line
    assert "[6/6] vgg_like" in stdout and "epoch   1/1" in stdout


def test_rerun_reuses_finished_steps_without_training(smoke_store, cifar_path):
    store, _ = smoke_store
    again = ladder(["--data", str(cifar_path)], store)
    assert again.returncode == 0, again.stderr
    assert not re.search(r"epoch +\d+/\d+ ", again.stdout)  # no epoch was trained
    assert "loading CIFAR-10" not in again.stdout  # the data's fingerprint came from the cache
    assert again.stdout.count("reused finished run") == len(STEPS)
    client, runs = runs_of(store)
    parents = [r for r in runs if r.data.tags.get("ablation.kind") == "ladder"]
    assert len(parents) == 2
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    assert [r.data.tags["mlflow.runName"] for r in children] == STEPS
    first = {r.data.tags["mlflow.runName"]: r for r in runs
             if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    for child in children:
        source = first[child.data.tags["mlflow.runName"]]
        assert child.data.tags["ablation.reused_from"] == source.info.run_id
        assert child.data.metrics["test_accuracy"] == source.data.metrics["test_accuracy"]
        assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) == source.data.metrics["epochs_run"]


def test_sigterm_closes_runs_and_keeps_finished_steps(tmp_path, cifar_path):
    process = ladder(["--data", str(cifar_path)], tmp_path, start_new_session=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("[2/6]"):
            time.sleep(1)
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=300)[0]
    assert process.returncode == 143, "".join(lines) + rest
    _, runs = runs_of(tmp_path)
    status = {r.data.tags["mlflow.runName"]: r.info.status for r in runs}
    assert status["template"] == "FINISHED"
    assert status["augmentation"] == "KILLED"
    assert status["assignment-smoke"] == "KILLED"
    assert "RUNNING" not in status.values()


def test_unknown_step_is_an_error_before_anything_runs(tmp_path):
    done = ladder(["--steps", "template,augmentaton"], tmp_path)
    assert done.returncode == 2 and "augmentaton" in done.stderr and "augmentation" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_study_is_an_error_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nname = "x"\n[base]\n[[steps]]\nname = "a"\nepocs = 3\n')
    done = ladder(["--study", str(bad)], tmp_path)
    assert done.returncode == 2
    assert "bad.toml" in done.stderr and "epocs" in done.stderr and "allowed" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_data_is_an_error_before_anything_runs(tmp_path):
    done = ladder(["--data", str(tmp_path / "cifar-10-python.tar.gz")], tmp_path)
    assert done.returncode == 2
    assert "not found" in done.stderr and "cifar-10-python.tar.gz" in done.stderr and "https://" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_help_imports_no_tensorflow_and_no_mlflow():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ablation.ladder", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--profile" in done.stdout
    # -X importtime lists every module imported: --help must stay light (its time is benchmarked).
    assert "tensorflow" not in done.stderr and "mlflow" not in done.stderr and "keras" not in done.stderr


def test_the_verdict_table_of_one_seed_says_no_verdict_and_of_three_says_which():
    """No training: ladder_evidence on made rows, as the ladder prints them. The default command runs one seed: its
    table must not say helped; with three seeds each change gets helped, hurt, equivalent or undecided."""
    import numpy as np

    from ablation import ladder as ladder_command
    from ablation.analysis import stats
    from ablation.core.profiles import get_profile
    from ablation.engine import units

    study = load_study("studies/assignment.toml")
    steps = units.resolve_steps(study, get_profile("smoke"), only=["template", "augmentation", "deeper_early_stopping"])
    draws = np.random.default_rng(0).random((3, 2000))
    accuracy = {"template": 0.40, "augmentation": 0.52, "deeper_early_stopping": 0.521}
    rows = [{"step": step, "seed": seed, "status": "finished", "test_accuracy": float(np.mean(draws[seed] < p + shift)),
             "best_val_accuracy": p, "correct": (draws[seed] < p + shift).tolist()}
            for seed, shift in enumerate((0.0, 0.004, -0.003)) for step, p in accuracy.items()]
    one = ladder_command.format_changes(units.ladder_evidence([r for r in rows if r["seed"] == 0], steps))
    assert "helped" not in one and one.count(stats.ONE_SEED) == 2 and "McNemar (Holm)" in one
    three = ladder_command.format_changes(units.ladder_evidence(rows, steps, rope=0.02))
    assert re.search(r"^augmentation vs template +3 +\+11\.9 .* helped$", three, re.MULTILINE)
    assert re.search(r"^deeper_early_stopping vs augmentation +3 .* equivalent \(within ±2\.0\)$", three, re.MULTILINE)
    assert re.search(r"undecided: ~\d+ more seeds?$", ladder_command.format_changes(units.ladder_evidence(rows, steps)),
                     re.MULTILINE)
