"""Join the shared work queue from any machine: take units (ladder steps and seeds, search trials), train, record.

    python -m ablation.worker --storage postgresql://USER@DB-HOST/optuna --data PATH
    python -m ablation.worker --processes 4 ...            # 4 workers on a CPU machine
    python -m ablation.worker --gpus 0,1 --per-gpu 3 ...   # 3 workers pinned to each of GPUs 0 and 1

with MLFLOW_TRACKING_URI set to the tracking server (http://TRACKING-HOST:5000) or the database.
The planners (`python -m ablation.ladder --workers`, `python -m ablation.search --workers`) queue the
work; every worker on the same stores takes units until none is waiting or running, then waits
`--idle` seconds for new work before it exits. A worker needs the code (the same version), the data
(checked against the planner's fingerprint) and the two store URLs; nothing else from the planner's
machine. See ablation/engine/queue.py for how the queue works and docs/several-machines.md.

Many workers per machine. A small network trains on a fraction of a modern GPU, so `--gpus IDS
--per-gpu K` starts K worker processes per listed GPU, each with CUDA_VISIBLE_DEVICES set to its GPU
before TensorFlow loads and TF_FORCE_GPU_ALLOW_GROWTH=true (each takes GPU memory as it needs it, not
the whole GPU). `--processes K` starts K on a CPU machine. Each child is a plain worker; a signal
(Ctrl-C, SIGTERM) to this process is passed to every child, which puts its unit in hand back in the
queue (its run KILLED), and this process exits once all have.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from ablation.cli import (EXIT_INPUT_ERROR, ArgumentParser, add_output_arguments, add_storage_argument, configure,
                          ended_by, idle_seconds, positive_count, run_and_exit)
from ablation.core import interrupt
from ablation.core.config import StoreError, StudyError
from ablation.data import DataError

DEFAULT_IDLE_SECONDS = 60.0
GPU_LINE = re.compile(r"GPU (\d+):")  # `nvidia-smi -L`: "GPU 0: NVIDIA H200 (UUID: GPU-...)"


def gpu_ids(text: str) -> tuple[str, ...]:
    """--gpus: GPU numbers as nvidia-smi lists them, comma-separated, each once."""
    ids = tuple(part.strip() for part in text.split(","))
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"must be GPU numbers separated by commas, each once (0,1), got {text!r}")
    return ids


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.worker",
        description="Take units of the shared work queue (ladder steps, seeds, search trials), train and record them.",
    )
    add_storage_argument(parser, "the planners' Optuna storage (the shared queue)")
    parser.add_argument("--data", default=None,
                        help="the data on this machine, as the planner's --data (default: $ABLATION_DATA); it must "
                             "give the planner's splits, digest for digest")
    parser.add_argument("--queue", action="append", default=None,
                        help="work on this queue (an Optuna study name) only; repeatable (default: every queue)")
    parser.add_argument("--idle", type=idle_seconds, default=DEFAULT_IDLE_SECONDS,
                        help=f"seconds to wait for new work once none is left before exiting (default {DEFAULT_IDLE_SECONDS:g})")
    parser.add_argument("--processes", type=positive_count, default=None,
                        help="start this many worker processes on this machine (a CPU machine; default: this one)")
    parser.add_argument("--gpus", type=gpu_ids, default=None,
                        help="GPU numbers (as nvidia-smi -L lists them), comma-separated: start --per-gpu workers "
                             "pinned to each")
    parser.add_argument("--per-gpu", type=positive_count, default=None,
                        help="with --gpus: workers per GPU (default 1), sharing its memory as each needs it")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.per_gpu is not None and args.gpus is None:
        parser.error("--per-gpu goes with --gpus (the GPUs to pin the workers to)")
    if args.processes is not None and args.gpus is not None:
        parser.error("give --processes (workers on the CPU) or --gpus with --per-gpu (workers pinned to GPUs), not both")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once, in a log file too
    configure(args)
    if args.gpus is not None:
        missing, found = missing_gpus(args.gpus)
        if missing:
            print(f"error: --gpus {','.join(missing)}: no such GPU here (nvidia-smi -L lists "
                  f"{','.join(found) or 'none'}); on a machine without GPUs use --processes K", file=sys.stderr)
            return EXIT_INPUT_ERROR
        slots = [{"CUDA_VISIBLE_DEVICES": gpu, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
                 for gpu in args.gpus for _ in range(args.per_gpu or 1)]
        return run_children(args, slots)
    if args.processes is not None and args.processes > 1:
        return run_children(args, [{}] * args.processes)
    return run_worker(args)


def run_worker(args) -> int:
    """Work in this process until no work is left; the exit code."""
    with interrupt.stop_on_signals():  # from here on a signal is a request, honoured where it is safe
        try:
            from ablation import tracking  # the engines: after --help
            from ablation.data import LazySplits
            from ablation.engine import queue

            tracking.check_store()
            storage, kind, where = tracking.open_storage(args.storage)
            data = LazySplits(args.data)
            gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
            print(f"worker {tracking.worker_id()}: queue {where} ({kind}), tracking {tracking.tracking_uri()}"
                  + (f", GPU {gpu}" if gpu is not None else ""))
            ran = queue.work(storage, data, print, names=args.queue, idle_seconds=args.idle)
        except (StudyError, DataError, StoreError, KeyboardInterrupt) as error:
            return ended_by(error, "the unit in hand went back to the queue (its run is marked KILLED)")
    print(f"no work left: this worker ran {ran} unit(s)")
    return 0  # a unit that failed is recorded (its run says why); its planner reports it


def missing_gpus(wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the wanted GPUs this machine lacks, those it has): `nvidia-smi -L`, within $CUDA_VISIBLE_DEVICES if set."""
    found = []
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
        found = [match.group(1) for match in map(GPU_LINE.match, listed.splitlines()) if match]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        found = [gpu for gpu in found if gpu in visible.split(",")]
    return [gpu for gpu in wanted if gpu not in found], found


def child_arguments(args) -> list[str]:
    """A child worker's command line: this one's, less what starts children."""
    chosen = ["--idle", repr(args.idle)] + [f"--queue={name}" for name in args.queue or ()]
    chosen += [f"--{name}={value}" for name, value in (("storage", args.storage), ("data", args.data)) if value]
    return chosen + ["--verbose"] * args.verbose + ["--no-system-metrics"] * args.no_system_metrics


def run_children(args, slots: list[dict]) -> int:
    """One worker process per slot (its extra environment); a stop asked of this process is passed to each."""
    command = [sys.executable, "-m", "ablation.worker", *child_arguments(args)]
    print(f"starting {len(slots)} worker processes"
          + (f" on GPU(s) {','.join(args.gpus)}, {args.per_gpu or 1} per GPU" if args.gpus else ""))
    with interrupt.stop_on_signals():
        # Their own session: a terminal's Ctrl-C reaches this process only, which passes it on once.
        children = [subprocess.Popen(command, env={**os.environ, **slot}, start_new_session=True) for slot in slots]
        try:
            while any(child.poll() is None for child in children):
                interrupt.check()
                time.sleep(0.2)
        except KeyboardInterrupt as stop:
            stop_children(children, getattr(stop, "signum", signal.SIGINT))
            return ended_by(stop, "every worker put its unit in hand back in the queue")
    failed = [child.returncode for child in children if child.returncode != 0]
    return failed[0] if failed else 0


def stop_children(children: list, signum: int):
    """Pass the signal to every running child and wait for all; Ctrl-C again is passed on again (at once)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)
    while True:
        try:
            for child in children:
                child.wait()
            return
        except KeyboardInterrupt:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)


if __name__ == "__main__":
    run_and_exit(main)
