"""A study's ladder over seeds through the shared work queue on one machine (a GPU or the CPU), K workers, in a budget.

    python -m benchmarks.device_queue --data ARCHIVE --store DIR --profile full --seeds 5 --gpu 0 --per-gpu K --minutes 60
    python -m benchmarks.device_queue --data ARCHIVE --store DIR --profile smoke --seeds 2 --processes 2 --minutes 1

It runs the project's own commands, as subprocesses, on an embedded store in one folder (DIR: the
MLflow database `mlflow.db` with its artifacts, the queue's Optuna journal `optuna.journal`, the
checkpoints, and the commands' logs in `DIR/logs/`):

- the planner, `python -m ablation.ladder --workers --plan-only --seeds N ...`, which queues one unit
  per step and seed and trains none itself. The ladder orders its units seed by seed and the queue
  hands them out in that order, so seed 0 of every step is trained first, then seed 1, and so on;
- the workers, `python -m ablation.worker --gpus G --per-gpu K` (K processes pinned to GPU G, each
  taking GPU memory as it needs it) or `--processes K` on a machine without a GPU.

While they work it prints one line per unit as it finishes, and at the end a table of every unit:
wall time of its (last) run, fit time (every attempt), training images per second (training images
x epochs / fit time), test accuracy and the GPU's mean utilisation while the run ran (from the run's
MLflow system metrics, which record the GPU with the `gpu` extra installed; else from `nvidia-smi`
sampled by this script; n/a without either). With K workers on one GPU a unit's GPU figure is the
whole GPU's, shared by the K units running at the time.

After --minutes it stops cleanly: SIGTERM to the planner and to the workers, each of which puts its
unit in hand back in the queue (its MLflow run KILLED, its checkpoint kept). Finished units stay in the
store. Running the same command again joins the same queue and goes on: finished units are not
trained again, an interrupted one resumes from its last finished epoch, in its place in the queue
(before the units queued after it), however often it was stopped: a stop is not a failure (the
queue's two retries are for workers that died). A later command with more seeds reuses the
finished ones (the ladder's reuse by work key) and trains only the new seeds.

Exit codes: 0 every unit finished; 1 a unit failed (the planner names it; its run says why);
2 bad input (the planner's or the workers' one-line error); 3 the budget ran out with units left
(run the same command again); 130 / 143 stopped by Ctrl-C / SIGTERM (the same clean stop).

Beside it, `benchmarks/device_ladder.py` trains a ladder with K processes without MLflow or Optuna
(through `ablation.training.fit` directly, results in a JSON-lines file; and `prepare` cuts the split on
another machine): kept for a device image that lacks the tracking stack, where this script cannot run,
and because docs/results.md's JAX measurement was made with it.
"""

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.device_ladder import GpuMonitor  # nvidia-smi's samples: one sampler for both scripts

EXIT_FAILED, EXIT_INPUT_ERROR, EXIT_BUDGET = 1, 2, 3
STOP_GRACE_SECONDS = 300.0  # how long a stopped process may take to reach its batch end and requeue its unit
POLL_SECONDS = 1.0
REPORT_SECONDS = 5.0  # how often finished units are looked up in the store


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_queue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="CIFAR-10 (default: $ABLATION_DATA)")
    parser.add_argument("--store", required=True,
                        help="the folder of the embedded store (MLflow database, Optuna journal, checkpoints, logs)")
    parser.add_argument("--study", default="assignment")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 (default 1)")
    parser.add_argument("--steps", default=None, help="comma-separated step names (default: every step)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="passed to the ladder (e.g. --set precision=mixed_bfloat16 --set jit_compile=true)")
    parser.add_argument("--gpu", type=int, default=None, help="the GPU (nvidia-smi's number) the workers are pinned to")
    parser.add_argument("--per-gpu", type=int, default=None, help="with --gpu: worker processes on it (default 1)")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes on the CPU, without --gpu (default 1)")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="budget: stop cleanly after this many minutes (fractions allowed; default 60)")
    args = parser.parse_args(argv)
    if args.gpu is not None and args.processes is not None:
        parser.error("give --gpu with --per-gpu (workers on a GPU) or --processes (workers on the CPU), not both")
    if args.per_gpu is not None and args.gpu is None:
        parser.error("--per-gpu goes with --gpu")
    if args.seeds < 1 or args.minutes <= 0 or min(args.per_gpu or 1, args.processes or 1) < 1:
        parser.error("--seeds, --minutes, --per-gpu and --processes must be positive")
    return args


def commands(args) -> tuple[list[str], list[str]]:
    """The planner's and the workers' command lines."""
    data = ["--data", str(Path(args.data).resolve())] if args.data else []
    planner = [sys.executable, "-m", "ablation.ladder", "--study", args.study, "--profile", args.profile,
               "--seeds", str(args.seeds), "--workers", "--plan-only", "--no-report", *data]
    planner += ["--steps", args.steps] if args.steps else []
    for value in args.set:
        planner += ["--set", value]
    workers = [sys.executable, "-m", "ablation.worker", *data]
    if args.gpu is not None:
        workers += ["--gpus", str(args.gpu), "--per-gpu", str(args.per_gpu or 1)]
    else:
        workers += ["--processes", str(args.processes or 1)]
    return planner, workers


class Store:
    """The units of this plan as the MLflow store holds them, read through `ablation.tracking` (the package's one
    door to MLflow) once the planner has made its parent run."""

    def __init__(self, folder: Path, study_name: str, profile: str, seeds: int, steps: list[str], gpu):
        self.folder, self.study_name, self.profile, self.seeds, self.steps = folder, study_name, profile, seeds, steps
        self.gpu = gpu
        self.client, self.experiment, self.overrides = None, None, None

    def open(self, planner_pid: int) -> bool:
        """Whether the planner's parent run exists; its --set values (as recorded) are the plan's."""
        from ablation.tracking import Kind, Tag, connect

        if self.overrides is None:
            if not (self.folder / "mlflow.db").exists():  # the planner has not made it yet (or failed before)
                return False
            self.client = self.client or connect()  # $MLFLOW_TRACKING_URI: the store the commands use
            experiment = self.client.get_experiment_by_name(self.study_name)
            if experiment is None:
                return False
            parents = self.client.search_runs([experiment.experiment_id], f"tags.`{Tag.KIND}` = '{Kind.LADDER}' and "
                                              f"tags.`{Tag.PID}` = '{planner_pid}'", max_results=1)
            if not parents:
                return False
            self.experiment, self.overrides = experiment.experiment_id, parents[0].data.tags.get(Tag.OVERRIDES, "{}")
        return True

    def units(self) -> dict:
        """(seed, step) -> the unit's best run: a trained FINISHED one, else a reused copy, else its latest attempt."""
        from ablation.tracking import Kind, Tag

        runs = self.client.search_runs([self.experiment], f"tags.`{Tag.KIND}` = '{Kind.LADDER_STEP}' and "
                                       f"tags.`{Tag.STUDY}` = '{self.study_name}' and "
                                       f"tags.`{Tag.PROFILE}` = '{self.profile}'", max_results=50000)
        rank = lambda run: (run.info.status == "FINISHED", Tag.REUSED_FROM not in run.data.tags,  # noqa: E731
                            run.info.start_time)
        found = {}
        for run in runs:
            tags = run.data.tags
            key = (int(tags.get(Tag.SEED, -1)), tags.get(Tag.STEP))
            if key[0] >= self.seeds or key[1] not in self.steps or tags.get(Tag.OVERRIDES, "{}") != self.overrides:
                continue
            if key not in found or rank(run) > rank(found[key]):
                found[key] = run
        return found

    def gpu_utilisation(self, run, sampler: GpuMonitor) -> float:
        """Mean GPU utilisation while the run ran: its system metrics, else this script's nvidia-smi samples."""
        if self.gpu is not None:
            history = self.client.get_metric_history(run.info.run_id, f"system/gpu_{self.gpu}_utilization_percentage")
            if history:
                return sum(m.value for m in history) / len(history)
        return sampler.mean(run.info.start_time / 1000, (run.info.end_time or time.time() * 1000) / 1000)


HEADER = f"{'unit':<34}{'wall s':>8}{'fit s':>8}{'img/s':>8}{'test acc':>10}{'GPU %':>7}  note"


def unit_line(seed: int, step: str, run, store: Store, sampler: GpuMonitor) -> str:
    """wall time, fit time, images per second, test accuracy, GPU utilisation of a finished unit."""
    from ablation.tracking import Tag

    metrics, tags = run.data.metrics, run.data.tags
    wall = (run.info.end_time - run.info.start_time) / 1000
    fit = metrics.get("train_seconds", math.nan)
    images = float(tags.get(Tag.DATA_PREFIX + "train_size", "nan")) * metrics.get("epochs_run", math.nan)
    gpu = store.gpu_utilisation(run, sampler)
    notes = (["reused"] if Tag.REUSED_FROM in tags else []) + (
        [f"resumed at epoch {tags[Tag.RESUMED_AT_EPOCH]}"] if Tag.RESUMED_AT_EPOCH in tags else [])
    gpu_text = "n/a" if gpu != gpu else f"{gpu:.0f}"
    return (f"{f'{step} seed {seed}':<34}{wall:>8.0f}{fit:>8.0f}{images / fit:>8.0f}"
            f"{100 * metrics.get('test_accuracy', math.nan):>9.1f}%{gpu_text:>7}  {', '.join(notes)}")


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A command in its own session (its own process group), its output appended to `log`."""
    with log.open("a") as file:
        file.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command[1:])}\n")
        file.flush()
        return subprocess.Popen(command, env=env, stdout=file, stderr=subprocess.STDOUT, start_new_session=True)


def stop(processes: list[subprocess.Popen]):
    """SIGTERM to each running process's group; wait for every one (SIGKILL after STOP_GRACE_SECONDS)."""
    for process in processes:
        if process.poll() is None:
            with _gone():
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"process {process.pid} did not stop in {STOP_GRACE_SECONDS:.0f} s: killed (the next command "
                  "marks its run KILLED and queues its unit again)", flush=True)
            with _gone():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class _gone:
    """Ignore ProcessLookupError: the process ended meanwhile."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is ProcessLookupError


def tail(log: Path, lines: int = 5) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    folder = Path(args.store).resolve()
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"  # the commands' store, and this reader's
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA numbers GPUs as nvidia-smi does (--gpu, the workers' pin)
    from ablation.api import load_study  # the study's step names and order (the API's study reader)

    study = load_study(args.study)
    names = [step.name for step in study.steps]
    steps = [name.strip() for name in args.steps.split(",")] if args.steps else names
    steps = [name for name in names if name in steps]  # the ladder's order; an unknown name: the planner says so
    planned = [(seed, step) for seed in range(args.seeds) for step in steps]
    store = Store(folder, study.name, args.profile, args.seeds, steps, args.gpu)
    planner_command, workers_command = commands(args)
    print(f"{len(planned)} units ({len(steps)} steps x {args.seeds} seeds, seed by seed), {args.profile} profile, "
          f"store {folder}, budget {args.minutes:g} min; logs in {folder / 'logs'}")

    stop_signal = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop_signal.append(number))
    began = time.monotonic()
    deadline, sampler = began + 60 * args.minutes, GpuMonitor(args.gpu, enabled=args.gpu is not None)
    planner = start(planner_command, env, folder / "logs" / "planner.log")
    workers = start(workers_command, env, folder / "logs" / "workers.log")
    shown, before, reason, last_look = set(), None, None, 0.0
    try:
        while reason is None:
            time.sleep(POLL_SECONDS)
            if planner.poll() is not None:
                reason = "planner"
            elif workers.poll() is not None:
                reason = "workers"
            elif stop_signal:
                reason = "signal"
            elif time.monotonic() >= deadline:
                reason = "budget"
            if reason is None and time.monotonic() - last_look < REPORT_SECONDS:
                continue
            last_look = time.monotonic()
            if store.open(planner.pid):
                finished = {key: run for key, run in store.units().items() if run.info.status == "FINISHED"}
                if before is None:  # the first look: what earlier commands finished is in the table at the end
                    before = set(finished)
                    print(f"{len(before)} unit(s) finished before; as units finish:\n{HEADER}")
                for key in sorted(set(finished) - before - shown):
                    shown.add(key)
                    print(unit_line(*key, finished[key], store, sampler))
    finally:
        stop([planner, workers])  # at the budget, a signal, or an early end; nothing runs once the planner is done
        sampler.stopped.set()
    return finish(reason, planner, workers, store, planned, sampler, time.monotonic() - began, stop_signal, folder)


def finish(reason, planner, workers, store, planned, sampler, seconds, stop_signal, folder) -> int:
    """The table of every planned unit, what is left, and the exit code."""
    failed = {"planner": planner.returncode, "workers": workers.returncode}.get(reason)
    if failed == EXIT_INPUT_ERROR:  # a bad option, study, data or store: the command's one line says which
        log = folder / "logs" / f"{reason}.log"
        print(f"error: the {reason} exited {failed}:\n{tail(log)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    units = store.units() if store.open(planner.pid) else {}
    print(f"\n{HEADER}\n{'-' * len(HEADER)}")
    for seed, step in planned:
        run = units.get((seed, step))
        if run is not None and run.info.status == "FINISHED":
            print(unit_line(seed, step, run, store, sampler))
        else:
            print(f"{f'{step} seed {seed}':<34}{'not finished':>42}"
                  + (f"  (last run {run.info.status})" if run is not None else ""))
    done = sum(1 for key in planned if key in units and units[key].info.status == "FINISHED")
    print(f"{done} of {len(planned)} units finished, {seconds:.0f} s")
    if reason == "planner":
        if planner.returncode == 0:
            return 0
        print(f"error: the planner exited {planner.returncode}:\n{tail(folder / 'logs' / 'planner.log')}", file=sys.stderr)
        return planner.returncode if planner.returncode in (EXIT_FAILED, EXIT_INPUT_ERROR) else EXIT_FAILED
    if reason == "workers":
        print(f"error: the workers exited {workers.returncode} before the work was done:\n"
              f"{tail(folder / 'logs' / 'workers.log')}", file=sys.stderr)
        return workers.returncode if workers.returncode in (EXIT_FAILED, EXIT_INPUT_ERROR) else EXIT_FAILED
    if done == len(planned):
        return 0
    how = "the budget ran out" if reason == "budget" else "stopped"
    print(f"{how}: {len(planned) - done} unit(s) left, back in the queue; run the same command again to go on")
    if reason == "signal":
        return 128 + stop_signal[0]
    return EXIT_BUDGET


if __name__ == "__main__":
    sys.exit(main())
