"""benchmarks/device_queue.py at smoke size on the CPU: the ladder through the queue with 2 workers, stopped
(by a real SIGTERM, then by its --minutes budget) and run again until done, on a real store.

What it must hold: units finished before a stop stay finished (same runs, never trained again), the
units left go back to the queue and the same command finishes them, and no unit is trained twice.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = [(seed, step) for seed in (0, 1) for step in ("template", "augmentation")]  # the order they are queued in


def command(store: Path, data: Path, minutes: float) -> list[str]:
    return [sys.executable, "-m", "benchmarks.device_queue", "--profile", "smoke", "--steps", "template,augmentation",
            "--seeds", "2", "--processes", "2", "--data", str(data), "--store", str(store), "--minutes", str(minutes)]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(args, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the script's own clean stop: it ends its planner and workers
        process.communicate(timeout=600)
        raise


def step_runs(store: Path) -> list:
    """Every ladder step run of the store, as MLflow holds it."""
    client = mlflow.tracking.MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`ablation.kind` = 'ladder_step'", max_results=1000)


def trained(store: Path) -> dict:
    """(seed, step) -> ids of its FINISHED runs that trained (not copies of an earlier run)."""
    found = {}
    for run in step_runs(store):
        if run.info.status == "FINISHED" and "ablation.reused_from" not in run.data.tags:
            key = (int(run.data.tags["ablation.seed"]), run.data.tags["ablation.step"])
            found.setdefault(key, []).append(run.info.run_id)
    return found


@pytest.mark.slow
def test_device_script_stops_cleanly_and_resumes(tmp_path, cifar_path):
    store = tmp_path / "store"

    # 1. A real SIGTERM to the script as soon as it reports a finished unit: the units in hand go back.
    script, lines = start(command(store, cifar_path, minutes=10)), []
    try:
        for line in script.stdout:
            lines.append(line)
            if line.split()[:1] in (["template"], ["augmentation"]):  # a finished unit's line
                script.send_signal(signal.SIGTERM)
                assert line.split()[1:3] == ["seed", "0"], "seed 0 of every step is queued first"
                break
        out = "".join(lines) + finish(script, timeout=600)
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 143, out
    first = trained(store)
    assert 1 <= len(first) < len(UNITS), out
    assert "back in the queue; run the same command again" in out, out
    assert all(len(ids) == 1 for ids in first.values())
    assert not any(run.info.status == "RUNNING" for run in step_runs(store)), "a stopped unit's run was left RUNNING"

    # 2. The same command with a budget too short for the rest: it stops at the budget, keeping what finished.
    started = time.monotonic()
    again = start(command(store, cifar_path, minutes=0.2))
    out = finish(again, timeout=600)
    assert again.returncode == 3, out
    assert "the budget ran out" in out and time.monotonic() - started < 300, out
    second = trained(store)
    assert all(second[key] == ids for key, ids in first.items()), "a unit finished before was trained again"
    assert len(second) < len(UNITS)

    # 3. Once more, with time enough: every unit finishes, each trained exactly once; the table lists them all.
    last = start(command(store, cifar_path, minutes=10))
    out = finish(last, timeout=600)
    assert last.returncode == 0, out
    final = trained(store)
    assert sorted(final) == sorted(UNITS), out
    assert all(len(ids) == 1 for ids in final.values()), f"a unit trained twice: {final}"
    assert all(final[key] == ids for key, ids in second.items())
    assert f"{len(UNITS)} of {len(UNITS)} units finished" in out, out
    table = out[out.rindex("unit "):]
    for seed, step in UNITS:
        row = next(line for line in table.splitlines() if line.startswith(f"{step} seed {seed} "))
        wall, fit, images_per_second, accuracy, gpu = row.split()[3:8]
        assert float(wall) > 0 and float(fit) > 0 and float(images_per_second) > 0, row
        assert 0 <= float(accuracy.rstrip("%")) <= 100 and gpu == "n/a", row  # no --gpu: no GPU figure
