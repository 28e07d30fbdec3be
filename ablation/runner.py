"""The shared runner: a step's work identified by its content, reused when finished, else trained in its own run.

The ladder (and every command that trains) goes through here: `run_ladder` for a study's steps,
`train_in_run` for one config inside an open nested run. Keras is imported in `train_in_run`
alone, when something has to train, so re-running a finished study costs no TensorFlow start-up.
"""

import dataclasses
import hashlib
import time

from ablation import evidence, tracking
from ablation.config import StudyError
from ablation.data import LazySplits
from ablation.tracking import Kind, Tag


def resolve_steps(study, profile, seed=None, only=None, vary_split=False):
    """The study's steps (those named in `only`, if given) with the profile applied, one per training seed.

    Seeds come from `seed` (one) or the study's `seeds`; the split seed stays the config's unless
    `vary_split`, which sets it to the training seed. Ordered seed by seed: a whole ladder per seed.
    """
    if only:
        unknown = sorted(set(only) - {s.name for s in study.steps})
        if unknown:
            raise StudyError(f"{study.path.name}: no step(s) {unknown}; steps: {', '.join(s.name for s in study.steps)}")
    seeds = study.seeds if seed is None else (seed,)
    steps = []
    for replicate in seeds:
        for step in study.steps:
            if only and step.name not in only:
                continue
            split_seed = replicate if vary_split else step.config.split_seed
            config = dataclasses.replace(step.config, seed=replicate, split_seed=split_seed)
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
        Tag.SPLIT_SEED: config.split_seed, Tag.PROFILE: profile.name, Tag.DESCRIPTION: step.description,
        **tracking.data_tags(fingerprint),
    }
    if step.reported_test_accuracy is not None:
        tags[Tag.REPORTED_TEST_ACCURACY] = step.reported_test_accuracy
    if step.compare_to is not None:
        tags[Tag.COMPARE_TO] = step.compare_to
    return tags


def run_ladder(study, profile, steps, data_path=None, force=False, say=print) -> list[dict]:
    """Run (or reuse) every resolved step under one parent run; returns one row per step and seed."""
    data = LazySplits(data_path, say)  # read only if some step has to train (a wrong path fails here)
    experiment = tracking.experiment_id(study.name)
    for run_id in tracking.sweep_stale_runs(experiment):
        say(f"marked stale run {run_id} KILLED (its process had died)")
    seeds = sorted({step.config.seed for step in steps})
    parent_tags = {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name, Tag.PROFILE: profile.name, Tag.SEEDS: seeds}
    rows = []
    with tracking.stop_on_sigterm(), tracking.run(experiment, f"{study.name}-{profile.name}", parent_tags) as parent:
        tracking.log_study_file(study.path)
        say(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
        say(f"training seeds {seeds} (split seed{'s' if len({s.config.split_seed for s in steps}) > 1 else ''} "
            f"{sorted({s.config.split_seed for s in steps})}); tracking: {tracking.tracking_uri()}  "
            f"experiment {study.name!r}, parent run {parent.info.run_id}")
        index = {name: i for i, name in enumerate(dict.fromkeys(s.name for s in steps), start=1)}
        for number, step in enumerate(steps, start=1):
            run_name = step.name if len(seeds) == 1 else f"{step.name}-seed{step.config.seed}"
            say(f"\n[{number}/{len(steps)}] {run_name}: {step.description}")
            rows.append(run_step(experiment, study, step, index[step.name], run_name, profile, data, force, say))
        tracking.log_table([{k: v for k, v in row.items() if k != "correct"} for row in rows], "ladder.json")
        tracking.log_dict(ladder_evidence(rows, steps), "ladder_summary.json")
    return rows


def ladder_evidence(rows: list[dict], steps) -> dict:
    """Per-step summaries and paired changes of a ladder's rows, as plain data (logged on the parent)."""
    order = list(dict.fromkeys((s.name, s.is_baseline) for s in steps))
    unique = list({s.name: s for s in steps}.values())
    return {"steps": [dataclasses.asdict(s) for s in evidence.summarize_steps(rows, order)],
            "changes": [dataclasses.asdict(c) for c in evidence.compare_steps(rows, evidence.ladder_pairs(unique))]}


def run_step(experiment, study, step, index, run_name, profile, data, force, say) -> dict:
    """One step and seed: reuse the finished run of the same work, or train it in a nested run; its row."""
    config = step.config
    fingerprint = data.fingerprint(**config.split_args())
    key = work_key(config, fingerprint)
    tags = step_tags(study, step, index, profile, config, fingerprint, key)
    say(f"    {config.model} {dict(config.model_args)}, {config.epochs} epochs, seed {config.seed}, "
        f"{fingerprint['train_size']} train / {fingerprint['val_size']} val / {fingerprint['test_size']} test images")
    previous = None if force else tracking.find_finished(experiment, key)
    if previous is not None:
        metrics = tracking.copy_run(previous, experiment, run_name, tags).data.metrics
        predictions = tracking.load_json_artifact(previous.info.run_id, "test_predictions.json") or {}
        correct = [p == y for p, y in zip(predictions.get("predictions", []), predictions.get("labels", []), strict=True)]
        say(f"    reused finished run {previous.info.run_id} (same config and data; --force retrains)")
    else:
        splits = data.splits(**config.split_args())
        begin, end = progress_printer(config.epochs, say)
        with tracking.run(experiment, run_name, tags, nested=True):
            result = train_in_run(config, splits, on_epoch=(end,), on_epoch_begin=(begin,))
        say(f"    test accuracy {result.test_accuracy:.4f} after {result.epochs_run} epochs"
            f"{' (stopped early)' if result.stopped_early else ''}, {result.train_seconds:.0f} s")
        metrics, correct = result.metrics(), (result.test_predictions == result.test_labels).tolist()
    return {
        "step": step.name, "seed": config.seed, "baseline": step.is_baseline, "compare_to": step.compare_to,
        "test_accuracy": metrics["test_accuracy"], "best_val_accuracy": metrics["best_val_accuracy"],
        "reported_test_accuracy": step.reported_test_accuracy, "epochs_run": int(metrics["epochs_run"]),
        "epochs": config.epochs, "train_seconds": metrics["train_seconds"],
        "train_cpu_seconds": metrics["train_cpu_seconds"], "num_params": int(metrics["num_params"]),
        "flops": int(metrics["flops"]), "seconds_per_epoch": metrics["seconds_per_epoch"],
        "reused": previous is not None, "correct": correct or None,
    }
