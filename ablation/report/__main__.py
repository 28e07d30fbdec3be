"""The command: `python -m ablation.report`. It parses its options before importing anything heavy."""

import argparse
import sys

from ablation.cli import ArgumentParser, run_and_exit
from ablation.core.config import StoreError, StudyError
from ablation.report import DEFAULT_STUDY, ReportError, write_report


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.report",
        description="Write a comparison report (HTML, Markdown with PNGs, CSV) of a study's ladder and search "
                    "runs from MLflow; it never trains.",
    )
    parser.add_argument("--study", default=DEFAULT_STUDY,
                        help=f"study file, or a shipped study's name (default: {DEFAULT_STUDY})")
    parser.add_argument("--experiment", default=None, help="MLflow experiment to read (default: the study's name)")
    parser.add_argument("--out", default=None, help="output folder (default: reports/<study>/)")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10 as given to the ladder, to re-derive test labels for the confusion matrix "
                             "(default: $ABLATION_DATA; without it that figure is skipped with a note)")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the report to the study's latest parent run (the command logs it by default)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from ablation import tracking  # MLflow: after --help

        tracking.check_store()  # a broken store is one error line, before MLflow opens (and writes to) it
        path = write_report(args.study, experiment=args.experiment, out=args.out, log=not args.no_log,
                            data=args.data)
    except (ReportError, StoreError, StudyError) as error:  # a broken store or study: one line, exit 2
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}  (and report.md, the CSVs, the figures beside it)")
    return 0


if __name__ == "__main__":
    run_and_exit(main)
