"""SIGTERM at 10 random moments of a real ladder: never a run left RUNNING, never a traceback or a native crash.

Each moment is a line of the ladder's output (its start, the data, a step's start, an epoch's end) and a
random delay after it, so the signals land in start-up, data loading, model building, mid-epoch,
validation, MLflow writes and between steps. A tiny network on a small image tree keeps each trial to
seconds of CPU (most of it TensorFlow's import), two trials at a time.
"""

import random
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from probe_errors import tiny_vgg
from test_resilience import ladder, stop_at

pytestmark = pytest.mark.slow
STUDY = tiny_vgg('[[steps]]\nname = "first"\n[[steps]]\nname = "second"\nlearning_rate = 0.002\n', epochs=2)
TRIGGERS = ["study 'tiny'", "loading CIFAR-10", "tracking:", "[1/2]", "epoch   1/2", "[2/2]"]


def moments() -> list[tuple[str, float]]:
    """(output line, seconds after it): each line of TRIGGERS once, then four in the first step's second epoch.

    Every phase gets a moment (a random choice of lines could miss one), and the four land mid-training."""
    rng = random.Random(14)
    return ([(trigger, rng.uniform(0.0, 1.5)) for trigger in TRIGGERS]
            + [("epoch   1/2", rng.uniform(0.0, 0.5)) for _ in range(4)])


def trial(folder, data, trigger: str, delay: float) -> dict:
    """One ladder, SIGTERM'd `delay` seconds after its `trigger` line: its exit, output and runs' states."""
    folder.mkdir()
    process = ladder(folder, STUDY, data, start_new_session=True)
    output = stop_at(process, trigger, signal.SIGTERM, delay)
    states = []
    if (folder / "mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        states = [(r.data.tags.get("ablation.kind"), r.info.status) for r in runs]
    return {"moment": (trigger, round(delay, 2)), "exit": process.returncode, "output": output, "states": states}


def test_sigterm_at_ten_moments_never_leaves_a_running_run_or_a_crash(tmp_path, cifar_tree):
    chosen = moments()
    with ThreadPoolExecutor(2) as pool:  # two ladders at a time, each in its own store
        trials = list(pool.map(lambda item: trial(tmp_path / f"trial{item[0]}", cifar_tree, *item[1]),
                               enumerate(chosen)))
    assert len(trials) == len(chosen) == 10 and {trigger for trigger, _ in chosen} == set(TRIGGERS)
    for result in trials:
        where = f"{result['moment']}: exit {result['exit']}\n{result['output'][-2000:]}"
        assert "Traceback" not in result["output"] and "Check failed" not in result["output"], where
        assert "RUNNING" not in {state for _, state in result["states"]}, where
        if result["exit"] == 0:  # the signal came after the last check: the ladder had finished
            assert {state for _, state in result["states"]} == {"FINISHED"}, where
        else:
            assert result["exit"] == 143 and "interrupted by SIGTERM" in result["output"], where
    # The moments reached training: steps stopped mid-way, ended KILLED (not RUNNING, not FAILED).
    stopped_in_training = [t for t in trials if ("ladder_step", "KILLED") in t["states"]]
    assert len(stopped_in_training) >= 3, [t["moment"] for t in trials]
