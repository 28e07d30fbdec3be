"""Scaling benchmark: units per hour of one ladder through the shared queue with 1 and with 2 workers.

Run from the repository root:

    python -m benchmarks.scaling --data ../shared/data/cifar-10-python.tar.gz [--seeds 4] [--rounds 1]

Each case runs the same work on fresh stores in a temp dir (a SQLite MLflow store and the Optuna
journal beside it, so nothing is reused): `python -m ablation.ladder --workers` (the planner, which
works too) and, for 2 workers, one `python -m ablation.worker` started as soon as the planner has
queued the units. Wall time runs from the planner's start to its exit (all units done); CPU time is
user + sys of every process of the case
(`RUSAGE_CHILDREN`), so it includes what each worker pays once: Python, TensorFlow and MLflow
start-up and reading CIFAR-10. The cases alternate (1, 2, 1, 2, ...) so drifting load hits both;
the load average is recorded at each case's start and end. Results go to bench_results/scaling.csv.

The work: SCALING_STUDY below, 2 steps x `--seeds` seeds of a small template ResNet (3 residual
blocks) on 800 training / 200 validation / 500 test images, 3 epochs each: about a CPU-minute a unit.
"""

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALING_STUDY = """
[study]
name = "scaling"

[base]
model = "template_resnet"
model_args = { stage2_blocks = 1, stage3_blocks = 1, stage4_blocks = 1, dropout_rate = 0.0 }
epochs = 3
batch_size = 32
train_subset = 1000
test_subset = 500

[[steps]]
name = "plain"

[[steps]]
name = "flip"
horizontal_flip = true
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 (default: $ABLATION_DATA)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per step: 2 x SEEDS units a case (default 4)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (1 worker, 2 workers) (default 1)")
    parser.add_argument("--out", default="bench_results/scaling.csv")
    return parser.parse_args(argv)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(workers: int, study_file: Path, data, seeds: int, folder: Path) -> dict:
    """One case on fresh stores: the planner, and `workers - 1` workers once it has queued the units."""
    folder.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "PYTHONUNBUFFERED": "1",
           "ABLATION_CACHE": str(folder / "cache"), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    data_args = ["--data", str(data)] if data else []
    log = folder / "planner.log"
    load_before, cpu_before, started = os.getloadavg()[0], cpu_of_children(), time.perf_counter()
    with open(log, "w") as out:
        planner = subprocess.Popen([sys.executable, "-m", "ablation.ladder", "--study", str(study_file), "--profile",
                                    "full", "--seeds", str(seeds), "--no-report", "--workers", *data_args],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    while planner.poll() is None and "queue '" not in log.read_text():
        time.sleep(0.5)
    helpers = []
    for number in range(1, workers):
        with open(folder / f"worker{number}.log", "w") as out:
            helpers.append(subprocess.Popen([sys.executable, "-m", "ablation.worker", "--idle", "0", *data_args],
                                            env=env, stdout=out, stderr=subprocess.STDOUT))
    code = planner.wait()
    wall = time.perf_counter() - started  # every unit is done when the planner exits
    codes = [helper.wait() for helper in helpers]
    cpu, output = cpu_of_children() - cpu_before, log.read_text()
    units = 2 * seeds
    if code or any(codes) or f"all {units} units" not in output:
        raise SystemExit(f"case with {workers} worker(s) failed ({code}, {codes}):\n{output[-3000:]}")
    return {"workers": workers, "units": units, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "units_per_hour": round(units / wall * 3600, 1), "cpu_s_per_unit": round(cpu / units, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ablation-scaling-") as folder:
        study_file = Path(folder) / "scaling.toml"
        study_file.write_text(SCALING_STUDY)
        for round_number in range(args.rounds):
            for workers in (1, 2):
                row = run_case(workers, study_file, args.data, args.seeds,
                               Path(folder) / f"round{round_number}-workers{workers}")
                rows.append({"round": round_number, **row})
                print(", ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
