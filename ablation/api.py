"""The Python API for notebooks and scripts: the commands' own phases, called with Python values; DataFrames back.

    from ablation import load_study, run_ladder, run_search, run_attribution, results

Each function reads its options with the command's own parser (the same checks and defaults; an error is a
ValueError carrying the command's message) and runs the command's own phases (`ladder.prepare` and
`ladder.measure`, `search.search`, `attribute.prepare` and `attribute.attribute`), so a run made here is the
run the command makes, reused by it and by the report. While one runs, Ctrl-C (SIGINT) or SIGTERM stops it as
it stops a command: at the next batch end, finished steps kept, the running step's MLflow run KILLED with its
checkpoint kept (the same call again resumes it); KeyboardInterrupt then reaches the caller, whose own signal
handlers are back in place. `ablation/__init__.py` imports this module on first use only.
"""

import contextlib
import io
import json
from dataclasses import dataclass

import pandas as pd

from ablation import attribute as attribute_command
from ablation import ladder, search
from ablation.cli import DEFAULT_STUDY, configure
from ablation.core import interrupt
from ablation.core.study import load_study  # noqa: F401  (part of the API: a study file read and checked)


@dataclass(frozen=True)
class Results:
    """A study's experiment as the report reads it from the MLflow store (the report's tables hold these numbers)."""

    steps: pd.DataFrame  # the latest ladder, a row per step: n seeds, test accuracy mean/std/95% interval, source, cost
    changes: pd.DataFrame  # a row per change (a step against the one before it): difference, tests, verdict
    runs: pd.DataFrame  # every run of the experiment: config, metrics, tags (the report's runs.csv)
    trials: pd.DataFrame  # the latest search's trials (empty without a search)


def results(study=DEFAULT_STUDY, *, data=None) -> Results:
    """What the study's experiment holds (its latest ladder and search), read from the store; nothing trains.

    `data`: CIFAR-10 as given to the ladder (the report re-derives test labels from it). Raises
    report.ReportError when the experiment holds no finished ladder step and no search trial.
    """
    from ablation.report import gather, tables

    found = gather.gather(study, None, data)
    steps, changes = tables.ladder_evidence(found.ladder) if found.ladder is not None else ([], [])
    return Results(steps=tables.step_summary(found.ladder, steps) if found.ladder is not None else pd.DataFrame(),
                   changes=tables.change_table(changes), runs=found.runs,
                   trials=found.search.trials if found.search is not None else pd.DataFrame())


def run_ladder(study=DEFAULT_STUDY, *, profile="quick", data=None, seeds=None, steps=None, overrides=None,
               force=False, until_decided=False, max_seeds=8, report=True) -> Results:
    """`python -m ablation.ladder`: every step (finished work reused), the report unless report=False; the results.

    `seeds`: training seeds 0..seeds-1 (default: the study's); `steps`: names to run (default: all);
    `overrides`: {field: value} put into every step, as --set FIELD=VALUE.
    """
    args = _parse(ladder.parse_args, study, profile, data, overrides, seeds=seeds, force=force,
                  steps=",".join(steps) if steps else None, until_decided=until_decided,
                  max_seeds=max_seeds if until_decided else None, no_report=not report)
    with _as_a_command(args):
        ladder.measure(args, *ladder.prepare(args))
        if report:
            from ablation.report import write_report

            write_report(args.study, data=args.data, log=True)
    return results(args.study, data=data)


def run_search(study=DEFAULT_STUDY, *, trials=10, profile="quick", data=None, overrides=None, seed=None,
               storage=None, pruner="median", timeout=None) -> Results:
    """`python -m ablation.search`: add `trials` Optuna trials to the study's search; the results (see .trials)."""
    args = _parse(search.parse_args, study, profile, data, overrides, trials=trials, seed=seed, storage=storage,
                  pruner=pruner, timeout=timeout)
    with _as_a_command(args):
        search.search(args)
    return results(args.study, data=data)


def run_attribution(study=DEFAULT_STUDY, *, design="leave-one-out", profile="quick", data=None, seeds=None,
                    overrides=None, budget=32, force=False, from_search=False) -> pd.DataFrame:
    """`python -m ablation.attribute`: a design's credit per component (its CSV: mean, interval and n per measure)."""
    args = _parse(attribute_command.parse_args, study, profile, data, overrides, design=design, seeds=seeds,
                  budget=budget, force=force, from_search=from_search)
    with _as_a_command(args):
        outcome = attribute_command.attribute(args, *attribute_command.prepare(args))
    return pd.read_csv(next(path for path in outcome["files"] if path.endswith(".csv")))


def _parse(parse_args, study, profile, data, overrides, **options):
    """The command's own parser on the options written as its command line; its error as a ValueError."""
    argv = ["--study", str(study), "--profile", profile] + (["--data", str(data)] if data is not None else [])
    for field, value in (overrides or {}).items():
        argv += ["--set", f"{field}={'none' if value is None else json.dumps(value)}"]  # JSON scalars are TOML
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            return parse_args(argv)
    except SystemExit:
        raise ValueError(message.getvalue().strip().splitlines()[-1]) from None


@contextlib.contextmanager
def _as_a_command(args):
    """The command's process-wide choices, and signals as stop requests; the caller's handlers restored after."""
    configure(args)
    with interrupt.stop_on_signals():
        yield
