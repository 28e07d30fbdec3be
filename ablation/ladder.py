"""Replay a study's improvement ladder: every step (and baseline) a nested MLflow run.

    python -m ablation.ladder                       # the assignment study, quick profile
    python -m ablation.ladder --profile smoke       # seconds, for a first look
    python -m ablation.ladder --study studies/architectures.toml --profile full --data PATH
"""

import argparse
import sys
import time

from ablation.cli import EXIT_INPUT_ERROR, EXIT_SIGINT, add_common_arguments
from ablation.config import StudyError, get_profile, load_study
from ablation.data import DataError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ablation.ladder",
        description="Replay a study's improvement ladder on CIFAR-10; each step is a nested MLflow run.",
    )
    add_common_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="train every step again, even one already finished with the same config and data")
    parser.add_argument("--steps", default=None,
                        help="comma-separated step names to run (default: every step and baseline)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return parser.parse_args(argv)


def format_table(rows: list[dict]) -> str:
    """The ladder as a text table: accuracy, change from the previous step, the source's number, cost."""
    header = (f"{'step':<24}{'test acc':>9}{'change':>9}{'source':>9}{'epochs':>9}{'time':>9}"
              f"{'params':>11}{'MFLOPs':>9}{'s/epoch':>9}")
    lines = [header, "-" * len(header)]
    previous = None
    for row in rows:
        accuracy = row["test_accuracy"]
        change = "" if previous is None or row["baseline"] else f"{100 * (accuracy - previous):+.1f}"
        reported = "" if row["reported_test_accuracy"] is None else f"{100 * row['reported_test_accuracy']:.1f}%"
        epochs = f"{row['epochs_run']}/{row['epochs']}"
        seconds = f"{row['train_seconds']:.0f} s" + ("*" if row["reused"] else "")
        name = row["step"] + (" (baseline)" if row["baseline"] else "")
        lines.append(f"{name:<24}{100 * accuracy:>8.1f}%{change:>9}{reported:>9}{epochs:>9}{seconds:>9}"
                     f"{row['num_params']:>11,}{row['flops'] / 1e6:>9.0f}{row['seconds_per_epoch']:>9.1f}")
        if not row["baseline"]:
            previous = accuracy
    if any(r["reused"] for r in rows):
        lines.append("* reused from an earlier finished run with the same config and data")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once, in a log file too
    started = time.perf_counter()
    try:
        # Phase 1: every input is checked before the store is touched.
        study = load_study(args.study)
        profile = get_profile(args.profile)
        only = [name.strip() for name in args.steps.split(",")] if args.steps else None
        from ablation import report, runner  # the engines (MLflow; Keras when a step trains): after --help

        runner.resolve_steps(study, profile, args.seed, only)  # a misspelled step fails before anything runs
        # Phase 2: the steps.
        rows = runner.run_ladder(study, profile, args.data, args.seed, args.force, only)
    except (StudyError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: finished steps are kept; the interrupted one is marked KILLED", file=sys.stderr)
        return EXIT_SIGINT
    print(f"\n{study.title} ({profile.name} profile, {time.perf_counter() - started:.0f} s)\n")
    print(format_table(rows))
    # Phase 3: the report.
    if not args.no_report:
        try:
            print(f"\nreport: {report.write_report(args.study, data=args.data)}")
        except report.ReportError as error:
            print(f"no report: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
