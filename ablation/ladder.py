"""Replay a study's improvement ladder: every step (and baseline) a nested MLflow run.

    python -m ablation.ladder                       # the assignment study, quick profile
    python -m ablation.ladder --profile smoke       # seconds, for a first look
    python -m ablation.ladder --study studies/architectures.toml --profile full --data PATH
"""

import argparse
import dataclasses
import sys
import time

from ablation.cli import (EXIT_FAILED, ArgumentParser, add_common_arguments, add_plan_only_argument,
                          add_replicate_arguments, add_storage_argument, add_workers_argument, check_plan_only,
                          check_replicates, configure, ended_by, run_and_exit)
from ablation.core import interrupt
from ablation.core.config import StoreError, StudyError
from ablation.core.profiles import get_profile
from ablation.core.study import apply_overrides, load_study, parse_overrides
from ablation.data import DataError, check_data_path


ROPE_POINTS = 1.0  # stats.ROPE in points; stats (scipy) is imported only once a ladder has run: --help stays light


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m ablation.ladder",
        description="Replay a study's improvement ladder on CIFAR-10; each step is a nested MLflow run.",
    )
    add_common_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="train every step again, even one already finished with the same config and data")
    parser.add_argument("--steps", default=None,
                        help="comma-separated step names to run (default: every step and baseline)")
    add_replicate_arguments(parser, "step")
    parser.add_argument("--vary-split", action="store_true",
                        help="vary the split seed with the training seed too (default: every replicate is scored "
                             "on the same train/validation/test images)")
    parser.add_argument("--rope", type=float, default=ROPE_POINTS,
                        help="equivalence margin in points of test accuracy: a change whose interval lies within "
                             "±ROPE is 'equivalent' (default: 1.0, about the SE of one accuracy on 2,000 test images)")
    parser.add_argument("--until-decided", action="store_true",
                        help="start at --seeds (at least 3) and add seeds in groups of 2 only to the changes still "
                             "undecided, until every change is decided or --max-seeds is reached (each look tested "
                             "at 0.05 / the number of looks)")
    parser.add_argument("--max-seeds", type=int, default=8,
                        help="with --until-decided: the most seeds a step gets (default: 8)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--log-models", default="final", choices=("final", "all", "none"),
                        help="log trained networks as MLflow models (Keras format): final: the study's last step "
                             "(default); all: every step; none")
    add_workers_argument(parser, "the units")
    add_storage_argument(parser, "with --workers: the queue's Optuna storage")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each step's checkpoints (<store>/checkpoints/) after it ends (default: removed "
                             "once it finishes or fails; an interrupted step's are always kept, to resume it)")
    parser.add_argument("--stop-on-failure", action="store_true",
                        help="stop the ladder at a step whose training fails, e.g. diverges (default: record it "
                             "FAILED and go on with the next step)")
    add_plan_only_argument(parser)
    args = parser.parse_args(argv)
    check_plan_only(parser, args)
    if not 0 < args.rope < 100:
        parser.error(f"--rope is a margin in points of accuracy, above 0 and below 100; got {args.rope}")
    if args.until_decided and args.seed is not None:
        parser.error("--until-decided adds training seeds: give --seeds (the first look's count), not --seed")
    if args.until_decided and not 3 <= (args.seeds or 3) <= args.max_seeds:
        parser.error(f"--until-decided needs 3 <= --seeds <= --max-seeds; got --seeds {args.seeds}, "
                     f"--max-seeds {args.max_seeds}")
    if args.storage is not None and not args.workers:
        parser.error("--storage is the work queue's: give it with --workers")
    check_replicates(parser, args)
    return args


def format_steps(rows: list[dict], summary: dict) -> str:
    """Per step: n seeds, mean and std of test accuracy with its 95% interval, the source's number, cost."""
    header = (f"{'step':<24}{'n':>3}{'test acc':>10}{'± std':>7}{'95% interval':>16}{'source':>8}{'epochs':>9}"
              f"{'CPU-s':>8}{'params':>11}{'MFLOPs':>8}{'s/epoch':>9}")
    lines = [header, "-" * len(header)]
    failed = {}
    for failure in summary["failed"]:
        failed.setdefault(failure["step"], []).append(f"{failure['step']:<24}FAILED (seed {failure['seed']}): "
                                                      f"{failure['error']}")
    finished = {step["step"]: step for step in summary["steps"]}
    for name in dict.fromkeys(r["step"] for r in rows):  # the ladder's order, failed steps in their place
        lines += failed.get(name, [])
        if name not in finished:
            continue
        step = finished[name]
        mine = [r for r in rows if r["step"] == step["step"] and r["status"] == "finished"]
        first, test = mine[0], step["test"]
        reported = "" if first["reported_test_accuracy"] is None else f"{100 * first['reported_test_accuracy']:.1f}%"
        interval = "" if test["n"] < 2 else f"[{100 * test['low']:.1f}, {100 * test['high']:.1f}]"
        spread = "" if test["n"] < 2 else f"{100 * test['std']:.1f}"
        epochs = "/".join(sorted({f"{r['epochs_run']}" for r in mine})) + f"/{first['epochs']}"
        cpu = sum(r["train_cpu_seconds"] for r in mine) / len(mine)
        name = step["step"] + (" (baseline)" if step["baseline"] else "")
        lines.append(f"{name:<24}{test['n']:>3}{100 * test['mean']:>9.1f}%{spread:>7}{interval:>16}{reported:>8}"
                     f"{epochs:>9}{cpu:>7.0f}{'*' if any(r['reused'] for r in mine) else ' '}"
                     f"{first['num_params']:>11,}{first['flops'] / 1e6:>8.0f}"
                     f"{sum(r['seconds_per_epoch'] for r in mine) / len(mine):>9.1f}")
    lines.append("test acc: mean over the n training seeds; CPU-s: mean training CPU time of a replicate")
    if any(r["reused"] for r in rows):
        lines.append("* reused from an earlier finished run with the same config and data")
    return "\n".join(lines)


def _verdict_words(change: dict) -> str:
    """The verdict, with the margin of an equivalence and the seeds that would likely decide an undecided one."""
    from ablation.analysis import stats

    if change["verdict"] == stats.EQUIVALENT:
        return f"equivalent (within ±{100 * change['rope']:.1f})"
    if change["verdict"] == stats.UNDECIDED:
        more = change["more_seeds"]
        return "undecided" + (f": ~{more} more seed{'s' if more > 1 else ''}" if more is not None
                              else f": over {stats.MAX_SEEDS} seeds")
    return change["verdict"]


def format_changes(summary: dict) -> str:
    """Per change: the paired difference over seeds, its interval, the tests and the verdict in words."""
    with_mcnemar = any(item["mcnemar"] is not None for item in summary["changes"])
    width = max([36] + [len(f"{i['step']} vs {i['against']}") + 1 for i in summary["changes"]])
    what = f"change ({summary.get('metric', 'test_accuracy').replace('_', ' ')})"
    header = (f"{what:<{width}}{'n':>3}{'diff':>7}{'95% interval':>16}{'p (t)':>8}{'p (flip)':>9}{'p (Holm)':>9}"
              f"{'detectable':>11}" + (f"{'McNemar (Holm)':>15}" if with_mcnemar else "") + "  verdict")
    lines = [header, "-" * len(header)]
    number = lambda v, w: f"{'':>{w}}" if v != v else f"{v:>{w}.3f}"  # noqa: E731  (NaN: not defined here)
    points = lambda v: "" if v != v else f"{100 * v:+.1f}"  # noqa: E731
    for item in summary["changes"]:
        change, n = item["change"], item["change"]["n"]
        interval = "" if n < 2 else f"[{points(change['low'])}, {points(change['high'])}]"
        detectable = "" if change["mde"] != change["mde"] else f"{100 * change['mde']:.1f}"
        mcnemar = "" if item["mcnemar"] is None else f"{item['mcnemar']['p_adjusted']:.3f}"
        lines.append(f"{item['step'] + ' vs ' + item['against']:<{width}}{n:>3}{points(change['mean']):>7}{interval:>16}"
                     f"{number(change['p_test'], 8)}{number(change['p_perm'], 9)}{number(change['p_adjusted'], 9)}"
                     f"{detectable:>11}" + (f"{mcnemar:>15}" if with_mcnemar else "") + f"  {_verdict_words(change)}")
    return "\n".join(lines + _change_notes(summary, with_mcnemar))


def _change_notes(summary: dict, with_mcnemar: bool) -> list[str]:
    """What the columns of format_changes mean, and the ladder's variance split."""
    tested = [item["change"] for item in summary["changes"] if item["change"]["n"] >= 2]
    notes = []
    if tested:
        rope, fewest = 100 * tested[0]["rope"], min(c["n"] for c in tested)
        alpha = summary.get("sequential", {}).get("alpha", 0.05)
        metric = summary.get("metric", "test_accuracy").replace("_", " ")
        notes.append(f"diff, interval, detectable: points of {metric}, paired by training seed. p (t): t-test with "
                     f"the seed-to-seed SD pooled over these changes where that is larger than a change's own "
                     f"({int(max(c['df'] for c in tested))} df); p (flip): exact sign-flip test of each change alone "
                     f"(cannot go below {2 / 2 ** fewest:.3g} with {fewest} seeds); p (Holm): adjusted over the "
                     f"changes and their equivalence tests. helped/hurt: p (Holm) < {alpha:.4g}; equivalent: within "
                     f"±{rope:.1f} points by two one-sided tests (--rope); detectable: found with 80% power at the "
                     f"level this change is tested at. These test images only.")
    if with_mcnemar or len(tested) < len(summary["changes"]):
        notes.append("one seed: no verdict, since the noise between training seeds is unmeasured. "
                     + ("McNemar (Holm): exact test on the test images, Holm over the one-seed changes; it measures "
                        "test-set sampling only, not training noise. " if with_mcnemar else "")
                     + "Run --seeds 3 or more for verdicts.")
    split = summary.get("variance")
    if split and split["seed"] == split["seed"]:
        churn = "" if split["churn"] != split["churn"] else f", image churn {100 * split['churn']:.2f}"
        image = "" if split["image"] != split["image"] else (f"; one accuracy's SD from its {split['images']:,} test "
                                                             f"images {100 * split['image']:.2f}")
        notes.append(f"noise, SD in points: of a difference, seed-to-seed {100 * split['seed']:.2f}{churn}{image}")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up at once, in a log file too
    configure(args)
    with interrupt.stop_on_signals():  # from here on a signal is a request, honoured where it is safe
        try:
            return run(args)
        except (StudyError, DataError, StoreError, KeyboardInterrupt) as error:
            return ended_by(error, "finished steps are kept; the interrupted step's run is KILLED with its "
                                   "checkpoint kept. Run the same command again to resume it from its last finished "
                                   "epoch")


def prepare(args):
    """Phase 1 of the ladder: every input checked (study, options, data path, store), nothing written.

    Returns the study (--set values put in), the profile and the resolved steps, or raises StudyError,
    DataError or StoreError.
    """
    study = apply_overrides(load_study(args.study), parse_overrides(args.set))
    if args.seeds is not None:
        study = dataclasses.replace(study, seeds=tuple(range(args.seeds)))
    if args.deterministic:
        study = dataclasses.replace(study, steps=tuple(
            dataclasses.replace(s, config=dataclasses.replace(s.config, deterministic=True)) for s in study.steps))
    profile = get_profile(args.profile)
    only = [name.strip() for name in args.steps.split(",")] if args.steps else None
    check_data_path(args.data)  # before the engines' imports: a wrong path is said at once
    from ablation import tracking  # the engines (MLflow; Keras when a step trains): after --help
    from ablation.engine import units

    steps = units.resolve_steps(study, profile, args.seed, only, args.vary_split)
    tracking.check_store()
    return study, profile, steps


def train(args, study, profile, steps, alpha=None) -> list[dict]:
    """Phase 2: the steps, seed by seed: in this process (live bars on a terminal) or through the shared queue.

    `alpha`: the level the verdicts use (default: stats.ALPHA), recorded on the parent with --rope.
    """
    from ablation.analysis import stats
    from ablation.core.console import Display
    from ablation.engine import queue, units

    verdicts = {"rope": args.rope / 100, "alpha": stats.ALPHA if alpha is None else alpha}
    if args.workers:
        return queue.run_ladder_shared(study, profile, steps, args.data, args.force, args.storage,
                                       log_models=args.log_models, plan_only=args.plan_only, **verdicts)
    with Display() as display:
        return units.run_ladder(study, profile, steps, args.data, args.force, display,
                                keep_checkpoints=args.keep_checkpoints, stop_on_failure=args.stop_on_failure,
                                log_models=args.log_models, **verdicts)


def run_until_decided(args, study, profile, steps) -> tuple[list[dict], dict]:
    """Looks at 2 more seeds at a time, training them only for the steps of changes still undecided.

    Each look judges the family at alpha / (number of looks), so the family-wise error stays at alpha however
    the looks end; a change keeps its first verdict (evidence.still_open). Finished replicates are reused.
    """
    from ablation.analysis import evidence, stats
    from ablation.engine import units

    schedule = evidence.looks(max(3, len(study.seeds)), args.max_seeds)
    alpha = stats.ALPHA / len(schedule)
    only = [name.strip() for name in args.steps.split(",")] if args.steps else None
    rows, decided, needed = {}, {}, only
    for look, seeds in enumerate(schedule, start=1):
        grown = dataclasses.replace(study, seeds=tuple(range(seeds)))
        for row in train(args, grown, profile, units.resolve_steps(grown, profile, None, needed, args.vary_split),
                         alpha):
            rows[row["step"], row["seed"]] = row
        summary = units.ladder_evidence(list(rows.values()), steps, args.rope / 100, alpha, study.metric)
        undecided = evidence.still_open(summary["changes"], decided)
        print(f"\nlook {look}/{len(schedule)} at {seeds} seeds (alpha {alpha:.4f} a look): "
              f"{len(decided)} decided, {len(undecided)} undecided")
        if not undecided or look == len(schedule):
            break
        needed = sorted({name for item in undecided for name in (item["step"], item["against"])})
    summary["changes"] = [decided.get((item["step"], item["against"]), item) for item in summary["changes"]]
    steps_run = len({name for name, _ in rows})
    summary["sequential"] = {"looks": schedule, "alpha": alpha, "replicates": len(rows),
                             "fixed": steps_run * args.max_seeds}
    return list(rows.values()), summary


def measure(args, study, profile, steps) -> tuple[list[dict], dict]:
    """Phase 2 and its evidence: the steps trained (or reused), a row per step and seed, and their summary."""
    from ablation.engine import units

    if args.until_decided:
        return run_until_decided(args, study, profile, steps)
    rows = train(args, study, profile, steps)
    return rows, units.ladder_evidence(rows, steps, rope=args.rope / 100, metric=study.metric)


def run(args) -> int:
    """The ladder in phases: inputs and store checked, steps run, summary and report; 1 if a step failed."""
    started = time.perf_counter()
    study, profile, steps = prepare(args)
    from ablation import report
    from ablation.engine import queue, units

    try:
        rows, summary = measure(args, study, profile, steps)
    except units.UnitFailed as error:
        print(f"error: {error}; the ladder stopped there (--stop-on-failure)", file=sys.stderr)
        return EXIT_FAILED
    except queue.WorkError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\n{study.title} ({profile.name} profile, {time.perf_counter() - started:.0f} s)\n")
    print(format_steps(rows, summary))
    if summary["changes"]:
        print("\nWhich steps helped\n")
        print(format_changes(summary))
    if "sequential" in summary:
        spent = summary["sequential"]
        print(f"seeds spent: {spent['replicates']} replicates (step x seed) against {spent['fixed']} for every step "
              f"at --max-seeds {args.max_seeds}; looks at {spent['looks']} seeds, each at alpha {spent['alpha']:.4f}")
    interrupt.check()
    # Phase 3: the report.
    if not args.no_report:
        try:
            print(f"\nreport: {report.write_report(args.study, data=args.data, log=True)}")
        except report.ReportError as error:
            print(f"no report: {error}", file=sys.stderr)
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} step run(s) failed: "
              f"{', '.join(f['step'] for f in summary['failed'])} (the reason is each run's ablation.error tag)",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    run_and_exit(main)
