"""benchmarks/input_pipeline.py: the host side of a step, measured by the project's own training with a probe network."""

import math

import pytest

from benchmarks import input_pipeline


@pytest.mark.slow
def test_a_tiny_measure_of_the_probe_variants_gives_each_a_cost_a_round(cifar_path):
    # The template network's own step is the same measure with the study's network (its tracing alone would cost
    # this test most of its CPU); the table's use of it is tested below.
    lines, probes = [], ["template, 1 batch a call", "template, 8 batches a call", "augmentation, 1 batch a call"]
    found = input_pipeline.measure(str(cifar_path), rounds=1, images=96, step_images=32, say=lines.append, only=probes)
    assert list(found) == probes
    # Three steps an epoch: the numbers are checked for being measured, one a round; their size, by the real run
    # (docs/several-machines.md).
    assert all(len(values) == 1 and 0 < values[0] < math.inf for values in found.values()), found
    assert len(lines) == 3 and lines[0].startswith("round 1/1  template, 1 batch a call")


def test_the_table_gives_each_share_of_the_networks_step_and_the_10_percent_line():
    table = input_pipeline.table({"template, 1 batch a call": [2.0, 3.0, 4.0], "template, 8 batches a call": [1.0],
                                  "augmentation, 1 batch a call": [5.0], "template network's own step": [300.0]})
    assert table[0] == "the template network's step at batch 32, on this CPU: 300.0 CPU-ms (median)"
    assert "| template, 1 batch a call | 3.00 | 3 | 1.0% |" in table
    assert "| augmentation, 1 batch a call | 5.00 | 1 | 1.7% |" in table
    assert table[-1].endswith("shorter than 27.0 ms (9 x 3.00)")


@pytest.mark.parametrize("option", ["--rounds", "--images", "--step-images"])
def test_a_count_below_one_is_refused_naming_the_option(option, capsys):
    with pytest.raises(SystemExit):
        input_pipeline.parse_args(["--data", "x", option, "0"])
    assert f"{option} must be at least 1" in capsys.readouterr().err
