"""What every command shares on the command line: the common arguments and the exit codes.

Light on purpose: a command parses its arguments (and answers --help) before it imports the
heavy engines (MLflow, Optuna, Keras).
"""

import argparse
import gc
import math
import os
import re
import signal
import sys

from ablation.core.config import SEED
from ablation.core.profiles import PROFILES
from ablation.core.study import MAX_SEEDS, SHIPPED_STUDIES, STUDY_NAME

SHIPPED_NAMES = sorted(path.stem for path in SHIPPED_STUDIES.glob("*.toml"))
DEFAULT_STUDY = "assignment"  # a shipped study, found by name from any folder (study.find_study)
EXIT_FAILED = 1  # the command ran, but a unit of its work failed (its run says why)
EXIT_INPUT_ERROR = 2  # a bad study file, option, data source or store: one line on stderr, nothing written
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, the shell's convention


# Python collects its youngest objects every 700 allocations by default (and the older ones every 10th and 100th
# time); a command that imports TensorFlow, Keras and MLflow allocates millions of objects that live until it ends,
# and those collections walk them again and again. Every 10,000 allocations costs at most 10,000 objects of
# garbage in cycles waiting a little longer.
YOUNG_OBJECTS_PER_COLLECTION = 10_000


def run_and_exit(main):
    """Run a command's main() in this process and exit with the code it returns, its garbage collector set for it.

    Its collections come every YOUNG_OBJECTS_PER_COLLECTION allocations. At the end, Python's shutdown would walk
    every object once more looking for garbage: one collection frees what is garbage already (finalizers run, as
    at a normal exit), then gc.freeze() hides what is still alive from the shutdown's collections. Objects are
    still released, atexit handlers (MLflow's included) still run and threads are still waited for. Both together
    save about 3 CPU-seconds a command on a 2-core CPU (docs/results.md).
    """
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION)
    code = main()
    gc.collect()
    gc.freeze()
    sys.exit(code)


def exit_code_of(stop: KeyboardInterrupt) -> int:
    """143 for a stop asked by SIGTERM, 130 for Ctrl-C (SIGINT)."""
    return EXIT_SIGTERM if getattr(stop, "signum", signal.SIGINT) == signal.SIGTERM else EXIT_SIGINT


def describe_stop(stop: KeyboardInterrupt) -> str:
    return f"interrupted by {signal.Signals(getattr(stop, 'signum', signal.SIGINT)).name}"


def ended_by(error: BaseException, kept: str = "") -> int:
    """How a command ends on an input error (its one line on stderr) or on a stop asked for by a signal (`kept`:
    what is kept, and how to go on): the exit code, EXIT_INPUT_ERROR or 130/143."""
    if isinstance(error, KeyboardInterrupt):
        print(f"\n{describe_stop(error)}: {kept}", file=sys.stderr)
        return exit_code_of(error)
    print(f"error: {one_line(error)}", file=sys.stderr)
    return EXIT_INPUT_ERROR


LINE_BREAKS = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines() breaks on


def one_line(text: str) -> str:
    """An error message as one line: line breaks that came with a user's value are shown escaped."""
    return LINE_BREAKS.sub(lambda match: repr(match.group())[1:-1], str(text))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the option, what is allowed) and exit with EXIT_INPUT_ERROR."""

    def error(self, message):
        self.exit(EXIT_INPUT_ERROR, f"error: {self.prog}: {one_line(message)} (see --help)\n")


def seed_value(text: str) -> int:
    """--seed: an integer numpy accepts as a seed."""
    value = _integer(text)
    if not SEED.accepts(value):
        raise argparse.ArgumentTypeError(f"must be {SEED.what}, got {text!r}")
    return value


def seed_count(text: str) -> int:
    """--seeds: how many training seeds."""
    value = _integer(text)
    if not 1 <= value <= MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"must be a count of seeds from 1 to {MAX_SEEDS}, got {text!r}")
    return value


def positive_count(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A duration in seconds: finite, above 0."""
    return _seconds(text, "> 0", lambda value: value > 0)


def idle_seconds(text: str) -> float:
    """A wait in seconds that may be 0: finite, not negative."""
    return _seconds(text, ">= 0", lambda value: value >= 0)


def _seconds(text: str, bound: str, accepts) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and accepts(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds {bound}, got {text!r}")
    return value


def plain_name(text: str) -> str:
    """A name that becomes a file name (an Optuna study's): a plain identifier, so it stays in its folder."""
    if not STUDY_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be letters, digits, _ and -, starting with a letter (at most 64 "
                                         f"characters), got {text!r}")
    return text


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def add_common_arguments(parser: argparse.ArgumentParser):
    """--study, --profile, --data, --seed, --set, --verbose, --no-system-metrics: shared by every command that trains."""
    parser.add_argument("--study", default=DEFAULT_STUDY,
                        help=f"study file, or a shipped study's name ({', '.join(SHIPPED_NAMES)}; "
                             f"default: {DEFAULT_STUDY})")
    parser.add_argument("--profile", default="quick", choices=tuple(PROFILES),
                        help="smoke: seconds (tests); quick: a reduced real run for a CPU (default); "
                             "miniature: the recipe's epochs on 1,250 images; full: the recipe exactly (for a GPU)")
    parser.add_argument("--data", default=None,
                        help="where the config's data (default cifar10) is: its archive or folder in the keras.datasets "
                             "layout, or an image-folder tree (default: $ABLATION_DATA, else Keras' download)")
    parser.add_argument("--seed", type=seed_value, default=None,
                        help="one training seed (default: the study's seeds); the split seed stays the config's")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a config field or model knob in every step, checked as in a study file "
                             "(repeatable; VALUE as in TOML: --set epochs=3 --set learning_rate=5e-4 "
                             "--set horizontal_flip=false); recorded in the runs")
    add_output_arguments(parser)


def add_replicate_arguments(parser: argparse.ArgumentParser, each: str):
    """--seeds N and --deterministic: how many training seeds every `each` (a step, a subset) is trained with."""
    parser.add_argument("--seeds", type=seed_count, default=None,
                        help=f"train every {each} with the training seeds 0..N-1, paired across them (default: the "
                             "study's [study] seeds, else 1); finished replicates are reused")
    parser.add_argument("--deterministic", action="store_true",
                        help="TensorFlow's op determinism: the same seed repeats bit for bit, at a cost in speed "
                             "(a finished run is reused only by a command with the same flag)")


def check_replicates(parser: argparse.ArgumentParser, args: argparse.Namespace):
    if args.seeds is not None and args.seed is not None:
        parser.error("give --seed (one seed) or --seeds (a count), not both")


def add_output_arguments(parser: argparse.ArgumentParser):
    """--verbose, --no-system-metrics: every command that trains (the worker too)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and MLflow's start-up messages (hidden by default)")
    parser.add_argument("--no-system-metrics", action="store_true",
                        help="do not sample CPU, memory and GPU use into each training run")


def configure(args: argparse.Namespace):
    """The process-wide choices of the common arguments, made before the engines are imported."""
    from ablation.core import console  # the terminal's side (rich): after --help

    console.configure(args.verbose)
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false" if args.no_system_metrics else "true"


STORAGES = ("a URL (postgresql://user@host/db, sqlite:///search.db) or a journal file (default: optuna.journal "
            "beside the MLflow store; a journal serves the processes of one machine only)")


def add_storage_argument(parser: argparse.ArgumentParser, whose: str):
    """--storage: an Optuna storage; `whose` says what it holds (the search's study, the shared queue)."""
    parser.add_argument("--storage", default=None, help=f"{whose}: {STORAGES}")


def add_workers_argument(parser: argparse.ArgumentParser, work: str):
    """--workers: a planner that puts its `work` in the shared queue and works on it beside the workers."""
    parser.add_argument("--workers", action="store_true",
                        help=f"put {work} in the shared work queue at --storage and work on them with every "
                             "`python -m ablation.worker` on the same stores; ends when all are done")


def add_plan_only_argument(parser: argparse.ArgumentParser):
    """--plan-only: a planner that queues its work for the workers and trains none of it itself."""
    parser.add_argument("--plan-only", action="store_true",
                        help="with --workers: queue the work and wait for `python -m ablation.worker` processes to do "
                             "it, training none here (a login node); the summary comes when it is done")


def check_plan_only(parser: argparse.ArgumentParser, args: argparse.Namespace):
    if args.plan_only and not args.workers:
        parser.error("--plan-only plans for the shared queue: give it with --workers")
