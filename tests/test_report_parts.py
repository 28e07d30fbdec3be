"""The report's parts on made-up runs: no store, no training (seconds)."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ablation.analysis import stats
from ablation.report import figures, gather, search_figures, sections, tables
from ablation.report import predictions as predictions_module
from ablation.report.found import Ladder, Search
from ablation.tracking import Kind, Tag


def test_help_imports_no_tensorflow_keras_or_mlflow():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ablation.report", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--experiment" in done.stdout and "--no-log" in done.stdout
    for heavy in ("tensorflow", "mlflow", "keras", "matplotlib", "pandas", "optuna"):
        assert heavy not in done.stderr, heavy


def test_lr_drops_marks_the_epoch_whose_rate_fell():
    rates = pd.Series([1e-3, 1e-3, 2e-4, 2e-4, 4e-5], index=[1, 2, 3, 4, 5])
    assert figures.lr_drops(rates, 1e-3) == [3, 5]
    assert figures.lr_drops(pd.Series([5e-4], index=[1]), 1e-3) == [1]  # a schedule that starts lower
    assert figures.lr_drops(pd.Series([1e-3, 1e-3], index=[1, 2]), 1e-3) == []


def test_tidy_names_columns_as_the_config():
    frame = pd.DataFrame({
        "run_id": ["r"], "status": ["FINISHED"], "start_time": [0],
        "params.learning_rate": ["0.001"], "params.epochs": ["25"], "params.train_subset": ["None"],
        "params.seed": ["0"], "metrics.learning_rate": [0.0002], "metrics.test_accuracy": [0.5],
        "metrics.num_params": [316394.0], f"tags.{Tag.SEED}": ["0"], f"tags.{Tag.STEP}": ["template"],
        f"tags.{Tag.DATA_PREFIX}digest": ["12e45"], f"tags.{Tag.DATA_PREFIX}seed": ["3"],
        "tags.mlflow.runName": ["template"],
    })
    runs, params = gather.tidy(frame)
    assert sorted(params) == ["epochs", "learning_rate", "seed", "train_subset"]
    assert runs["learning_rate"].iloc[0] == 0.001 and runs["metrics.learning_rate"].iloc[0] == 0.0002
    assert runs["epochs"].iloc[0] == 25 and str(runs["epochs"].dtype) == "Int64"
    assert pd.isna(runs["train_subset"].iloc[0])
    assert runs["step"].iloc[0] == "template" and runs["run_name"].iloc[0] == "template"
    assert runs[Tag.SEED].iloc[0] == "0" and runs[f"{Tag.DATA_PREFIX}digest"].iloc[0] == "12e45"  # a digest stays text
    assert runs["num_params"].iloc[0] == 316394 and runs["test_accuracy"].iloc[0] == 0.5
    # A run from before the split seed had its own field: its split seed is the data seed it recorded.
    assert runs["seed"].iloc[0] == 0 and runs["split_seed"].iloc[0] == 3


def _run(run_id, parent, step, seed, work_key, start, dropout=0.0, profile="smoke", kind=Kind.LADDER_STEP):
    return {"step_index": 2 if step == "t" else 1, "run_id": run_id, "parent_run_id": parent, "kind": kind, "status": "FINISHED", "step": step,
            "seed": seed, "dropout_rate": dropout, "work_key": work_key, "profile": profile, "start_time": start,
            "end_time": start + 0.5, "test_accuracy": 0.1 * start, "best_val_accuracy": 0.1 * start}


def _ladder(run_id, start, profile="smoke"):
    return _run(run_id, None, None, None, None, start, profile=profile, kind=Kind.LADDER)


def test_replicates_are_the_latest_ladders_seeds_and_other_ladders_other_seeds_once_each():
    rows = [_ladder("p1", 1), _run("a", "p1", "s", 0, "k0", 2),
            _ladder("p2", 3), _run("b", "p2", "s", 1, "k1", 4),
            _ladder("p3", 5), _run("c", "p3", "s", 2, "k2", 6, dropout=0.5),  # another config
            _ladder("p4", 7, "quick"), _run("d", "p4", "s", 3, "k3", 8, profile="quick"),  # another profile
            _ladder("p5", 9), _run("e", "p5", "s", 0, "k0", 10), _run("f", "p5", "s", 4, "k4", 11),  # e: reused a
            _run("g", "p5", "t", 0, "k5", 12)]
    runs = pd.DataFrame(rows).astype({"seed": "Int64"})
    parent, mine = gather.latest_ladder(runs)
    assert parent["run_id"] == "p5" and list(mine["run_id"]) == ["e", "f", "g"]
    pool = gather.replicates(runs, parent, mine, ["seed", "dropout_rate"])
    step_s = pool[pool["step"].eq("s")]
    # Seeds 0 and 4 of the latest ladder (its own copy of seed 0, not the run it reused) and seed 1 from p2.
    assert list(step_s["run_id"]) == ["e", "b", "f"] and list(step_s["seed"]) == [0, 1, 4]
    assert list(pool[pool["step"].eq("t")]["run_id"]) == ["g"]


def _made_ladder(accuracy: dict, correct: dict | None = None) -> Ladder:
    """A ladder of steps a, b (and baseline c against a) from {(step, seed): test accuracy}."""
    rows = [{"run_id": f"{step}{seed}", "step": step, "seed": seed, "step_index": "abc".index(step),
             "baseline": step == "c", "test_accuracy": value, "best_val_accuracy": value - 0.01,
             "description": f"step {step}", "model": "m", "epochs_run": 3, "epochs": 4, "train_cpu_seconds": 6.0,
             "seconds_per_epoch": 1.0, "num_params": 10, "flops": 1e6, "profile": "smoke", "compare_to": None}
            for (step, seed), value in accuracy.items()]
    runs = pd.DataFrame(rows)
    steps = runs.drop_duplicates("step").reset_index(drop=True)
    return Ladder(pd.Series({"run_id": "p", "profile": "smoke"}), runs, steps, runs, [("b", "a"), ("c", "a")],
                  sorted(set(runs["seed"])), 0, {}, correct or {})


def test_summary_and_changes_come_from_the_evidence_over_seeds():
    ladder = _made_ladder({("a", 0): 0.60, ("a", 1): 0.62, ("a", 2): 0.61, ("b", 0): 0.65, ("b", 1): 0.66,
                           ("b", 2): 0.68, ("c", 0): 0.5, ("c", 1): 0.7})
    steps, changes = tables.ladder_evidence(ladder)
    summary, table = tables.step_summary(ladder, steps), tables.change_table(changes)
    first = summary.iloc[0]
    expected = stats.summarize([0.60, 0.62, 0.61])
    assert first["n"] == 3 and math.isclose(first["test_accuracy_mean"], expected.mean)
    assert math.isclose(first["test_accuracy_low"], expected.low) and first["cpu_seconds_per_epoch"] == 2.0
    assert list(table["n"]) == [3, 2]  # c ran two seeds: its change pairs the two seeds both have
    assert math.isclose(table["mean"].iloc[0], np.mean([0.05, 0.04, 0.07]))
    shown = tables.show_changes(table)
    assert shown["p (sign-flip, exact)"].iloc[0].endswith("(floor 0.250)")
    assert shown["n seeds"].tolist() == ["3", "2"]
    assert "McNemar p, Holm (test images)" not in shown.columns
    rows = tables.show_steps(summary)
    assert rows["n"].tolist() == ["3", "3", "2"] and rows["test 95% interval"].iloc[0].endswith("]%")


def test_one_seed_changes_take_mcnemar_on_the_test_images():
    right = np.array([True] * 30 + [False] * 70)
    better = right.copy()
    better[30:60] = True  # 30 more images right, none lost
    ladder = _made_ladder({("a", 0): 0.30, ("b", 0): 0.60, ("c", 0): 0.30},
                          {"a0": right, "b0": better, "c0": right})
    _, changes = tables.ladder_evidence(ladder)
    shown = tables.show_changes(tables.change_table(changes))
    assert shown["n seeds"].tolist() == ["1", "1"] and shown["p (t, pooled SD)"].tolist() == ["", ""]
    assert shown["verdict"].tolist() == [stats.ONE_SEED, stats.ONE_SEED]  # one seed: no verdict on training noise
    assert shown["McNemar p, Holm (test images)"].iloc[0].startswith("<0.001 (30 vs 0")
    section = sections.changes_section(tables.change_table(changes), stats.ROPE, stats.ALPHA)
    assert any("no test over seeds" in note for note in section.notes)


def test_event_legend_lists_only_what_happened():
    assert figures.event_legend(False, False) == []
    assert [h.get_label() for h in figures.event_legend(True, False)] == ["LR lowered"]
    assert [h.get_label() for h in figures.event_legend(False, True)] == ["early stopping"]
    fig = Figure()
    axes = fig.subplots(1, 2)
    history = pd.DataFrame({"val_accuracy": [0.3, 0.4, 0.5], "val_loss": [2.0, 1.5, 1.2],
                            "learning_rate": [1e-3, 1e-3, 1e-3]}, index=[1, 2, 3])
    runs = pd.DataFrame([{"run_id": "x", "step": "x", "learning_rate": 1e-3, "epochs_run": 3, "epochs": 3,
                          "stopped_early": "False"}])
    assert figures.plot_curves(axes, runs, {"x": history}) == (False, False)


def test_identical_curves_stay_apart():
    fig = Figure()
    axes = fig.subplots(1, 2)
    history = pd.DataFrame({"val_accuracy": [0.3, 0.4], "val_loss": [2.0, 1.5], "learning_rate": [1e-3, 2e-4]},
                           index=[1, 2])
    runs = pd.DataFrame([{"run_id": r, "step": r, "learning_rate": 1e-3, "epochs_run": 2, "epochs": 5}
                         for r in ("a", "b")])
    lowered, stopped = figures.plot_curves(axes, runs, {"a": history, "b": history})
    assert lowered and stopped
    first, second = [line for line in axes[0].get_lines() if line.get_label() in ("a", "b")]
    assert not np.array_equal(first.get_xdata(), second.get_xdata())
    assert first.get_linestyle() != second.get_linestyle() and first.get_marker() != second.get_marker()


def _search(states: list[str], numbers: list[int] | None = None) -> Search:
    numbers = numbers or list(range(len(states)))
    trials = pd.DataFrame({"number": numbers, "state": states,
                           "value": [0.5 + 0.01 * n if s != "failed" else np.nan for n, s in zip(numbers, states,
                                                                                                strict=True)],
                           "test_accuracy": 0.5, "epochs_run": 2, "epochs": 2, "run_id": [f"r{n}" for n in numbers],
                           "run_name": "t", "dropout_rate": [0.1 * (n % 5) for n in numbers],
                           "learning_rate": [10 ** -(2 + n % 3) for n in numbers]})
    return Search("s", pd.Series(dtype=object), trials, ["dropout_rate", "learning_rate"], {"learning_rate"},
                  "val_accuracy", "maximize", importances={"dropout_rate": 0.7, "learning_rate": 0.3})


def test_the_optuna_study_keeps_the_trial_numbers():
    search = _search(["complete", "pruned", "complete", "failed"], [0, 2, 5, 6])
    study = search_figures.optuna_study(search)
    by_number = {t.number: t for t in study.trials}
    assert sorted(by_number) == list(range(7))
    assert by_number[5].state.name == "COMPLETE" and math.isclose(by_number[5].value, 100 * 0.55)
    assert by_number[2].state.name == "PRUNED" and by_number[1].state.name == "FAIL"
    assert by_number[5].params["learning_rate"] == search.trials["learning_rate"].iloc[2]


@pytest.mark.parametrize("complete, caveat", [(4, True), (12, False)])
def test_importances_from_few_trials_come_with_a_caveat(complete, caveat):
    search = _search(["complete"] * complete + ["pruned"])
    section = sections.search_section(search)
    names = [chart.name for chart in section.figures]
    assert names == ["search_history.png", "search_importances.png", "search_params.png"]
    assert any("rough guide" in note for note in section.notes) == caveat
    assert ("rough guide" in section.figures[1].caption) == caveat


def test_the_best_run_is_chosen_by_validation_accuracy():
    candidates = pd.DataFrame({"run_id": ["a", "b", "c"], "run_name": ["a", "b", "c"],
                               "best_val_accuracy": [0.7, 0.9, 0.8], "test_accuracy": [0.95, 0.5, 0.6]})
    payload = {"class_names": ["x", "y"], "labels": [0, 1, 1], "predictions": [0, 1, 0]}
    asked = []

    def predictions(run_id):
        asked.append(run_id)
        return None if run_id == "b" else payload

    chosen = predictions_module.read_confusion(candidates, None, predictions)
    assert asked == ["b", "c"] and chosen.run["run_id"] == "c"  # b logged no predictions; never a, the test's pick


def test_numbers_as_text():
    assert tables.whole(pd.NA) == "-" and tables.whole(float("nan")) == "-" and tables.whole(3.0) == "3"
    assert tables.short(pd.NA) == "" and tables.short(0.25) == "0.25"
    assert tables.interval(0.81, 0.84) == "[81.0, 84.0]%" and tables.interval(float("nan"), float("nan")) == ""
    assert tables.interval(-0.003, 0.027, signed=True) == "[-0.3, +2.7] pp"
    assert tables.p_value(0.0004) == "<0.001" and tables.p_value(0.25) == "0.250" and tables.p_value(np.nan) == ""


def test_the_ladder_chart_draws_one_seed_and_several():
    for n, low in ((1, float("nan")), (3, 0.7)):
        summary = pd.DataFrame([{"step": s, "baseline": s == "c", "n": n, "test_accuracy_mean": 0.75,
                                 "test_accuracy_low": low, "test_accuracy_high": 0.8, "reported_test_accuracy": 0.8,
                                 "profile": "smoke"} for s in "abc"])
        changes = pd.DataFrame([{"step": "b", "against": "a", "n": n, "mean": 0.01, "verdict": stats.NOISE}])
        chart = figures.ladder_chart(summary, changes, "title")
        assert chart.png.startswith(b"\x89PNG") and "n training seeds" in chart.caption


def test_a_one_step_ladder_has_no_change_to_test():
    ladder = _made_ladder({("a", 0): 0.6, ("a", 1): 0.62})
    ladder.pairs = []
    steps, changes = tables.ladder_evidence(ladder)
    assert len(steps) == 1 and changes == []
    section = sections.changes_section(tables.change_table(changes), stats.ROPE, stats.ALPHA)
    assert section.table.empty and section.notes == ["nothing to compare: the ladder has a single step"]


def test_the_batchnorm_chart_names_the_steps_whose_moving_statistics_lag():
    from ablation.report.bn_chart import bn_chart, last_gap

    lagging = pd.DataFrame({"val_accuracy_moving_bn": [0.10, 0.21], "val_accuracy_recomputed_bn": [0.29, 0.41]},
                           index=[1, 2])
    tracking = pd.DataFrame({"val_accuracy_moving_bn": [0.30, 0.40], "val_accuracy_recomputed_bn": [0.35, 0.405]},
                            index=[1, 2])
    runs = pd.DataFrame([{"run_id": "a", "step": "template"}, {"run_id": "b", "step": "augmentation"},
                         {"run_id": "c", "step": "no_check"}])
    chart = bn_chart(runs, {"a": lagging, "b": tracking, "c": pd.DataFrame({"val_accuracy": [0.5]})}, seed=0)
    assert math.isclose(last_gap(lagging), 0.20) and math.isclose(last_gap(tracking), 0.005)
    assert "lag by more than 2 points in: template:" in chart.caption and "augmentation" not in chart.caption
    assert chart.png.startswith(b"\x89PNG")
    assert bn_chart(runs.iloc[2:], {"c": pd.DataFrame({"val_accuracy": [0.5]})}, seed=0) is None
