"""Join the shared work queue from any machine: take units (ladder steps and seeds, search trials), train, record.

    python -m ablation.worker --storage postgresql://USER@DB-HOST/optuna --data PATH

with MLFLOW_TRACKING_URI set to the tracking server (http://TRACKING-HOST:5000) or the database.
The planners (`python -m ablation.ladder --workers`, `python -m ablation.search --workers`) queue the
work; every worker on the same stores takes units until none is waiting or running, then waits
`--idle` seconds for new work before it exits. A worker needs the code (the same version), the data
(checked against the planner's fingerprint) and the two store URLs; nothing else from the planner's
machine. See ablation/workqueue.py for how the queue works and README "Running on several machines".
"""

import argparse
import sys

from ablation import interrupt
from ablation.cli import EXIT_INPUT_ERROR, ArgumentParser, describe_stop, exit_code_of, one_line
from ablation.config import StoreError, StudyError
from ablation.data import DataError

DEFAULT_IDLE_SECONDS = 60.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.worker",
        description="Take units of the shared work queue (ladder steps, seeds, search trials), train and record them.",
    )
    parser.add_argument("--storage", default=None,
                        help="the planners' Optuna storage: a URL (postgresql://user@host/db) or a journal file "
                             "(default: optuna.journal beside the MLflow store, one machine only)")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10 on this machine: the archive, its folder or an image tree (default: "
                             "$ABLATION_DATA); it must give the planner's splits")
    parser.add_argument("--queue", action="append", default=None,
                        help="work on this queue (an Optuna study name) only; repeatable (default: every queue)")
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_SECONDS,
                        help=f"seconds to wait for new work once none is left before exiting (default {DEFAULT_IDLE_SECONDS:g})")
    args = parser.parse_args(argv)
    if args.idle < 0:
        parser.error("--idle must be at least 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once, in a log file too
    with interrupt.stop_on_signals():  # from here on a signal is a request, honoured where it is safe
        try:
            from ablation import tracking, workqueue  # the engines: after --help
            from ablation.data import LazySplits

            tracking.check_store()
            storage, kind, where = tracking.open_storage(args.storage)
            data = LazySplits(args.data)
            print(f"worker {tracking.worker_id()}: queue {where} ({kind}), tracking {tracking.tracking_uri()}")
            ran = workqueue.work(storage, data, print, names=args.queue, idle_seconds=args.idle)
        except (StudyError, DataError, StoreError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        except KeyboardInterrupt as stop:
            print(f"\n{describe_stop(stop)}: the unit in hand went back to the queue (its run is marked KILLED)",
                  file=sys.stderr)
            return exit_code_of(stop)
    print(f"no work left: this worker ran {ran} unit(s)")
    return 0  # a unit that failed is recorded (its run says why); its planner reports it


if __name__ == "__main__":
    sys.exit(main())
