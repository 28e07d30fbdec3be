"""Order-free credit for a ladder's changes: leave-one-out, add-one-in or Shapley values over its components.

    python -m ablation.attribute --design leave-one-out --seeds 2     # the final config without each change
    python -m ablation.attribute --design add-one-in                  # the first step with each change alone
    python -m ablation.attribute --design shapley --budget 32         # every subset, or sampled orders within 32
    python -m ablation.attribute --design leave-one-out --from-search # which knobs of the search's best trial mattered

Every run is identified by its work (config hash and data digest), so the ladder's first and last steps,
and any subset another design or invocation trained, are reused, never trained again.
"""

import argparse
import dataclasses
import functools
import os
import sys
import time

from ablation.cli import (EXIT_FAILED, ArgumentParser, add_common_arguments, add_replicate_arguments,
                          add_storage_argument, add_workers_argument, check_replicates, configure, ended_by,
                          positive_count, run_and_exit)
from ablation.core import interrupt
from ablation.core.config import StoreError, StudyError
from ablation.core.profiles import get_profile
from ablation.core.study import apply_overrides, load_study, parse_overrides
from ablation.data import DataError

DESIGNS = ("leave-one-out", "add-one-in", "shapley")  # the engine's, kept here so --help imports no engine
DEFAULT_BUDGET = 32
DEFAULT_REPORTS = "reports"


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.attribute",
        description="Credit each of a ladder's changes without the ladder's order: leave-one-out, add-one-in or "
                    "Shapley values over training seeds, every subset a nested MLflow run (finished ones reused).",
    )
    add_common_arguments(parser)
    parser.add_argument("--design", required=True, choices=DESIGNS,
                        help="leave-one-out: the last step without each component, and the last step; add-one-in: "
                             "the first step with each component alone, and the first step; shapley: every subset "
                             "(exact) when 2^k fits in --budget, else antithetic random orders within it")
    parser.add_argument("--budget", type=positive_count, default=DEFAULT_BUDGET,
                        help=f"most subsets (each trained once per seed) the shapley design may use (default "
                             f"{DEFAULT_BUDGET}: exact up to 5 components)")
    add_replicate_arguments(parser, "subset")
    parser.add_argument("--force", action="store_true", help="train every subset again, even finished ones")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the components, conflicts and what would train, then stop")
    parser.add_argument("--reports", default=DEFAULT_REPORTS,
                        help=f"folder for <study>/attribution-<design>.csv, .md, .png (default {DEFAULT_REPORTS})")
    parser.add_argument("--from-search", action="store_true",
                        help="attribute the search's best trial against its base step, one component per knob it "
                             "changed, beside Optuna's parameter importances")
    add_workers_argument(parser, "the subsets' units")
    add_storage_argument(parser, "with --from-search: the search's Optuna storage; with --workers: the queue's")
    parser.add_argument("--study-name", default=None,
                        help="with --from-search: the Optuna study (default <study>-<profile>)")
    args = parser.parse_args(argv)
    check_replicates(parser, args)
    if args.study_name and not args.from_search:
        parser.error("--study-name goes with --from-search")
    if args.storage and not (args.from_search or args.workers):
        parser.error("--storage goes with --from-search or --workers")
    return args


def prepare(args) -> tuple:
    """Phase 1: the study (--set and the seeds put in) and the profile; inputs are checked in the engine too."""
    study = apply_overrides(load_study(args.study), parse_overrides(args.set))
    seeds = (args.seed,) if args.seed is not None else tuple(range(args.seeds)) if args.seeds else study.seeds
    return dataclasses.replace(study, seeds=seeds), get_profile(args.profile)


def attribute(args, study, profile) -> dict | None:
    """Phase 2: the store checked, the design run (every finished run reused); its result, None on a dry run."""
    from ablation import tracking
    from ablation.core.console import Display
    from ablation.engine import designs, queue, units
    from ablation.report import attribution_tables

    tracking.check_store()
    search = {"storage": args.storage, "optuna_name": args.study_name} if args.from_search else None
    run_units = functools.partial(queue.run_units_shared, storage=args.storage) if args.workers \
        else units.run_units
    with Display() as display:
        return designs.run_design(study, profile, args.design, seeds=study.seeds, budget=args.budget,
                                  data_path=args.data, force=args.force, deterministic=args.deterministic,
                                  search=search, reports=args.reports, dry_run=args.dry_run,
                                  say=display, run_units=run_units, write_files=attribution_tables.write_outputs)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once, in a log file too
    configure(args)
    started, cpu_started = time.perf_counter(), os.times()
    with interrupt.stop_on_signals():  # from here on a signal is a request, honoured where it is safe
        try:
            study, profile = prepare(args)
            from ablation.engine import queue  # the queue (MLflow), for its error below
            from ablation.report import attribution_tables  # the table

            result = attribute(args, study, profile)
        except (StudyError, DataError, StoreError, KeyboardInterrupt) as error:
            return ended_by(error, "finished subsets are kept (a re-run reuses them); the running one is marked "
                                   "KILLED with its checkpoint kept, and a re-run resumes it")
        except queue.WorkError as error:  # last: the name exists once the engines are imported
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
    if result is None:
        return 0
    # Phase 3: the table.
    ended = os.times()
    cpu = ended.user + ended.system - cpu_started.user - cpu_started.system
    print(f"\n{study.title}: {args.design} ({profile.name} profile), {time.perf_counter() - started:.0f} s wall, "
          f"{cpu:.0f} CPU-s\n")
    print(attribution_tables.format_table(result))
    print("\nwritten: " + ", ".join(result["files"]))
    for failed in result["failed"]:  # its subsets count as missing in the table above
        print(f"FAILED: base + {failed['components']} seed {failed['seed']}: {failed['error']}", file=sys.stderr)
    return EXIT_FAILED if result["failed"] else 0


if __name__ == "__main__":
    run_and_exit(main)
