"""Move a study's stores to servers: copy every MLflow run and every Optuna study from one pair of stores to another.

    python -m ablation.migrate --to-tracking http://TRACKING-HOST:5000 --to-storage postgresql://USER@DB-HOST/optuna

copies, from the embedded stores (`mlruns/mlflow.db` and `mlruns/optuna.journal`, or MLFLOW_TRACKING_URI and
the journal beside it; `--from-tracking` / `--from-storage` name others), every run (tags, params,
metric histories, artifacts, status and times; parent links and `ablation.reused_from` remapped to the
copies, the original id kept as `ablation.migrated_from`) and every Optuna study (`optuna.copy_study`).
Running it again copies only what is not there yet. A user who started on a laptop goes on on a
cluster: the ladder reuses the copied finished runs by their work key, the search resumes its study.

Not remapped: a trial's `mlflow_run_id` user attribute (Optuna keeps finished trials read-only); the
copy of that run carries the trial's id as its `ablation.migrated_from`.
"""

import argparse
import sys
from pathlib import Path

from ablation.cli import ArgumentParser, ended_by, run_and_exit
from ablation.core.config import StoreError, StudyError


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.migrate",
        description="Copy every MLflow run and Optuna study of one pair of stores into another (e.g. to servers).",
    )
    parser.add_argument("--to-tracking", required=True,
                        help="the MLflow store to copy the runs into: a tracking server (http://host:5000) or a "
                             "database URL (postgresql://..., sqlite:///path/mlflow.db)")
    parser.add_argument("--to-storage", default=None,
                        help="the Optuna storage to copy the studies into (postgresql://...); without it, no study "
                             "is copied")
    parser.add_argument("--from-tracking", default=None,
                        help="the MLflow store to copy from (default: $MLFLOW_TRACKING_URI, else mlruns/mlflow.db)")
    parser.add_argument("--from-storage", default=None,
                        help="the Optuna storage to copy from (default: optuna.journal beside the source store)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        from ablation import tracking  # MLflow and Optuna: after --help

        source_uri = args.from_tracking or tracking.tracking_uri()
        if source_uri.startswith("sqlite:///") and not Path(source_uri[len("sqlite:///"):]).is_file():
            raise StudyError(f"--from-tracking {source_uri}: no such store (nothing to copy)")
        if source_uri == args.to_tracking:
            raise StudyError(f"--to-tracking {args.to_tracking} is the store copied from")
        copied, skipped = tracking.copy_store(source_uri, args.to_tracking)
        print(f"MLflow: {copied} run(s) copied from {source_uri} to {args.to_tracking}, {skipped} copied before")
        if args.to_storage is not None:
            copy_studies(tracking, args.from_storage, args.to_storage, source_uri)
    except (StudyError, StoreError) as error:
        return ended_by(error)
    return 0


def copy_studies(tracking, from_storage, to_storage, source_uri: str):
    """The Optuna part: every study of the source storage (by default the journal beside the source store)."""
    if from_storage is None:
        from_storage = str(tracking.journal_beside(source_uri))
        if not Path(from_storage).is_file():
            print(f"Optuna: no journal at {from_storage}; no study to copy")
            return
    source, _, source_where = tracking.open_storage(from_storage)
    target, _, target_where = tracking.open_storage(to_storage)
    copied, present = tracking.copy_studies(source, target)
    print(f"Optuna: {len(copied)} study(ies) copied from {source_where} to {target_where}"
          + (f"; already there, not copied again: {present}" if present else ""))


if __name__ == "__main__":
    run_and_exit(main)
