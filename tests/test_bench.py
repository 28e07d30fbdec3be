"""The benchmark's machinery at a tiny size: workers take turns, ratios come out, the CSV has its columns.

No timing is asserted: this machine's cores are shared, and the numbers are the benchmark's to report.
"""

import csv
import importlib.util

import pytest

from ablation import bench

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
        bench.parse_args(["--only", "7"])


@pytest.mark.slow
def test_tiny_benchmark_writes_its_csv(tmp_path, cifar_path):
    # Ratio 1 needs the source's Keras 2 (the `bench` extra); ratio 2 and 5 only the project.
    only = (1, 2, 5) if importlib.util.find_spec("tf_keras") else (2, 5)
    out = tmp_path / "bench.csv"
    lines = []
    rows = bench.run_bench(only, TINY, cifar_path, out, say=lines.append)

    assert [row["ratio"] for row in rows] == sorted(only)
    with open(out, newline="") as file:
        read = list(csv.DictReader(file))
    assert list(read[0]) == [*bench.COLUMNS, "machine"]
    assert [int(row["ratio"]) for row in read] == sorted(only)
    for row in read:
        assert float(row["value"]) > 0, row
        assert row["met"] in ("True", "False"), row
    training = [row for row in read if row["ratio"] in ("1", "2")]
    assert all(row["unit"] == "CPU-ms/image" and float(row["a_median"]) > 0 and float(row["b_median"]) > 0
               for row in training)
    assert any("round 2/2" in line for line in lines)
    table = bench.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1
