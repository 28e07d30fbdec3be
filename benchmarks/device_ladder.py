"""A study's ladder over seeds on one machine, K training processes at a time, within a time budget.

    python -m benchmarks.device_ladder prepare --data ARCHIVE --profile quick --out SPLITS.npz
    python -m benchmarks.device_ladder run --splits SPLITS.npz --profile quick --seeds 5 --processes 8 \
        --minutes 8 --out RESULTS.jsonl

`prepare` cuts the profile's split once (its arrays are small enough to carry to a machine that has
no copy of the archive); `run` trains every step of the study for seeds 0..N-1, seed 0 of every
step first, through `ablation.training.fit.train` (no MLflow: for a machine without the tracking stack),
and appends one JSON line per finished unit to RESULTS. After --minutes no new unit starts; the
units already running finish. Run it again to go on: finished units (same step, seed and config hash)
are skipped. Per unit it prints the wall time, training images per second, the test accuracy and,
where `nvidia-smi` answers, the GPU's mean utilisation while the unit ran.

The same work with MLflow and the shared queue (runs, checkpoints, resumption and the report as every
command has them) is `benchmarks/device_queue.py`, the one to use where the project is installed. This
one is kept for a device image that lacks the tracking stack (MLflow, Optuna; the H200 measurement in
docs/results.md ran so, on Keras' JAX backend), and to repeat that measurement with its commands.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ablation.core.profiles import get_profile
from ablation.core.study import load_study


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_ladder", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare")
    prepare.add_argument("--data", required=True)
    run = commands.add_parser("run")
    run.add_argument("--splits", required=True)
    run.add_argument("--seeds", type=int, default=3)
    run.add_argument("--processes", type=int, default=4)
    run.add_argument("--minutes", type=float, default=8.0)
    run.add_argument("--treatments", nargs="+", default=[None], help="bn_statistics values to compare (default: the profile's)")
    for sub in (prepare, run):
        sub.add_argument("--study", default="assignment")
        sub.add_argument("--profile", default="quick")
        sub.add_argument("--out", required=True)
    summary = commands.add_parser("summarize", help="per treatment: each step over seeds and the ladder's verdicts")
    summary.add_argument("results")
    summary.add_argument("--study", default="assignment")
    return parser.parse_args(argv)


def units(study, profile, seeds: int, treatments=(None,)) -> list:
    """(step name, config) per seed, treatment and step, seed-major: every step's seed 0 first.

    A treatment (a `bn_statistics` value) replaces the profile's; None keeps it.
    """
    return [(step.name, _treated(profile.apply(dataclasses.replace(step.config, seed=seed)), treatment))
            for seed in range(seeds) for treatment in treatments for step in study.steps]


def _treated(config, treatment):
    return config if treatment is None else dataclasses.replace(config, bn_statistics=treatment)


def prepare(args) -> int:
    from ablation.data import LazySplits

    study, profile = load_study(args.study), get_profile(args.profile)
    split_args = {json.dumps(config.split_args(), sort_keys=True) for _, config in units(study, profile, 1)}
    if len(split_args) != 1:
        sys.exit(f"{args.study} at {args.profile}: its steps use {len(split_args)} different splits; one is supported")
    splits = LazySplits(args.data).splits(**json.loads(split_args.pop()))
    np.savez(args.out, x_train=splits.x_train, y_train=splits.y_train, x_val=splits.x_val, y_val=splits.y_val,
             x_test=splits.x_test, y_test=splits.y_test, class_names=np.array(splits.class_names),
             fingerprint=json.dumps(splits.fingerprint))
    print(f"{args.out}: {len(splits.x_train)} train / {len(splits.x_val)} validation / {len(splits.x_test)} test images")
    return 0


_SPLITS = None  # the splits, read once per worker process


def train_unit(splits_path: str, name: str, fields: dict, deadline: float) -> dict | None:
    """One unit in a worker process (None when the budget ran out before it started); `fields`: Config.to_dict()."""
    global _SPLITS
    if time.time() > deadline:
        return None
    from ablation.core.config import Config
    from ablation.data import Splits
    from ablation.training.fit import train

    config = Config(**fields)
    if _SPLITS is None:
        with np.load(splits_path) as saved:
            _SPLITS = Splits(*(saved[k] for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")),
                             class_names=tuple(saved["class_names"].tolist()),
                             fingerprint=json.loads(str(saved["fingerprint"])))
    started = time.time()
    result = train(config, _SPLITS)
    return {"step": name, "seed": config.seed, "config_hash": config.hash(), "bn_statistics": config.bn_statistics,
            "test_accuracy": result.test_accuracy, "epochs_run": result.epochs_run, "epochs": config.epochs,
            "stopped_early": result.stopped_early, "train_seconds": result.train_seconds,
            "train_cpu_seconds": result.train_cpu_seconds, "started": started, "ended": time.time(),
            "images_per_second": len(_SPLITS.x_train) * result.epochs_run / max(result.train_seconds, 1e-9),
            "history": result.history}


class GpuMonitor:
    """Samples nvidia-smi's utilisation every two seconds, if it answers; mean over a time interval.

    `gpu`: nvidia-smi's number of the GPU to sample (default: the first it lists); `enabled=False` samples
    nothing (a run on CPUs), and every mean is then NaN.
    """

    def __init__(self, gpu: int | None = None, enabled: bool = True):
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()
        self.query = ["nvidia-smi", *([f"--id={gpu}"] if gpu is not None else []),
                      "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        if enabled:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.stopped.wait(2.0):
            try:
                text = subprocess.run(self.query, capture_output=True, text=True, timeout=10).stdout
                self.samples.append((time.time(), float(text.split()[0])))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def mean(self, start: float, end: float) -> float:
        values = [u for t, u in self.samples if start <= t <= end]
        return float(np.mean(values)) if values else float("nan")


def done_units(path: Path) -> set:
    if not path.exists():
        return set()
    return {(r["step"], r["seed"], r["config_hash"]) for r in map(json.loads, path.read_text().splitlines())}


def run(args) -> int:
    study, profile, out = load_study(args.study), get_profile(args.profile), Path(args.out)
    finished = done_units(out)
    todo = [(n, c) for n, c in units(study, profile, args.seeds, args.treatments) if (n, c.seed, c.hash()) not in finished]
    print(f"{len(todo)} units to train ({len(finished)} finished before), {args.processes} processes, "
          f"budget {args.minutes} min", flush=True)
    deadline, gpu, began = time.time() + 60 * args.minutes, GpuMonitor(), time.time()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # many processes share one GPU
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        futures = [pool.submit(train_unit, args.splits, n, c.to_dict(), deadline) for n, c in todo]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            if row is None:
                continue
            row["gpu_utilisation"] = gpu.mean(row["started"], row["ended"])
            with out.open("a") as file:
                file.write(json.dumps(row) + "\n")
            print(f"{row['step']:>22} seed {row['seed']}: test {row['test_accuracy']:.4f}  "
                  f"epochs {row['epochs_run']}/{row['epochs']}  wall {row['ended'] - row['started']:.0f} s  "
                  f"{row['images_per_second']:.0f} img/s  GPU {row['gpu_utilisation']:.0f}%", flush=True)
    left = len(todo) - len(done_units(out) - finished)
    print(f"done in {time.time() - began:.0f} s; {left} units left (run again to go on)", flush=True)
    return 0


def step_rows(rows: list[dict], steps: list[str]) -> list[str]:
    """Per step: n seeds, mean and SD of test accuracy, last-epoch BN gap, how many runs lowered the LR or stopped."""
    lines = ["| step | n | test accuracy, mean (SD) | BN gap at the last epoch, mean | LR lowered | stopped early |",
             "|---|---|---|---|---|---|"]
    for step in steps:
        mine = [r for r in rows if r["step"] == step]
        accuracy = 100 * np.array([r["test_accuracy"] for r in mine])
        gaps = [r["history"]["val_accuracy_recomputed_bn"][-1] - r["history"]["val_accuracy_moving_bn"][-1] for r in mine]
        lowered = sum(min(r["history"]["learning_rate"]) < r["history"]["learning_rate"][0] for r in mine)
        stopped = sum(r["stopped_early"] for r in mine)
        lines.append(f"| {step} | {len(mine)} | {accuracy.mean():.1f} ({accuracy.std(ddof=1):.1f}) | "
                     f"{100 * np.mean(gaps):+.1f} | {lowered}/{len(mine)} | {stopped}/{len(mine)} |")
    return lines


def change_rows(rows: list[dict], study) -> list[str]:
    """The ladder's changes over the seeds both steps have, through the tracker's own verdicts."""
    from ablation.analysis import evidence, stats

    accuracy = {(r["step"], r["seed"]): r["test_accuracy"] for r in rows}
    pairs = evidence.ladder_pairs(study.steps)
    changes = []
    for after, before in pairs:
        seeds = sorted(s for (step, s) in accuracy if step == before and (after, s) in accuracy)
        changes.append(stats.paired_change([accuracy[before, s] for s in seeds], [accuracy[after, s] for s in seeds]))
    lines = ["| change | n | difference (points), 95% interval | p (Holm) | verdict |", "|---|---|---|---|---|"]
    for (after, before), c in zip(pairs, stats.with_verdicts(changes), strict=True):
        lines.append(f"| {before} → {after} | {c.n} | {100 * c.mean:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}] | "
                     f"{c.p_adjusted:.3f} | {c.verdict}{'' if c.more_seeds is None else f' (~{c.more_seeds} more seeds)'} |")
    return lines


def summarize(args) -> int:
    study = load_study(args.study)
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines()]
    for treatment in sorted({r["bn_statistics"] for r in rows}):
        mine = [r for r in rows if r["bn_statistics"] == treatment]
        print(f"\nbn_statistics = {treatment}\n")
        print("\n".join(step_rows(mine, [s.name for s in study.steps])))
        print()
        print("\n".join(change_rows(mine, study)))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"prepare": prepare, "run": run, "summarize": summarize}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
