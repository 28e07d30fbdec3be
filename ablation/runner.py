"""The shared runner: a step's work identified by its content, reused when finished, else trained in its own run.

The ladder (and every command that trains) goes through here: `run_ladder` for a study's steps,
`train_in_run` for one config inside an open nested run. Keras is imported in `train_in_run`
alone, when something has to train, so re-running a finished study costs no TensorFlow start-up.
"""

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field

from ablation import evidence, tracking
from ablation.config import Config, StudyError
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


@dataclass(frozen=True)
class Unit:
    """One training the project needs: a run name, the config as trained, and the tags saying what it is for.

    Its identity is its content (`work_key`: the config hash and the data digest), so the same unit
    asked for by a ladder, a design or a worker is trained once and reused everywhere after.
    """

    name: str
    config: Config
    tags: dict  # who the run is (kind, study, step, ...): the work's identity is added by `run_unit`
    label: str = ""  # a line saying what is trained, printed before it
    row: dict = field(default_factory=dict)  # what the caller wants back in the unit's row (e.g. its step)


def ladder_units(study, profile, steps) -> list[Unit]:
    """The ladder's units: one per resolved step (and seed), tagged as ladder steps."""
    seeds = {step.config.seed for step in steps}
    index = {name: i for i, name in enumerate(dict.fromkeys(s.name for s in steps), start=1)}
    units = []
    for step in steps:
        tags = {Tag.KIND: Kind.LADDER_STEP, Tag.STUDY: study.name, Tag.STEP: step.name,
                Tag.STEP_INDEX: index[step.name], Tag.BASELINE: step.is_baseline, Tag.PROFILE: profile.name,
                Tag.DESCRIPTION: step.description}
        if step.reported_test_accuracy is not None:
            tags[Tag.REPORTED_TEST_ACCURACY] = step.reported_test_accuracy
        if step.compare_to is not None:
            tags[Tag.COMPARE_TO] = step.compare_to
        name = step.name if len(seeds) == 1 else f"{step.name}-seed{step.config.seed}"
        row = {"step": step.name, "baseline": step.is_baseline, "compare_to": step.compare_to,
               "reported_test_accuracy": step.reported_test_accuracy}
        units.append(Unit(name, step.config, tags, f"{name}: {step.description}", row))
    return units


def run_ladder(study, profile, steps, data_path=None, force=False, say=print) -> list[dict]:
    """Run (or reuse) every resolved step under one parent run; returns one row per step and seed."""
    seeds = sorted({step.config.seed for step in steps})
    split_seeds = sorted({step.config.split_seed for step in steps})
    parent_tags = {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name, Tag.PROFILE: profile.name, Tag.SEEDS: seeds}
    units = ladder_units(study, profile, steps)
    say(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
    say(f"training seeds {seeds}, split seed(s) {split_seeds}")
    return run_units(study, f"{study.name}-{profile.name}", parent_tags, units, data_path, force, say,
                     summarize=lambda rows: ladder_evidence(rows, steps))


def run_units(study, parent_name, parent_tags, units, data_path=None, force=False, say=print,
              summarize=None) -> list[dict]:
    """Every unit under one parent run (reused when finished, else trained); one row per unit.

    `summarize(rows)`, if given, returns a dict logged on the parent as `summary.json` (the ladder's
    intervals and tests, a design's attributions).
    """
    data = LazySplits(data_path, say)  # read only if some unit has to train (a wrong path fails here)
    experiment = tracking.experiment_id(study.name)
    for run_id in tracking.sweep_stale_runs(experiment):
        say(f"marked stale run {run_id} KILLED (its process had died)")
    rows = []
    with tracking.stop_on_sigterm(), tracking.run(experiment, parent_name, parent_tags) as parent:
        tracking.log_study_file(study.path)
        say(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent.info.run_id}")
        for number, unit in enumerate(units, start=1):
            say(f"\n[{number}/{len(units)}] {unit.label or unit.name}")
            rows.append(run_unit(experiment, unit, data, force, say))
        tracking.log_table([{k: v for k, v in row.items() if k != "correct"} for row in rows], "units.json")
        if summarize is not None:
            tracking.log_dict(summarize(rows), "summary.json")
    return rows


def run_tags(unit: Unit, fingerprint: dict) -> dict:
    """A unit's tags with the identity of its work: config hash, work key, seeds and the data fingerprint."""
    config = unit.config
    return {**unit.tags, Tag.CONFIG_HASH: config.hash(), Tag.WORK_KEY: work_key(config, fingerprint),
            Tag.SEED: config.seed, Tag.SPLIT_SEED: config.split_seed, **tracking.data_tags(fingerprint)}


def run_unit(experiment, unit: Unit, data, force=False, say=print) -> dict:
    """One unit: reuse the finished run of the same work, or train it in a nested run; its row of results."""
    config = unit.config
    fingerprint = data.fingerprint(**config.split_args())
    tags = run_tags(unit, fingerprint)
    key = tags[Tag.WORK_KEY]
    say(f"    {config.model} {dict(config.model_args)}, {config.epochs} epochs, seed {config.seed}, "
        f"{fingerprint['train_size']} train / {fingerprint['val_size']} val / {fingerprint['test_size']} test images")
    previous = None if force else tracking.find_finished(experiment, key)
    if previous is not None:
        metrics = tracking.copy_run(previous, experiment, unit.name, tags).data.metrics
        correct = predictions_correct(previous.info.run_id)
        say(f"    reused finished run {previous.info.run_id} (same config and data; --force retrains)")
    else:
        splits = data.splits(**config.split_args())
        begin, end = progress_printer(config.epochs, say)
        with tracking.run(experiment, unit.name, tags, nested=True):
            result = train_in_run(config, splits, on_epoch=(end,), on_epoch_begin=(begin,))
        say(f"    test accuracy {result.test_accuracy:.4f} after {result.epochs_run} epochs"
            f"{' (stopped early)' if result.stopped_early else ''}, {result.train_seconds:.0f} s")
        metrics, correct = result.metrics(), (result.test_predictions == result.test_labels).tolist()
    return unit_row(unit, key, metrics, correct, reused=previous is not None)


def predictions_correct(run_id: str) -> list[bool]:
    """Per test image, whether a finished run predicted it right (from its test_predictions.json)."""
    predictions = tracking.load_json_artifact(run_id, "test_predictions.json") or {}
    return [p == y for p, y in zip(predictions.get("predictions", []), predictions.get("labels", []), strict=True)]


def unit_row(unit: Unit, key: str, metrics: dict, correct: list, reused: bool) -> dict:
    """A unit's row of results from its run's metrics: what the ladder's tables and evidence read."""
    config = unit.config
    return {
        **unit.row, "name": unit.name, "seed": config.seed, "work_key": key,
        "test_accuracy": metrics["test_accuracy"], "best_val_accuracy": metrics["best_val_accuracy"],
        "epochs_run": int(metrics["epochs_run"]), "epochs": config.epochs, "train_seconds": metrics["train_seconds"],
        "train_cpu_seconds": metrics["train_cpu_seconds"], "num_params": int(metrics["num_params"]),
        "flops": int(metrics["flops"]), "seconds_per_epoch": metrics["seconds_per_epoch"],
        "reused": reused, "correct": correct or None,
    }


def ladder_evidence(rows: list[dict], steps) -> dict:
    """Per-step summaries and paired changes of a ladder's rows, as plain data."""
    order = list(dict.fromkeys((s.name, s.is_baseline) for s in steps))
    unique = list({s.name: s for s in steps}.values())
    return {"steps": [dataclasses.asdict(s) for s in evidence.summarize_steps(rows, order)],
            "changes": [dataclasses.asdict(c) for c in evidence.compare_steps(rows, evidence.ladder_pairs(unique))]}
