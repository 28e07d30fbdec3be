"""The report end to end: the real smoke ladder (and search) into a temp MLflow store, the real command,
its outputs checked against the runs they came from, and report.html rendered in headless Chromium.

Two stores: the session's one-seed smoke ladder (plus a 3-trial search), and a copy of it where a
`--seeds 2` ladder ran on top (seed 0 reused, seed 1 trained), for the evidence over seeds.
"""

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from ablation import report, tracking
from ablation.analysis import stats
from ablation.report import gather
from ablation.tracking import Kind, Tag

STEPS = ["template", "augmentation", "deeper_early_stopping", "lr_schedule", "deeper_dropout", "vgg_like"]
SEEDED_STEPS = STEPS[:3]  # the two-seed ladder: two changes are enough to pair by seed and judge
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["ladder.png", "curves.png", "overfitting.png", "batchnorm.png", "baselines.png", "confusion.png", "search_history.png",
           "search_params.png"]


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


def pct(value) -> str:
    return f"{100 * value:.1f}%"


def latest_ladder(store):
    """The latest ladder parent run and its step runs (by step index, then seed), read straight from MLflow."""
    client = client_of(store)
    experiment = client.get_experiment_by_name("assignment").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    parent = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER][-1]
    steps = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    steps.sort(key=lambda r: (int(r.data.tags[Tag.STEP_INDEX]), int(r.data.tags[Tag.SEED])))
    return client, runs, parent, steps


def pairs_of(steps) -> list[tuple[str, str]]:
    """Each ladder step against the one before; a baseline against its compared step (else the last one)."""
    order = list(dict.fromkeys(r.data.tags[Tag.STEP] for r in steps))
    baseline = {r.data.tags[Tag.STEP]: r.data.tags[Tag.BASELINE] == "True" for r in steps}
    compare = {r.data.tags[Tag.STEP]: r.data.tags.get(Tag.COMPARE_TO) for r in steps}
    ladder = [s for s in order if not baseline[s]]
    return [*zip(ladder[1:], ladder, strict=False)] + [(s, compare[s] or ladder[-1]) for s in order if baseline[s]]


@pytest.fixture(scope="module")
def smoke(smoke_store, cifar_path):
    """A store with the one-seed smoke ladder and a 3-trial smoke search, and its report (the command: logged)."""
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
    store, _ = smoke
    return latest_ladder(store)


@pytest.fixture(scope="module")
def seeded(smoke, cifar_path, tmp_path_factory):
    """A copy of the smoke store where a two-seed ladder of its first steps with a 3-point margin ran last, and its
    report (not logged)."""
    store = tmp_path_factory.mktemp("seeded") / "store"
    shutil.copytree(smoke[0], store, ignore=shutil.ignore_patterns("report", "search-reports"))
    done = command("ladder", ["--profile", "smoke", "--seeds", "2", "--rope", "3", "--no-report", "--data", str(cifar_path),
                              "--steps", ",".join(SEEDED_STEPS)], store)
    assert done.returncode == 0, done.stdout + done.stderr
    out = store / "report"
    made = command("report", ["--data", str(cifar_path), "--out", str(out), "--no-log"], store)
    assert made.returncode == 0, made.stdout + made.stderr
    return store, out


# ---------------------------------------------------------------------------------------------
# One seed.


@pytest.mark.slow
def test_writes_the_outputs_and_the_figures(smoke):
    _, out = smoke
    for name in ["report.html", "report.md", "runs.csv", "ladder_summary.csv", *FIGURES]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    markdown = (out / "report.md").read_text()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= len(FIGURES)
    for png in pngs:
        assert f"]({png.name})" in markdown, png.name  # every figure beside the Markdown is shown in it
        assert Image.open(png).size[0] >= 600


@pytest.mark.slow
def test_step_table_holds_the_mlflow_values(smoke, ladder_runs):
    _, out = smoke
    _, _, _, steps = ladder_runs
    table = markdown_table((out / "report.md").read_text(), "Ladder")
    assert [s.removesuffix(" (baseline)") for s in table["step"]] == STEPS
    assert len(steps) == len(STEPS)  # one seed: one run per step
    html = (out / "report.html").read_text()
    for row, run in zip(table.to_dict("records"), steps, strict=True):
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        assert row["step"].removesuffix(" (baseline)") == tags[Tag.STEP]
        assert row["n"] == "1"
        assert row["test accuracy"] == pct(metrics["test_accuracy"])
        assert row["test std"] == row["test 95% interval"] == ""  # one seed: no spread, no interval
        assert row["best val accuracy"] == pct(metrics["best_val_accuracy"])
        assert row["epochs"] == f"{int(metrics['epochs_run'])}/{params['epochs']}"
        assert row["CPU-s / epoch"].split()[0] == f"{metrics['train_cpu_seconds'] / metrics['epochs_run']:.1f}"
        assert row["source's number"] == pct(float(tags[Tag.REPORTED_TEST_ACCURACY]))
        assert row["what changed"] == tags[Tag.DESCRIPTION]
        assert f"<td class=\"num\">{row['test accuracy']}</td>" in html  # the HTML holds the same table


@pytest.mark.slow
def test_one_seed_changes_use_mcnemar_and_say_there_is_no_test_over_seeds(smoke, ladder_runs):
    _, out = smoke
    client, _, _, steps = ladder_runs
    markdown = (out / "report.md").read_text()
    table = markdown_table(markdown, "Which steps helped")
    section = markdown.split("## Which steps helped\n", 1)[1].split("\n## ", 1)[0]
    assert "no test over seeds" in section and "test-set sampling only" in section
    run_of = {r.data.tags[Tag.STEP]: r for r in steps}
    pairs = pairs_of(steps)
    assert len(pairs) == len(STEPS) - 1 and list(table["change"]) == [f"{a} vs {b}" for a, b in pairs]
    correct = {}
    for run in steps:
        payload = json.loads(Path(client.download_artifacts(run.info.run_id, "test_predictions.json")).read_text())
        correct[run.data.tags[Tag.STEP]] = np.asarray(payload["predictions"]) == np.asarray(payload["labels"])
    mcnemar_holm = stats.holm([stats.mcnemar_exact(correct[against], correct[step]).p for step, against in pairs])
    for row, (step, against), p_holm in zip(table.to_dict("records"), pairs, mcnemar_holm, strict=True):
        difference = run_of[step].data.metrics["test_accuracy"] - run_of[against].data.metrics["test_accuracy"]
        assert row["n seeds"] == "1" and row["mean difference"] == f"{100 * difference:+.1f} pp"
        assert row["p (t, pooled SD)"] == row["95% interval"] == row["p (sign-flip, exact)"] == ""
        assert row["McNemar p, Holm (test images)"].startswith(f"{p_holm:.3f}" if p_holm >= 0.001 else "<0.001")
        assert row["verdict"] == stats.ONE_SEED  # one seed: no verdict on training noise, whatever McNemar says


@pytest.mark.slow
def test_architecture_table_holds_the_mlflow_values(smoke, ladder_runs):
    _, out = smoke
    _, _, _, steps = ladder_runs
    table = markdown_table((out / "report.md").read_text(), "Architectures: baselines vs the final step")
    assert list(table["run"]) == STEPS
    for row, run in zip(table.to_dict("records"), steps, strict=True):
        metrics = run.data.metrics
        assert row["model"] == run.data.params["model"]
        assert row["parameters"] == f"{int(metrics['num_params']):,}"
        assert row["test accuracy"] == pct(metrics["test_accuracy"])
        assert row["CPU-s / epoch"] == f"{metrics['train_cpu_seconds'] / metrics['epochs_run']:.1f}"
        assert row["wall s / epoch"] == f"{metrics['seconds_per_epoch']:.1f}"


@pytest.mark.slow
def test_runs_csv_has_one_row_per_run_named_as_the_config(smoke, ladder_runs):
    _, out = smoke
    _, runs, _, _ = ladder_runs
    frame = pd.read_csv(out / "runs.csv")
    assert runs and sorted(frame["run_id"]) == sorted(r.info.run_id for r in runs)
    for column in ("test_accuracy", "dropout_rate", "learning_rate", "epochs", "epochs_run", "step", "run_name",
                   "seed", "split_seed"):
        assert column in frame.columns, column
    assert not [c for c in frame.columns if c.startswith(("params.", "metrics.test", "tags."))]
    by_id = frame.set_index("run_id")
    trained = [r for r in runs if "seed" in r.data.params]
    assert trained
    for run in runs:
        row = by_id.loc[run.info.run_id]
        if "test_accuracy" in run.data.metrics:
            assert math.isclose(row["test_accuracy"], run.data.metrics["test_accuracy"])
        if "dropout_rate" in run.data.params:
            assert math.isclose(row["dropout_rate"], float(run.data.params["dropout_rate"]))
            assert row["epochs"] == int(run.data.params["epochs"])
    for run in trained:
        row = by_id.loc[run.info.run_id]
        assert row["seed"] == int(run.data.params["seed"]) and row["split_seed"] == int(run.data.params["split_seed"])


@pytest.mark.slow
def test_every_html_image_is_an_embedded_png(smoke):
    _, out = smoke
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(sources) == len(list(out.glob("*.png"))) >= len(FIGURES)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        Image.open(io.BytesIO(data)).verify()
    # Self-contained: nothing is fetched from elsewhere.
    assert not re.search(r"<(link|script)[^>]*(href|src)=", page)
    assert "http://" not in page and "https://" not in page
    assert "Figures loaded" not in page and "not checked" not in page  # no self-check line left on the page


@pytest.mark.slow
def test_confusion_matrix_of_the_best_run_by_validation_accuracy(smoke, ladder_runs):
    _, out = smoke
    _, runs, _, steps = ladder_runs
    markdown = (out / "report.md").read_text()
    section = markdown.split("## Confusion matrix of the best run\n", 1)[1]
    assert "![" in section and "(confusion.png)" in section
    assert "validation accuracy" in section and "the test set never chooses" in section
    # The candidates: the ladder's runs and the search's complete trials; the best by best validation accuracy.
    trials = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SEARCH_TRIAL
              and r.data.tags.get(Tag.TRIAL_STATE) == "complete"]
    candidates = {r.info.run_id: r for r in steps + trials}
    assert steps and trials
    chosen = re.search(r"\(run ([0-9a-f]{32})\)", section).group(1)
    best = max(r.data.metrics["best_val_accuracy"] for r in candidates.values())
    assert candidates[chosen].data.metrics["best_val_accuracy"] == best


@pytest.mark.slow
def test_the_command_logs_the_report_to_the_latest_parent_run(smoke, ladder_runs):
    client, runs, _, _ = ladder_runs
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) in (Kind.LADDER, Kind.SEARCH)]
    latest = max(parents, key=lambda r: r.info.start_time)
    logged = {Path(a.path).name for a in client.list_artifacts(latest.info.run_id, "report")}
    assert {"report.html", "report.md", "runs.csv", "ladder_summary.csv", "ladder.png"} <= logged


@pytest.mark.slow
def test_write_report_only_reads_unless_asked_to_log(smoke, tmp_path, monkeypatch):
    # Runs log their test labels with their predictions, so no data is needed for the confusion matrix.
    store, _ = smoke
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    monkeypatch.delenv("ABLATION_DATA", raising=False)

    def no_logging(*args, **kwargs):
        raise AssertionError("write_report logged without being asked to")

    monkeypatch.setattr(tracking, "log_report", no_logging)
    path = report.write_report("studies/assignment.toml", out=tmp_path / "r")
    markdown = path.with_name("report.md").read_text()
    assert "pass --data PATH" not in markdown and "report logged to" not in markdown
    assert (tmp_path / "r" / "confusion.png").exists() and (tmp_path / "r" / "ladder.png").exists()


@pytest.mark.slow
def test_gather_reads_a_bounded_number_of_things(smoke, monkeypatch):
    """One run's epochs per step, and test predictions only for the McNemar pairs and the confusion matrix."""
    store, _ = smoke
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    calls = {"histories": 0, "artifacts": 0, "frames": 0}
    for name, key in (("metric_histories", "histories"), ("load_json_artifact", "artifacts"),
                      ("runs_frame", "frames")):
        original = getattr(tracking, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(tracking, name, counted)
    found = gather.gather("studies/assignment.toml")
    assert calls["frames"] == 1 and calls["histories"] == len(STEPS)
    assert len(found.ladder.correct) == len(STEPS)  # one seed: every step's predictions, for McNemar
    assert calls["artifacts"] <= len(STEPS) + 3


@pytest.mark.slow
def test_search_part_matches_the_trials(smoke):
    store, out = smoke
    client = client_of(store)
    experiment = client.get_experiment_by_name("assignment").experiment_id
    trials = client.search_runs([experiment], f"tags.`{Tag.KIND}` = '{Kind.SEARCH_TRIAL}'")
    markdown = (out / "report.md").read_text()
    table = markdown_table(markdown, "Search")
    states = {str(int(t.data.tags[Tag.OPTUNA_TRIAL])): t.data.tags[Tag.TRIAL_STATE] for t in trials}
    assert len(trials) == 3 and len(table) == 3
    assert dict(zip(table["trial"], table["state"], strict=True)) == states
    for trial in trials:
        row = table[table["trial"] == trial.data.tags[Tag.OPTUNA_TRIAL]].iloc[0]
        if trial.data.tags[Tag.TRIAL_STATE] == "complete":
            assert row["val_accuracy (best epoch)"] == pct(trial.data.metrics["best_val_accuracy"])
    assert "(search_history.png)" in markdown and "(search_params.png)" in markdown
    assert "dropout_rate" in table.columns and "learning_rate" in table.columns
    # Three trials: importances, if Optuna could compute them at all, come with a caveat.
    section = markdown.split("## Search\n", 1)[1].split("\n## ", 1)[0]
    assert "rough guide" in section or "parameter importances skipped" in section


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


# ---------------------------------------------------------------------------------------------
# Two seeds.


@pytest.mark.slow
def test_summary_over_seeds_matches_mlflow(seeded):
    store, out = seeded
    _, _, parent, steps = latest_ladder(store)
    assert json.loads(parent.data.tags[Tag.SEEDS]) == [0, 1] and len(steps) == 2 * len(SEEDED_STEPS)
    summary = pd.read_csv(out / "ladder_summary.csv")
    assert list(summary["step"]) == SEEDED_STEPS
    for row in summary.to_dict("records"):
        mine = [r for r in steps if r.data.tags[Tag.STEP] == row["step"]]
        assert row["n"] == 2 and row["seeds"] == "0 1"
        for metric in ("test_accuracy", "best_val_accuracy"):
            values = [r.data.metrics[metric] for r in mine]
            expected = stats.summarize(values)
            assert math.isclose(row[f"{metric}_mean"], np.mean(values))
            assert math.isclose(row[f"{metric}_std"], np.std(values, ddof=1), abs_tol=1e-12)
            assert math.isclose(row[f"{metric}_low"], expected.low) and math.isclose(row[f"{metric}_high"],
                                                                                      expected.high)
    table = markdown_table((out / "report.md").read_text(), "Ladder")
    assert list(table["n"]) == ["2"] * len(SEEDED_STEPS) and all(table["test 95% interval"])


@pytest.mark.slow
def test_changes_over_seeds_are_paired_by_seed_and_judged_at_the_ladders_margin(seeded):
    store, out = seeded
    client, _, parent, steps = latest_ladder(store)
    accuracy = {(r.data.tags[Tag.STEP], int(r.data.tags[Tag.SEED])): r.data.metrics["test_accuracy"] for r in steps}
    markdown = (out / "report.md").read_text()
    table = markdown_table(markdown, "Which steps helped")
    pairs = pairs_of(steps)
    judged = stats.with_verdicts([stats.paired_change([accuracy[(against, s)] for s in (0, 1)],
                                                      [accuracy[(step, s)] for s in (0, 1)]) for step, against in pairs],
                                 rope=0.03)  # the ladder's --rope 3
    assert len(table) == len(pairs) == len(SEEDED_STEPS) - 1
    for row, (step, against), change in zip(table.to_dict("records"), pairs, judged, strict=True):
        differences = [accuracy[(step, s)] - accuracy[(against, s)] for s in (0, 1)]
        assert row["change"] == f"{step} vs {against}" and row["n seeds"] == "2"
        assert row["mean difference"] == f"{100 * np.mean(differences):+.1f} pp"
        assert row["p (sign-flip, exact)"].endswith("(floor 0.500)")  # 2 / 2**2
        # Two seeds: the change's own t (equal differences: the exact sign-flip p, never 0).
        assert change.p_test > 0 and row["p (t, pooled SD)"] == (f"{change.p_test:.3f}" if change.p_test >= 0.001 else "<0.001")
        assert row["p (Holm)"] == (f"{change.p_adjusted:.3f}" if change.p_adjusted >= 0.001 else "<0.001")
        assert row["verdict"] == change.verdict and row["verdict"] in (stats.HELPED, stats.HURT, stats.EQUIVALENT,
                                                                       stats.UNDECIDED)
    assert "McNemar p, Holm (test images)" not in table.columns  # two seeds: tests over seeds, no McNemar
    section = markdown.split("## Which steps helped\n", 1)[1].split("\n## ", 1)[0]
    assert "n = 2" in section and "no test over seeds" not in section and "within ±3 pp" in section
    # The ladder's own summary judged at the same margin, as the parent run records it.
    assert float(parent.data.tags[Tag.ROPE]) == 0.03
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary.json")).read_text())
    assert [c["change"]["rope"] for c in summary["changes"]] == [0.03] * len(pairs)


@pytest.mark.slow
def test_runs_csv_lists_each_seed(seeded):
    store, out = seeded
    _, _, parent, steps = latest_ladder(store)
    frame = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert steps
    for run in steps:
        assert frame.loc[run.info.run_id, "seed"] == int(run.data.tags[Tag.SEED])
        assert frame.loc[run.info.run_id, "split_seed"] == 0


# ---------------------------------------------------------------------------------------------
# In a browser.


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
    loaded = re.search(r'data-images-loaded="(\d+)"', dom.stdout)
    total = re.search(r'data-images-total="(\d+)"', dom.stdout)
    assert loaded and total, dom.stdout[-2000:]
    assert int(loaded.group(1)) == int(total.group(1)) == len(list(out.glob("*.png")))
    shot = tmp_path / "screenshot.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-3000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    assert len(image.getcolors(maxcolors=1 << 24)) > 50  # text, tables and figures; not a blank page
