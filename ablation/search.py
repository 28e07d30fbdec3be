"""Optuna search over a study's `[search]` space; every trial is a nested MLflow run under one parent.

    python -m ablation.search --profile smoke --trials 6       # seconds per trial: a first look
    python -m ablation.search --trials 20                      # the quick profile (default)
    python -m ablation.search --storage sqlite:///search.db    # any Optuna storage URL, or a journal file

A trial is the search's base step (`[search] base_step`, by default the ladder's last step) with the
sampled values put in: the model's knobs (stage depths, dropout_rate) into `model_args`, every other
name into the Config field of that name. The profile is applied last, as for the ladder's steps, so a
search space is written at the recipe's scale like the rest of the study file. The objective is the
best epoch's `[search] monitor` (val_accuracy by default: the validation set; the test set never
chooses), and the same metric, per epoch, feeds the pruner. The monitor is checked against the metrics
training reports before anything trains: Optuna's Keras callback only warns on a missing metric,
which silently disables pruning.

Storage. By default an Optuna journal file, `optuna.journal` beside the MLflow store (./mlruns/, or
the folder of a sqlite:/// MLFLOW_TRACKING_URI); the Optuna study is named `<study>-<profile>`
(`-seed<N>` added with --seed), so running the same command again resumes it. Why a journal file and
not SQLite, tested here (2 shared cores, Optuna 5.0, 2-4 processes running the same script): in 1 of
22 fresh starts on a new SQLite file, 3 of the 4 processes crashed creating the schema (alembic_version
UNIQUE / "table already exists"); on an existing file no write failed, but 4 x 40 no-op trials took 36 s
(54 s with heartbeats) against 4-7 s on a journal file, which never failed, fresh or not. Optuna's FAQ
says the same: SQLite is not for parallel workers, JournalFileBackend is, on one machine. (The MLflow
SQLite store has that creation race every time: `tracking.connect` serializes it.) `--storage`
also takes any Optuna URL (sqlite:///..., postgresql://..., mysql://...: RDB storages, for several
machines) or a path ending in .journal or .log. optuna-dashboard opens both:
`optuna-dashboard mlruns/optuna.journal`.

Workers. Several processes may run the same command on one storage at once: they share the study.
`--trials N` is what THIS invocation adds, so a second invocation (or a second worker) adds N more
trials to the same study rather than starting over; k workers with --trials N add k*N. The TPE
sampler is seeded per trial from (seed, trial number): a fresh single-worker search repeats its
random draws, while resumed invocations and concurrent workers, whose trial numbers differ, never
replay each other's draws (one TPESampler(seed=s) per process would make two workers, or a resumed
run, sample the same configurations again).

Pruner: MedianPruner by default, after 3 complete trials and a warm-up of a third of the epochs. With
the tens of trials a CPU affords, Hyperband splits them over its brackets (3 for 15 epochs at eta=3)
and each rung compares only a handful; the median pruner compares every trial with all complete ones
at the same epoch from the 4th trial on, and its decision reads plainly in a report ("below the
median at epoch e"). `--pruner hyperband` (min 1 epoch, eta 3) is there for larger budgets; `none`
turns pruning off.

Stale trials. Each trial records its worker (`host:pid`, trial user attr `worker`). At start, RUNNING
trials whose worker on this host is dead are marked FAIL and a copy queued with the same params and
user attrs (at most twice), as the queue's workers do. Journal storage has no heartbeat, so this sweep is its only guard; RDB
storages also get Optuna's heartbeat (60 s, stale after 180 s; $ABLATION_HEARTBEAT, $ABLATION_GRACE) with
RetryHeartbeatStaleTrialCallback (two retries), which also covers workers on other machines.

Shared queue. With --workers the invocation queues its --trials trials in the study (WAITING trials
whose params TPE samples when a worker runs them) and works on them beside every `python -m
ablation.worker` on the same stores (with --plan-only it only waits for them), then records the
outcome as above (ablation/engine/queue.py). It is the same search: the queue carries it resolved (the
base config with --set and --seed in, the space, the profile, the pruner), so a worker trains what a
local search would; --timeout stops trials from starting after that many seconds wherever they run.

MLflow: one parent run per invocation (`ablation.kind` = search, with the Optuna study and storage),
one nested run per trial named `trial-0007`: the whole resolved config as params, per-epoch metrics,
final metrics and artifacts as the ladder logs them, tags `ablation.optuna_study`,
`ablation.optuna_trial`, and `ablation.trial_state` = complete | pruned | failed. A pruned trial's run
ends FINISHED (pruning is a normal outcome and its epochs are valid metrics; KILLED stays meaning an
interrupted or dead process) with `ablation.pruned_at_epoch`; a failed one ends FAILED with
`ablation.error`, and the search goes on.

At the end: a table of the top trials, and the best trial as a ready-to-run study step (a
`[[steps]] name = "search_best"` TOML snippet with the searched values over `from_step` = the base
step), printed, logged as the parent run's `best_step.toml` and written to
`reports/<study>/best_step-<optuna study>.toml`.
"""



import argparse
import functools
import time

from ablation.cli import (ArgumentParser, add_common_arguments, add_plan_only_argument, add_storage_argument,
                          add_workers_argument, check_plan_only, configure, ended_by, plain_name, positive_count,
                          positive_seconds, run_and_exit)
from ablation.core import interrupt
from ablation.core.config import StoreError, StudyError
from ablation.core.profiles import get_profile
from ablation.core.study import apply_overrides, load_study, parse_overrides
from ablation.data import DataError

DEFAULT_TRIALS = 10
DEFAULT_REPORTS = "reports"


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.search",
        description="Optuna search over a study's [search] space on CIFAR-10; each trial is a nested MLflow run.",
    )
    add_common_arguments(parser)
    parser.add_argument("--trials", type=positive_count, default=DEFAULT_TRIALS,
                        help=f"trials this invocation adds to the study (default {DEFAULT_TRIALS}); "
                             "each worker on the same storage adds its own")
    add_storage_argument(parser, "the Optuna storage of the search's study (with --workers, the queue's too)")
    parser.add_argument("--study-name", type=plain_name, default=None,
                        help="Optuna study name (default: <study>-<profile>, -seed<N> added with --seed)")
    parser.add_argument("--timeout", type=positive_seconds, default=None,
                        help="seconds after which no new trial starts (the running one finishes)")
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"),
                        help="median (default): prune below the median of complete trials at the same epoch; "
                             "hyperband: for larger budgets; none")
    parser.add_argument("--top", type=positive_count, default=10, help="rows of the final table (default 10)")
    parser.add_argument("--reports", default=DEFAULT_REPORTS,
                        help=f"folder for best_step-<study>.toml (default {DEFAULT_REPORTS}/<study>/)")
    parser.add_argument("--epoch-lines", action="store_true",
                        help="also print one line per epoch of every trial (default: one line per trial)")
    add_workers_argument(parser, "the --trials trials")
    add_plan_only_argument(parser)
    args = parser.parse_args(argv)
    check_plan_only(parser, args)
    return args


def format_table(summary: dict, monitor: str, top: int = 10) -> str:
    """The top trials as a text table, and a line on pruning."""
    from ablation.engine.trials import format_params  # the engine: loaded by then
    header = f"{'trial':>6}  {'state':<9}{monitor:>13}{'test acc':>10}{'epochs':>8}  params"
    lines = [header, "-" * len(header)]
    for row in summary["rows"][:top]:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        test = "" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        epochs = f"{row['epochs_run'] if row['epochs_run'] is not None else '-'}/{row['epochs'] or '-'}"
        detail = format_params(row["params"]) + (f"  [{row['error']}]" if row["error"] else "")
        lines.append(f"{row['number']:>6}  {row['state']:<9}{value:>13}{test:>10}{epochs:>8}  {detail}")
    lines.append(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed; "
                 f"pruning saved {summary['epochs_saved']} of {summary['epochs_planned']} planned epochs")
    return "\n".join(lines)


def search(args) -> tuple:
    """The study (--set put in), the store checked, the trials run: the study, the profile and the search's summary."""
    study = apply_overrides(load_study(args.study), parse_overrides(args.set))
    profile = get_profile(args.profile)
    from ablation import tracking
    from ablation.core.console import Display
    from ablation.engine.queue import queue_trials
    from ablation.engine.trials import run_search  # the engine (Optuna, MLflow; Keras per trial): after --help

    tracking.check_store()
    # One search either way: its trials run here, or go through the shared queue to every worker.
    run_trials = functools.partial(queue_trials, plan_only=args.plan_only) if args.workers else None
    with Display(live=False if args.workers else None) as display:
        summary = run_search(study, profile, trials=args.trials, data_path=args.data, seed=args.seed,
                             storage=args.storage, study_name=args.study_name, timeout=args.timeout,
                             pruner=args.pruner, reports=args.reports, verbose=args.epoch_lines,
                             display=display, run_trials=run_trials)
    return study, profile, summary


def main(argv=None) -> int:
    args = parse_args(argv)
    configure(args)
    started = time.perf_counter()
    with interrupt.stop_on_signals():  # from here on a signal is a request, honoured where it is safe
        try:
            study, profile, summary = search(args)
        except (StudyError, DataError, StoreError, KeyboardInterrupt) as error:
            return ended_by(error, "finished trials are kept; the running one is marked failed (Optuna) and KILLED "
                                   "(MLflow); run the same command again to go on")
    print(f"\n{study.title}: Optuna study {summary['optuna_study']!r} ({profile.name} profile), "
          f"{summary['added']} trial(s) added in {time.perf_counter() - started:.0f} s\n")
    print(format_table(summary, study.search.monitor, args.top))
    if summary["best_step"] is not None:
        print(f"\nbest trial as a study step ({summary['best_step_path']}):\n\n{summary['best_step']}")
    return 0


if __name__ == "__main__":
    run_and_exit(main)
