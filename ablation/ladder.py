"""Replay a study's improvement ladder: every step (and baseline) a nested MLflow run.

    python -m ablation.ladder                       # the assignment study, quick profile
    python -m ablation.ladder --profile smoke       # seconds, for a first look
    python -m ablation.ladder --study studies/architectures.toml --profile full --data PATH
"""

import argparse
import dataclasses
import hashlib
import sys
import time

DEFAULT_STUDY = "studies/assignment.toml"


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


def resolve_steps(study, profile, seed=None, only=None):
    """The study's steps (those named in `only`, if given) with the profile and a --seed applied."""
    from ablation.config import StudyError

    if only:
        unknown = sorted(set(only) - {s.name for s in study.steps})
        if unknown:
            raise StudyError(f"{study.path.name}: no step(s) {unknown}; steps: {', '.join(s.name for s in study.steps)}")
    out = []
    for step in study.steps:
        if only and step.name not in only:
            continue
        config = step.config if seed is None else dataclasses.replace(step.config, seed=seed)
        out.append(dataclasses.replace(step, config=profile.apply(config)))
    return out


def work_key(config, fingerprint: dict) -> str:
    """Identifies a run's work: the same key means the same training, so its result can be reused."""
    text = f"{config.hash()}|{fingerprint['digest']}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_ladder(study, profile, data_path=None, seed=None, force=False, only=None, out=print) -> list[dict]:
    """Run (or reuse) every step under one parent run; returns one row per step."""
    from ablation import tracking
    from ablation.data import LazySplits

    steps = resolve_steps(study, profile, seed, only)
    data = LazySplits(data_path, out)  # read only if some step has to train (a wrong path fails here)
    experiment = tracking.experiment_id(study.name)
    for run_id in tracking.sweep_stale_runs(experiment):
        out(f"marked stale run {run_id} KILLED (its process had died)")
    rows = []
    parent_tags = {"ablation.kind": "ladder", "ablation.study": study.name, "ablation.profile": profile.name}
    with tracking.stop_on_sigterm(), tracking.run(experiment, f"{study.name}-{profile.name}", parent_tags) as parent:
        tracking.log_study_file(study.path)
        out(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
        out(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent.info.run_id}")
        for index, step in enumerate(steps, start=1):
            config = step.config
            fingerprint = data.fingerprint(**config.split_args())
            key = work_key(config, fingerprint)
            tags = {
                "ablation.kind": "ladder_step", "ablation.study": study.name, "ablation.step": step.name,
                "ablation.step_index": index, "ablation.baseline": step.is_baseline,
                "ablation.config_hash": config.hash(), "ablation.work_key": key, "ablation.seed": config.seed,
                "ablation.profile": profile.name, "ablation.description": step.description,
                **tracking.data_tags(fingerprint),
            }
            if step.reported_test_accuracy is not None:
                tags["ablation.reported_test_accuracy"] = step.reported_test_accuracy
            out(f"\n[{index}/{len(steps)}] {step.name}: {step.description}")
            out(f"    {config.model} {dict(config.model_args)}, {config.epochs} epochs, {fingerprint['train_size']} "
                f"train / {fingerprint['val_size']} val / {fingerprint['test_size']} test images")
            previous = None if force else tracking.find_finished(experiment, key)
            if previous is not None:
                done = tracking.copy_run(previous, experiment, step.name, tags)
                metrics = done.data.metrics
                out(f"    reused finished run {previous.info.run_id} (same config and data; --force retrains)")
            else:
                metrics = train_step(experiment, step, config, data.splits(**config.split_args()), tags, out)
            rows.append({
                "step": step.name, "baseline": step.is_baseline, "test_accuracy": metrics["test_accuracy"],
                "reported_test_accuracy": step.reported_test_accuracy, "epochs_run": int(metrics["epochs_run"]),
                "epochs": config.epochs, "train_seconds": metrics["train_seconds"],
                "num_params": int(metrics["num_params"]), "flops": int(metrics["flops"]),
                "seconds_per_epoch": metrics["seconds_per_epoch"], "reused": previous is not None,
            })
        tracking.log_table(rows, "ladder.json")
    return rows


def train_step(experiment, step, config, splits, tags, out) -> dict:
    """Train one step inside its own nested run; returns its final metrics."""
    from ablation import tracking
    from ablation.train import train

    with tracking.run(experiment, step.name, tags, nested=True):
        tracking.log_config(config, {})
        result = train(config, splits, callbacks=[tracking.epoch_logger(), progress_printer(config.epochs, out)])
        tracking.log_result(result, splits.class_names)
    out(f"    test accuracy {result.test_accuracy:.4f} after {result.epochs_run} epochs"
        f"{' (stopped early)' if result.stopped_early else ''}, {result.train_seconds:.0f} s")
    return result.metrics()


def progress_printer(epochs: int, out):
    """A Keras callback printing one line per epoch."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            out(f"    epoch {epoch + 1:>3}/{epochs}  loss {logs.get('loss', float('nan')):.4f}  "
                f"accuracy {logs.get('accuracy', float('nan')):.4f}  "
                f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
                f"val_accuracy {logs.get('val_accuracy', float('nan')):.4f}  "
                f"lr {logs.get('learning_rate', float('nan')):.1e}  {time.perf_counter() - self.started:.1f} s")

    return Progress()


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
    from ablation.config import StudyError, get_profile, load_study
    from ablation.data import DataError

    try:
        study = load_study(args.study)
        profile = get_profile(args.profile)
        started = time.perf_counter()
        only = [name.strip() for name in args.steps.split(",")] if args.steps else None
        resolve_steps(study, profile, args.seed, only)  # a misspelled step fails before anything runs
        rows = run_ladder(study, profile, args.data, args.seed, args.force, only)
    except (StudyError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished steps are kept; the interrupted one is marked KILLED", file=sys.stderr)
        return 130
    print(f"\n{study.title} ({profile.name} profile, {time.perf_counter() - started:.0f} s)\n")
    print(format_table(rows))
    if not args.no_report:
        from ablation.report import ReportError, write_report

        try:
            print(f"\nreport: {write_report(args.study, data=args.data)}")
        except ReportError as error:
            print(f"no report: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
