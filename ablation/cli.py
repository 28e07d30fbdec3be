"""What every command shares on the command line: the common arguments and the exit codes.

Light on purpose: a command parses its arguments (and answers --help) before it imports the
heavy engines (MLflow, Optuna, Keras).
"""

import argparse
import os

DEFAULT_STUDY = "studies/assignment.toml"
EXIT_INPUT_ERROR = 2  # a bad study file, option, data source or store: one line on stderr, nothing written
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, the shell's convention


def add_common_arguments(parser: argparse.ArgumentParser):
    """--study, --profile, --data, --seed, --set, --verbose, --no-system-metrics: shared by the ladder and the search."""
    parser.add_argument("--study", default=DEFAULT_STUDY,
                        help=f"study file, or a shipped study's name (assignment, architectures, keras_resnet; "
                             f"default: {DEFAULT_STUDY})")
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"),
                        help="smoke: seconds (tests); quick: a reduced real run for a CPU (default); "
                             "full: the recipe exactly (for a GPU)")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10: the cifar-10-python.tar.gz archive, its extracted folder, or an image "
                             "folder tree (default: $ABLATION_DATA, else Keras' download)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the data split and training (default: the study's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a config field or model knob in every step, checked as in a study file "
                             "(repeatable; VALUE as in TOML: --set epochs=3 --set learning_rate=5e-4 "
                             "--set horizontal_flip=false); recorded in the runs")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and MLflow's start-up messages (hidden by default)")
    parser.add_argument("--no-system-metrics", action="store_true",
                        help="do not sample CPU, memory and GPU use into each training run")


def configure(args: argparse.Namespace):
    """The process-wide choices of the common arguments, made before the engines are imported."""
    from ablation import console  # the terminal's side (rich): after --help

    console.configure(args.verbose)
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false" if args.no_system_metrics else "true"
