"""The benchmark's machinery at a tiny size: workers take turns, ratios come out, the CSV has its columns.

No timing is asserted: this machine's cores are shared, and the numbers are the benchmark's to report.
"""

import ast
import csv
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest

from ablation import tracking
from ablation.core.study import load_study
from ablation.tracking import Kind, Tag
from benchmarks import bench

TINY = bench.Size(train_images=64, rounds=2, networks=("tiny",), command_repeats=1)


def test_epoch_costs_charge_waiting_to_cpu_not_to_wall():
    marks = [
        {"cpu": 10.0, "wall": 100.0, "resumed_cpu": 2.0, "resumed_wall": 90.0},  # setup and epoch 1
        {"cpu": 13.0, "wall": 150.0, "resumed_cpu": 10.1, "resumed_wall": 140.0},  # waited 0.1 CPU-s, 40 s
    ]
    costs = bench.epoch_costs(marks, images=1000)
    assert costs["setup_cpu_ms"] == pytest.approx(8.0)
    assert costs["cpu_ms"] == [pytest.approx(3.0)]
    assert costs["wall_ms"] == [pytest.approx(10.0)]
    assert costs["waiting_cpu_s"] == pytest.approx(0.1)


def test_epochs_to_reach_counts_pruned_epochs_until_the_target_is_first_reached():
    trials = [(0, 0.30, 6, "complete"), (1, None, 2, "pruned"), (2, 0.50, 6, "complete"), (3, 0.60, 6, "complete")]
    assert bench.best_value(trials) == 0.60
    assert bench.epochs_to_reach(trials, 0.50) == 14
    assert bench.epochs_to_reach(trials, 0.61) is None


def test_only_rejects_unknown_ratios():
    assert bench.parse_args(["--only", "2,1"]).only == (1, 2)
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "8"])


def test_training_plan_gives_ratio_2_the_first_network_only():
    size = bench.Size(networks=("template", "final"))
    assert bench.training_plan((1, 2), size) == [("source", "template"), ("project", "template"),
                                                 ("bare", "template"), ("source", "final"), ("project", "final")]
    assert bench.training_plan((2,), size) == [("project", "template"), ("bare", "template")]
    assert bench.training_plan((7,), size) == [("project", "template"), ("project-glibc", "template")]


def test_project_step_puts_the_network_depths_and_sizes_into_the_ladder_step():
    splits = SimpleNamespace(y_train=np.zeros(64), y_val=np.zeros(16), y_test=np.zeros(10))
    study, step = bench.project_step("final", splits, epochs=3)
    base = study.step("deeper_dropout").config
    assert step.name == "deeper_dropout"
    assert step.config.model_args == {**base.model_args, "stage2_blocks": 7, "stage3_blocks": 5,
                                      "stage4_blocks": 2, "dropout_rate": 0.5}
    assert (step.config.epochs, step.config.train_subset, step.config.test_subset) == (3, 80, 10)
    assert step.config.early_stopping_monitor == base.early_stopping_monitor  # the rest is the step's own


def test_benchmark_uses_the_tracking_layer_for_mlflow_and_tag_names():
    tree = ast.parse(open(bench.__file__).read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "ablation.tracking" in imported
    assert not {name for name in imported if name.split(".")[0] == "mlflow"}
    tag_names = {v for v in vars(Tag).values() if isinstance(v, str) and v.startswith(Tag.PREFIX)}
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert "benchmarks.bench" in literals  # the check reads the benchmark's literals
    assert not literals & tag_names


def test_fill_store_writes_ladders_and_a_search_with_its_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    journal = tmp_path / "optuna.journal"
    assert bench.fill_store({"runs": 12, "journal": str(journal), "epochs": 3}) == {"runs": 12}

    study = load_study(bench.STUDY)
    runs = tracking.runs_frame(study.name)
    kinds = runs[f"tags.{Tag.KIND}"].value_counts().to_dict()
    steps = len(study.steps)  # one ladder (12 runs < 200): its parent, its steps, the search's parent, trials
    assert kinds == {Kind.LADDER: 1, Kind.LADDER_STEP: steps, Kind.SEARCH: 1, Kind.SEARCH_TRIAL: 12 - steps - 2}
    trials = runs[runs[f"tags.{Tag.KIND}"] == Kind.SEARCH_TRIAL]
    assert sorted(trials[f"tags.{Tag.TRIAL_STATE}"]) == ["complete", "complete", "complete", "pruned"]
    assert (runs["status"] == "FINISHED").all()

    step_run = runs[runs[f"tags.{Tag.KIND}"] == Kind.LADDER_STEP].iloc[0]
    assert tracking.metric_histories(step_run["run_id"], ["val_accuracy"])["val_accuracy"][-1][0] == 3
    predictions = tracking.load_json_artifact(step_run["run_id"], "test_predictions.json")
    assert len(predictions["labels"]) == len(predictions["predictions"]) == 100

    storage, _, _ = tracking.open_storage(str(journal))
    stored = storage.get_all_trials(storage.get_study_id_from_name(f"{study.name}-quick"))
    assert [t.state.name for t in stored] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert [json.loads(t) for t in trials.sort_values(f"tags.{Tag.OPTUNA_TRIAL}")[f"tags.{Tag.SEARCH_PARAMS}"]] == \
        [t.params for t in stored]


@pytest.mark.slow
def test_tiny_benchmark_writes_its_csv(tmp_path, cifar_path):
    # Ratio 1 needs the source's Keras 2 (the `bench` extra); ratios 2, 5 and 7 only the project.
    only = (1, 2, 5, 7) if importlib.util.find_spec("tf_keras") else (2, 5, 7)
    out = tmp_path / "bench.csv"
    lines = []
    rows = bench.run_bench(only, TINY, cifar_path, out, say=lines.append)

    expected = [r for n in sorted(only) for r in ((n, "2 (wall)") if n == 2 else (n,))]  # ratio 2 in CPU and wall
    assert [row["ratio"] for row in rows] == expected
    with open(out, newline="") as file:
        read = list(csv.DictReader(file))
    assert list(read[0]) == [*bench.COLUMNS, "machine"]
    assert [row["ratio"] for row in read] == [str(r) for r in expected]
    assert [row["met"] in ("True", "False") and float(row["value"]) > 0 for row in read] == [True] * len(expected)
    wall = next(row for row in read if row["ratio"] == "2 (wall)")
    assert wall["unit"] == "wall-ms/image" and float(wall["a_median"]) > 0 and float(wall["b_median"]) > 0
    training = [row for row in read if row["ratio"] in ("1", "2", "7")]
    assert [(row["unit"], float(row["a_median"]) > 0, float(row["b_median"]) > 0) for row in training] == \
        [("CPU-ms/image", True, True)] * (len(only) - 1)
    allocator = next(row for row in read if row["ratio"] == "7")
    assert allocator["a"] == "project, glibc malloc defaults" and "peak resident memory: glibc defaults" in allocator["note"]
    assert any("round 2/2" in line for line in lines)
    table = bench.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1


def test_summary_and_table_have_a_line_per_ratio():
    rows = [bench._row(2, "template", 0.97, "bare keras.Model.fit", 8.0, "project ladder step", 8.25, "CPU-ms/image",
                       120.0, 118.0, "images/s"),
            bench._row(5, "ladder --help", 0.05, "python -m ablation.ladder --help", 0.05, unit="s wall")]
    assert [row["met"] for row in rows] == [True, True]
    lines = bench.summary_lines(rows)
    assert [line.split(":")[0] for line in lines] == ["ratio 2 (template)", "ratio 5 (ladder --help)"]
    table = bench.markdown_table(rows).splitlines()
    assert table[2].startswith("| 2 | CPU-ms/image | template | bare keras.Model.fit: 8.00 (120 img/s) |")
    assert len(table) == 2 + len(rows)
