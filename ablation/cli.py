"""What every command shares on the command line: the common arguments and the exit codes.

Light on purpose: a command parses its arguments (and answers --help) before it imports the
heavy engines (MLflow, Optuna, Keras).
"""

import argparse

DEFAULT_STUDY = "studies/assignment.toml"
EXIT_INPUT_ERROR = 2  # a bad study file, option, data source or store: one line on stderr, nothing written
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, the shell's convention


def add_common_arguments(parser: argparse.ArgumentParser):
    """--study, --profile, --data, --seed: shared by the ladder and the search."""
    parser.add_argument("--study", default=DEFAULT_STUDY, help=f"study file (default: {DEFAULT_STUDY})")
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"),
                        help="smoke: seconds (tests); quick: a reduced real run for a CPU (default); "
                             "full: the recipe exactly (for a GPU)")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10: the cifar-10-python.tar.gz archive, its extracted folder, or an image "
                             "folder tree (default: $ABLATION_DATA, else Keras' download)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the data split and training (default: the study's)")
