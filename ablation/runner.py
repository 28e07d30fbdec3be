"""The shared runner: a step's work identified by its content, reused when finished, else trained in its own run.

The ladder (and every command that trains) goes through here: `run_ladder` for a study's steps,
`train_in_run` for one config inside an open nested run. Keras is imported in `train_in_run`
alone, when something has to train, so re-running a finished study costs no TensorFlow start-up.
"""

import dataclasses
import hashlib
import time

from ablation import tracking
from ablation.config import StudyError
from ablation.data import LazySplits
from ablation.tracking import Kind, Tag


def resolve_steps(study, profile, seed=None, only=None):
    """The study's steps (those named in `only`, if given) with the profile and a --seed applied."""
    if only:
        unknown = sorted(set(only) - {s.name for s in study.steps})
        if unknown:
            raise StudyError(f"{study.path.name}: no step(s) {unknown}; steps: {', '.join(s.name for s in study.steps)}")
    steps = []
    for step in study.steps:
        if only and step.name not in only:
            continue
        config = step.config if seed is None else dataclasses.replace(step.config, seed=seed)
        steps.append(dataclasses.replace(step, config=profile.apply(config)))
    return steps


def work_key(config, fingerprint: dict) -> str:
    """Identifies a run's work: the same key means the same training, so its result can be reused."""
    text = f"{config.hash()}|{fingerprint['digest']}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def progress_printer(epochs: int, say):
    """Epoch hooks (begin, end) that print one line per epoch through `say`."""
    started = {}

    def begin(epoch, logs):
        started[epoch] = time.perf_counter()

    def end(epoch, logs):
        seconds = time.perf_counter() - started.get(epoch, time.perf_counter())
        say(f"    epoch {epoch:>3}/{epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"accuracy {logs.get('accuracy', float('nan')):.4f}  "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
            f"val_accuracy {logs.get('val_accuracy', float('nan')):.4f}  "
            f"lr {logs.get('learning_rate', float('nan')):.1e}  {seconds:.1f} s")

    return begin, end


def train_in_run(config, splits, on_epoch=(), on_epoch_begin=()):
    """Train `config` inside the active run, logging params, every epoch and the result; returns the Result."""
    from ablation.train import train  # Keras: imported only when something trains

    tracking.log_config(config, {})
    result = train(config, splits, on_epoch=(tracking.log_epoch, *on_epoch), on_epoch_begin=on_epoch_begin)
    tracking.log_result(result, splits.class_names)
    return result


def step_tags(study, step, index: int, profile, config, fingerprint: dict, key: str) -> dict:
    """The tags of a ladder step's run."""
    tags = {
        Tag.KIND: Kind.LADDER_STEP, Tag.STUDY: study.name, Tag.STEP: step.name, Tag.STEP_INDEX: index,
        Tag.BASELINE: step.is_baseline, Tag.CONFIG_HASH: config.hash(), Tag.WORK_KEY: key, Tag.SEED: config.seed,
        Tag.PROFILE: profile.name, Tag.DESCRIPTION: step.description, **tracking.data_tags(fingerprint),
    }
    if step.reported_test_accuracy is not None:
        tags[Tag.REPORTED_TEST_ACCURACY] = step.reported_test_accuracy
    return tags


def run_ladder(study, profile, data_path=None, seed=None, force=False, only=None, say=print) -> list[dict]:
    """Run (or reuse) every step under one parent run; returns one row per step."""
    steps = resolve_steps(study, profile, seed, only)
    data = LazySplits(data_path, say)  # read only if some step has to train (a wrong path fails here)
    experiment = tracking.experiment_id(study.name)
    for run_id in tracking.sweep_stale_runs(experiment):
        say(f"marked stale run {run_id} KILLED (its process had died)")
    rows = []
    parent_tags = {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name, Tag.PROFILE: profile.name}
    with tracking.stop_on_sigterm(), tracking.run(experiment, f"{study.name}-{profile.name}", parent_tags) as parent:
        tracking.log_study_file(study.path)
        say(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
        say(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent.info.run_id}")
        for index, step in enumerate(steps, start=1):
            rows.append(run_step(experiment, study, step, index, len(steps), profile, data, force, say))
        tracking.log_table(rows, "ladder.json")
    return rows


def run_step(experiment, study, step, index, total, profile, data, force, say) -> dict:
    """One step: reuse the finished run of the same work, or train it in a nested run; its summary row."""
    config = step.config
    fingerprint = data.fingerprint(**config.split_args())
    key = work_key(config, fingerprint)
    tags = step_tags(study, step, index, profile, config, fingerprint, key)
    say(f"\n[{index}/{total}] {step.name}: {step.description}")
    say(f"    {config.model} {dict(config.model_args)}, {config.epochs} epochs, {fingerprint['train_size']} "
        f"train / {fingerprint['val_size']} val / {fingerprint['test_size']} test images")
    previous = None if force else tracking.find_finished(experiment, key)
    if previous is not None:
        metrics = tracking.copy_run(previous, experiment, step.name, tags).data.metrics
        say(f"    reused finished run {previous.info.run_id} (same config and data; --force retrains)")
    else:
        splits = data.splits(**config.split_args())
        begin, end = progress_printer(config.epochs, say)
        with tracking.run(experiment, step.name, tags, nested=True):
            result = train_in_run(config, splits, on_epoch=(end,), on_epoch_begin=(begin,))
        say(f"    test accuracy {result.test_accuracy:.4f} after {result.epochs_run} epochs"
            f"{' (stopped early)' if result.stopped_early else ''}, {result.train_seconds:.0f} s")
        metrics = result.metrics()
    return {
        "step": step.name, "baseline": step.is_baseline, "test_accuracy": metrics["test_accuracy"],
        "reported_test_accuracy": step.reported_test_accuracy, "epochs_run": int(metrics["epochs_run"]),
        "epochs": config.epochs, "train_seconds": metrics["train_seconds"],
        "num_params": int(metrics["num_params"]), "flops": int(metrics["flops"]),
        "seconds_per_epoch": metrics["seconds_per_epoch"], "reused": previous is not None,
    }
