"""The report end to end: the real smoke ladder (and search) into a temp MLflow store, the real command,
its three outputs checked against the runs they came from, and report.html rendered in headless Chromium."""

import base64
import io
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from ablation import report
from ablation.report import figures, gather, tables

STEPS = ["template", "augmentation", "deeper_early_stopping", "lr_schedule", "deeper_dropout", "vgg_like"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def command(module, args, store, **env):
    """Run `python -m ablation.<module>` on the store; returns the CompletedProcess."""
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run([sys.executable, "-m", f"ablation.{module}", *args], env=environment, text=True,
                          capture_output=True, timeout=1800)


def client_of(store):
    return MlflowClient(f"sqlite:///{store}/mlflow.db")


def markdown_table(text: str, section: str) -> pd.DataFrame:
    """The first table under `## section` of report.md, as strings."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731
    return pd.DataFrame([split(line) for line in lines[2:]], columns=split(lines[0]))


@pytest.fixture(scope="module")
def smoke(smoke_store, cifar_path):
    """A store with the smoke ladder and a 3-trial smoke search, and its report."""
    store, _ = smoke_store  # the session's smoke ladder (the ladder tests may have re-run it once)
    done = command("search", ["--profile", "smoke", "--trials", "3", "--data", str(cifar_path),
                              "--reports", str(store / "search-reports")], store)
    assert done.returncode == 0, done.stdout + done.stderr
    out = store / "report"
    made = command("report", ["--data", str(cifar_path), "--out", str(out)], store)
    assert made.returncode == 0, made.stdout + made.stderr
    return store, out


@pytest.fixture(scope="module")
def ladder_runs(smoke):
    """The ladder parent run and its steps, read straight from MLflow."""
    store, _ = smoke
    client = client_of(store)
    experiment = client.get_experiment_by_name("assignment").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    parent = [r for r in runs if r.data.tags.get("ablation.kind") == "ladder"][-1]
    steps = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, runs, parent, steps


@pytest.mark.slow
def test_writes_the_three_outputs_and_the_figures(smoke):
    _, out = smoke
    for name in ("report.html", "report.md", "runs.csv", "ladder.png", "curves.png", "baselines.png",
                 "confusion.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    markdown = (out / "report.md").read_text()
    for png in sorted(out.glob("*.png")):
        assert f"]({png.name})" in markdown, png.name  # every figure beside the Markdown is shown in it
        assert Image.open(png).size[0] >= 600


@pytest.mark.slow
def test_ladder_table_holds_the_mlflow_values(smoke, ladder_runs):
    _, out = smoke
    _, _, _, steps = ladder_runs
    table = markdown_table((out / "report.md").read_text(), "Ladder")
    assert [s.removesuffix(" (baseline)") for s in table["step"]] == STEPS
    html = (out / "report.html").read_text()
    assert len(steps) == len(STEPS)
    for row, run in zip(table.to_dict("records"), steps, strict=True):
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        assert row["step"].removesuffix(" (baseline)") == tags["mlflow.runName"]
        assert row["test accuracy"] == f"{100 * metrics['test_accuracy']:.1f}%"  # one seed: no ± here
        assert row["epochs"] == f"{int(metrics['epochs_run'])}/{params['epochs']}"
        assert row["source's number"] == f"{100 * float(tags['ablation.reported_test_accuracy']):.1f}%"
        assert row["profile"] == tags["ablation.profile"] == "smoke"
        assert row["what changed"] == tags["ablation.description"]
        assert f"<td class=\"num\">{row['test accuracy']}</td>" in html  # the HTML holds the same table
    # The change is from the step before; a baseline's from the ladder's last step.
    accuracy = {r.data.tags["mlflow.runName"]: r.data.metrics["test_accuracy"] for r in steps}
    second = table[table["step"] == "augmentation"].iloc[0]
    assert second["change"] == f"{100 * (accuracy['augmentation'] - accuracy['template']):+.1f} pp"
    baseline = table[table["step"] == "vgg_like (baseline)"].iloc[0]
    assert baseline["change"].endswith("vs deeper_dropout")


@pytest.mark.slow
def test_architecture_table_holds_the_mlflow_values(smoke, ladder_runs):
    _, out = smoke
    _, _, _, steps = ladder_runs
    table = markdown_table((out / "report.md").read_text(), "Architectures: baselines vs the final step")
    assert list(table["run"]) == STEPS
    for row, run in zip(table.to_dict("records"), steps, strict=True):
        assert row["model"] == run.data.params["model"]
        assert row["parameters"] == f"{int(run.data.metrics['num_params']):,}"
        assert row["test accuracy"] == f"{100 * run.data.metrics['test_accuracy']:.1f}%"


@pytest.mark.slow
def test_runs_csv_has_one_row_per_run_named_as_the_config(smoke, ladder_runs):
    _, out = smoke
    _, runs, _, _ = ladder_runs
    frame = pd.read_csv(out / "runs.csv")
    assert runs and sorted(frame["run_id"]) == sorted(r.info.run_id for r in runs)
    for column in ("test_accuracy", "dropout_rate", "learning_rate", "epochs", "epochs_run", "step", "run_name"):
        assert column in frame.columns, column
    assert not [c for c in frame.columns if c.startswith(("params.", "metrics.test", "tags."))]
    by_id = frame.set_index("run_id")
    for run in runs:
        row = by_id.loc[run.info.run_id]
        if "test_accuracy" in run.data.metrics:
            assert math.isclose(row["test_accuracy"], run.data.metrics["test_accuracy"])
        if "dropout_rate" in run.data.params:
            assert math.isclose(row["dropout_rate"], float(run.data.params["dropout_rate"]))
            assert row["epochs"] == int(run.data.params["epochs"])


@pytest.mark.slow
def test_every_html_image_is_an_embedded_png(smoke):
    _, out = smoke
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(sources) == len(list(out.glob("*.png"))) >= 4
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        Image.open(io.BytesIO(data)).verify()
    # Self-contained: nothing is fetched from elsewhere.
    assert not re.search(r"<(link|script)[^>]*(href|src)=", page)
    assert "http://" not in page and "https://" not in page


@pytest.mark.slow
def test_confusion_matrix_of_the_best_run(smoke, ladder_runs):
    _, out = smoke
    _, _, _, steps = ladder_runs
    client, runs, _, steps = ladder_runs
    markdown = (out / "report.md").read_text()
    section = markdown.split("## Confusion matrix of the best run\n", 1)[1]
    assert "![" in section and "(confusion.png)" in section
    # The candidates: the ladder's steps and the search's finished trials; the best by test accuracy.
    trials = [r for r in runs if r.data.tags.get("ablation.kind") == "search_trial" and r.info.status == "FINISHED"]
    candidates = {r.info.run_id: r for r in steps + trials if "test_accuracy" in r.data.metrics}
    assert steps and trials
    chosen = re.search(r"\(run ([0-9a-f]{32})\)", section).group(1)
    best = max(r.data.metrics["test_accuracy"] for r in candidates.values())
    assert candidates[chosen].data.metrics["test_accuracy"] == best


@pytest.mark.slow
def test_report_is_logged_to_the_latest_parent_run(smoke, ladder_runs):
    client, runs, _, _ = ladder_runs
    parents = [r for r in runs if r.data.tags.get("ablation.kind") in ("ladder", "search")]
    latest = max(parents, key=lambda r: r.info.start_time)
    logged = {Path(a.path).name for a in client.list_artifacts(latest.info.run_id, "report")}
    assert {"report.html", "report.md", "runs.csv", "ladder.png"} <= logged


@pytest.mark.slow
def test_without_data_the_confusion_matrix_uses_the_logged_labels(smoke, tmp_path, monkeypatch):
    # Runs log their test labels with their predictions, so no data is needed for the matrix.
    store, _ = smoke
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    monkeypatch.delenv("ABLATION_DATA", raising=False)
    path = report.write_report("studies/assignment.toml", out=tmp_path / "r", log=False)
    markdown = path.with_name("report.md").read_text()
    assert "pass --data PATH" not in markdown
    assert (tmp_path / "r" / "confusion.png").exists() and (tmp_path / "r" / "ladder.png").exists()


@pytest.mark.slow
def test_search_part_matches_the_trials(smoke):
    store, out = smoke
    client = client_of(store)
    experiment = client.get_experiment_by_name("assignment").experiment_id
    trials = client.search_runs([experiment], "tags.`ablation.kind` = 'search_trial'")
    markdown = (out / "report.md").read_text()
    table = markdown_table(markdown, "Search")
    states = {str(int(t.data.tags["ablation.optuna_trial"])): t.data.tags["ablation.trial_state"] for t in trials}
    assert len(trials) == 3 and len(table) == 3
    assert dict(zip(table["trial"], table["state"], strict=True)) == states
    for trial in trials:
        row = table[table["trial"] == trial.data.tags["ablation.optuna_trial"]].iloc[0]
        if trial.data.tags["ablation.trial_state"] == "complete":
            assert row["val_accuracy (best epoch)"] == f"{100 * trial.data.metrics['best_val_accuracy']:.1f}%"
    assert "(search_history.png)" in markdown and "(search_params.png)" in markdown
    assert "dropout_rate" in table.columns and "learning_rate" in table.columns


def test_no_runs_says_how_to_make_them(tmp_path):
    done = command("report", ["--out", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 2
    assert "python -m ablation.ladder" in done.stderr and "assignment" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()  # no blank report, no store


@pytest.mark.slow
def test_unknown_experiment_and_study_are_errors(smoke):
    store, _ = smoke
    done = command("report", ["--experiment", "nope", "--no-log"], store)
    assert done.returncode == 2 and "'nope'" in done.stderr and "assignment" in done.stderr
    done = command("report", ["--study", "studies/nope.toml", "--no-log"], store)
    assert done.returncode == 2 and "nope.toml not found" in done.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(smoke, tmp_path):
    _, out = smoke
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000"]
    url = (out / "report.html").resolve().as_uri()
    # The page's own script counts, on load, the images that decoded (complete and naturalWidth > 0).
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=180)
    assert dom.returncode == 0, dom.stderr[-3000:]
    check = re.search(r'id="image-check" data-loaded="(\d+)" data-total="(\d+)"', dom.stdout) or \
        re.search(r'data-loaded="(\d+)" data-total="(\d+)"', dom.stdout)
    assert check, dom.stdout[-2000:]
    loaded, total = map(int, check.groups())
    assert loaded == total == len(list(out.glob("*.png")))
    shot = tmp_path / "screenshot.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-3000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    assert len(image.getcolors(maxcolors=1 << 24)) > 50  # text, tables and figures; not a blank page


# ---------------------------------------------------------------------------------------------
# Pure parts, no store needed.


def test_lr_drops_marks_the_epoch_whose_rate_fell():
    rates = pd.Series([1e-3, 1e-3, 2e-4, 2e-4, 4e-5], index=[1, 2, 3, 4, 5])
    assert figures.lr_drops(rates, 1e-3) == [3, 5]
    assert figures.lr_drops(pd.Series([5e-4], index=[1]), 1e-3) == [1]  # a schedule that starts lower
    assert figures.lr_drops(pd.Series([1e-3, 1e-3], index=[1, 2]), 1e-3) == []


def test_replicas_are_other_seeds_of_the_same_config_counted_once():
    def run(run_id, parent, step, seed, work_key, start, dropout=0.0, profile="smoke", kind="ladder_step"):
        return {"run_id": run_id, "parent_run_id": parent, "kind": kind, "status": "FINISHED", "step": step,
                "seed": seed, "dropout_rate": dropout, "work_key": work_key, "profile": profile, "start_time": start,
                "test_accuracy": 0.1 * start, "step_index": 1}

    rows = [run("p1", None, None, None, None, 1, kind="ladder"), run("a", "p1", "s", 0, "k0", 2),
            run("p2", None, None, None, None, 3, kind="ladder"), run("b", "p2", "s", 1, "k1", 4),
            run("p3", None, None, None, None, 5, kind="ladder"), run("c", "p3", "s", 0, "k0", 6),  # reused copy
            run("p4", None, None, None, None, 7, kind="ladder"), run("d", "p4", "s", 2, "k2", 8, dropout=0.5),
            run("p5", None, None, None, None, 9, kind="ladder", profile="quick"), run("e", "p5", "s", 3, "k3", 10)]
    runs = pd.DataFrame(rows)
    parent, steps = gather.latest_ladder(runs)
    assert parent["run_id"] == "p5"  # the newest ladder, whatever its profile
    runs.loc[runs["run_id"].isin(["p5", "e"]), "start_time"] = 0  # now p4 is the newest
    parent, steps = gather.latest_ladder(runs)
    assert parent["run_id"] == "p4" and list(steps["run_id"]) == ["d"]
    parent3 = runs[runs["run_id"] == "p3"].iloc[0]
    steps3 = runs[runs["run_id"] == "c"]
    groups = gather.replicas(runs, parent3, steps3, ["seed", "dropout_rate"])
    # seeds 0 and 1 of the same config; the reused copy of seed 0 once; not the other config or profile
    assert sorted(groups["s"]["run_id"]) == ["b", "c"]
    table = tables.ladder_table(steps3.assign(baseline=False, model="m", description="", epochs_run=1, epochs=1,
                                              train_seconds=1.0, reported_test_accuracy=None), groups)
    assert table["seeds"].iloc[0] == 2
    assert math.isclose(table["mean_test_accuracy"].iloc[0], (0.4 + 0.6) / 2)


def test_tidy_names_columns_as_the_config():
    frame = pd.DataFrame({
        "run_id": ["r"], "status": ["FINISHED"], "start_time": [0],
        "params.learning_rate": ["0.001"], "params.epochs": ["25"], "params.train_subset": ["None"],
        "params.seed": ["0"], "metrics.learning_rate": [0.0002], "metrics.test_accuracy": [0.5],
        "metrics.num_params": [316394.0], "tags.ablation.seed": ["0"], "tags.ablation.step": ["template"],
        "tags.data.digest": ["12e45"], "tags.mlflow.runName": ["template"],
    })
    runs, params = gather.tidy(frame)
    assert sorted(params) == ["epochs", "learning_rate", "seed", "train_subset"]
    assert runs["learning_rate"].iloc[0] == 0.001 and runs["metrics.learning_rate"].iloc[0] == 0.0002
    assert runs["epochs"].iloc[0] == 25 and str(runs["epochs"].dtype) == "Int64"
    assert pd.isna(runs["train_subset"].iloc[0])
    assert runs["step"].iloc[0] == "template" and runs["run_name"].iloc[0] == "template"
    assert runs["ablation.seed"].iloc[0] == "0" and runs["data.digest"].iloc[0] == "12e45"  # a digest stays text
    assert runs["num_params"].iloc[0] == 316394 and runs["test_accuracy"].iloc[0] == 0.5


def test_help_imports_no_tensorflow_keras_or_mlflow():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ablation.report", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--experiment" in done.stdout
    assert "tensorflow" not in done.stderr and "mlflow" not in done.stderr and "keras" not in done.stderr


def test_a_run_without_metrics_shows_as_a_dash():
    # A search trial killed before its first epoch has no metrics: pandas gives NA, not NaN.
    assert tables.whole(pd.NA) == "-" and tables.whole(float("nan")) == "-" and tables.whole(3.0) == "3"
    assert tables.short(pd.NA) == "" and tables.short(0.25) == "0.25"
