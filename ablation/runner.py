"""The shared runner: a step's work identified by its content, reused when finished, else trained in its own run.

The ladder (and every command that trains) goes through here: `run_ladder` for a study's steps,
`train_in_run` for one config inside an open nested run. Keras is imported in `train_in_run`
alone, when something has to train, so re-running a finished study costs no TensorFlow start-up.
"""

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field

from ablation import console, evidence, tracking
from ablation.config import Config, StudyError
from ablation.console import Display
from ablation.data import LazySplits, resolve_data_path
from ablation.tracking import Kind, Tag

LOG_MODELS = ("final", "all", "none")  # which trained networks a ladder logs as MLflow models


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


def train_in_run(config, splits, on_epoch=(), on_epoch_begin=(), on_batch=(), data_file=None, log_model=False):
    """Train `config` inside the active run, logging params, datasets, every epoch and the result; returns the Result.

    `data_file`: where the images came from (None: Keras' download); `log_model`: also log the
    trained network as an MLflow model.
    """
    with console.native_stderr_hidden():
        from ablation.train import train  # Keras: imported only when something trains

    tracking.log_config(config, {})
    tracking.log_datasets(splits, data_file)
    result = train(config, splits, on_epoch=(tracking.log_epoch, *on_epoch), on_epoch_begin=on_epoch_begin,
                   on_batch=on_batch)
    tracking.log_result(result, splits.class_names)
    if log_model:
        log_network(config, splits, result)
    return result


def log_network(config, splits, result):
    """The trained network as the run's MLflow model, saying what input it takes."""
    inputs = "float32 images (N, 32, 32, 3), pixel values / 255"
    if result.input_mean is not None:
        inputs += ", minus the training images' mean (the run's artifact input_mean.json)"
        tracking.log_dict({"input_mean": result.input_mean.tolist()}, "input_mean.json")
    metadata = {"input": inputs, "output": "class probabilities", "class_names": list(splits.class_names),
                "config_hash": config.hash(), "test_accuracy": result.test_accuracy}
    tracking.log_keras_model(result.network, splits.x_test[:1].astype("float32") / 255.0, metadata)


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
    log_model: bool = False  # log the trained network as an MLflow model


def ladder_units(study, profile, steps, log_models="none", overrides=None) -> list[Unit]:
    """The ladder's units: one per resolved step (and seed), tagged as ladder steps.

    `log_models`: which log their trained network (final: the study's last step that is no
    baseline; all; none). `overrides`: the command line's --set values, recorded as a tag.
    """
    seeds = {step.config.seed for step in steps}
    index = {name: i for i, name in enumerate(dict.fromkeys(s.name for s in steps), start=1)}
    final = [s.name for s in study.steps if not s.is_baseline][-1]
    units = []
    for step in steps:
        tags = {Tag.KIND: Kind.LADDER_STEP, Tag.STUDY: study.name, Tag.STEP: step.name,
                Tag.STEP_INDEX: index[step.name], Tag.ORDER: f"{index[step.name]:03d}-seed{step.config.seed:05d}",
                Tag.BASELINE: step.is_baseline, Tag.PROFILE: profile.name,
                Tag.DESCRIPTION: step.description, Tag.NOTE: step.description,
                Tag.OVERRIDES: json.dumps(overrides or {}, sort_keys=True)}
        if step.reported_test_accuracy is not None:
            tags[Tag.REPORTED_TEST_ACCURACY] = step.reported_test_accuracy
        if step.compare_to is not None:
            tags[Tag.COMPARE_TO] = step.compare_to
        name = step.name if len(seeds) == 1 else f"{step.name}-seed{step.config.seed}"
        row = {"step": step.name, "baseline": step.is_baseline, "compare_to": step.compare_to,
               "reported_test_accuracy": step.reported_test_accuracy}
        log_model = log_models == "all" or (log_models == "final" and step.name == final)
        units.append(Unit(name, step.config, tags, f"{name}: {step.description}", row, log_model))
    return units


def run_ladder(study, profile, steps, data_path=None, force=False, say=print, log_models="final",
               overrides=None) -> list[dict]:
    """Run (or reuse) every resolved step under one parent run; returns one row per step and seed.

    `say`: a function printing a line, or a `Display` (bars on a terminal); `log_models` and
    `overrides` as `ladder_units` takes them.
    """
    seeds = sorted({step.config.seed for step in steps})
    split_seeds = sorted({step.config.split_seed for step in steps})
    changed = json.dumps(overrides or {}, sort_keys=True)
    parent_tags = {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name, Tag.PROFILE: profile.name, Tag.SEEDS: seeds,
                   Tag.OVERRIDES: changed,
                   Tag.NOTE: f"{study.title}: {profile.name} profile" + (f", --set {changed}" if overrides else "")}
    units = ladder_units(study, profile, steps, log_models, overrides)
    say(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
    if overrides:
        say(f"overrides (every step): {changed}")
    say(f"training seeds {seeds}, split seed(s) {split_seeds}")
    return run_units(study, f"{study.name}-{profile.name}", parent_tags, units, data_path, force, say,
                     summarize=lambda rows: ladder_evidence(rows, steps))


def run_units(study, parent_name, parent_tags, units, data_path=None, force=False, say=print,
              summarize=None) -> list[dict]:
    """Every unit under one parent run (reused when finished, else trained); one row per unit.

    `summarize(rows)`, if given, returns a dict logged on the parent as `summary.json` (the ladder's
    intervals and tests, a design's attributions). `say`: a function printing a line, or a `Display`.
    """
    display = say if isinstance(say, Display) else Display(live=False, out=say)
    data = LazySplits(data_path, display.say)  # read only if some unit has to train (a wrong path fails here)
    experiment = tracking.experiment_id(study.name)
    for run_id in tracking.sweep_stale_runs(experiment):
        display.say(f"marked stale run {run_id} KILLED (its process had died)")
    rows, planned = [], 0
    with tracking.stop_on_sigterm(), tracking.run(experiment, parent_name, parent_tags) as parent:
        tracking.log_study_file(study.path)
        display.say(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent.info.run_id}")
        say_ui(display.say, experiment, parent.info.run_id)
        display.start_overall(parent_name, sum(unit.config.epochs for unit in units), "epochs")
        for number, unit in enumerate(units, start=1):
            display.say(f"\n[{number}/{len(units)}] {unit.label or unit.name}")
            display.update_overall(description=f"[{number}/{len(units)}] {unit.name}")
            rows.append(run_unit(experiment, unit, data, force, display))
            planned += unit.config.epochs  # a reused or early-stopped unit's epochs count as done
            display.update_overall(completed=planned)
        tracking.log_table([{k: v for k, v in row.items() if k != "correct"} for row in rows], "units.json")
        if summarize is not None:
            tracking.log_dict(summarize(rows), "summary.json")
    say_ui(display.say, experiment, parent.info.run_id)
    return rows


def say_ui(say, experiment: str, parent_run_id: str, order_by: str = tracking.BY_ORDER):
    """Where the MLflow UI lists a parent run's runs (sorted by `order_by`), and how to serve it."""
    say(f"MLflow UI: {tracking.ui_url(experiment, parent_run_id, order_by)}")
    command = tracking.ui_command()
    if command:
        say(f"  (serve it with: {command})")


def run_tags(unit: Unit, fingerprint: dict) -> dict:
    """A unit's tags with the identity of its work: config hash, work key, seeds and the data fingerprint."""
    config = unit.config
    return {**unit.tags, Tag.CONFIG_HASH: config.hash(), Tag.WORK_KEY: work_key(config, fingerprint),
            Tag.SEED: config.seed, Tag.SPLIT_SEED: config.split_seed, **tracking.data_tags(fingerprint)}


def run_unit(experiment, unit: Unit, data, force=False, say=print) -> dict:
    """One unit: reuse the finished run of the same work, or train it in a nested run; its row of results.

    `say`: a function printing a line, or a `Display` (then an epoch bar is drawn too).
    """
    display = say if isinstance(say, Display) else Display(live=False, out=say)
    config = unit.config
    fingerprint = data.fingerprint(**config.split_args())
    tags = run_tags(unit, fingerprint)
    key = tags[Tag.WORK_KEY]
    say(f"    {config.model} {dict(config.model_args)}, {config.epochs} epochs, seed {config.seed}, "
        f"{fingerprint['train_size']} train / {fingerprint['val_size']} val / {fingerprint['test_size']} test images")
    previous = None if force else tracking.find_finished(experiment, key)
    if previous is not None:
        metrics = tracking.copy_run(previous, experiment, unit.name, tags).data.metrics
        predictions = tracking.load_json_artifact(previous.info.run_id, "test_predictions.json") or {}
        correct = [p == y for p, y in zip(predictions.get("predictions", []), predictions.get("labels", []), strict=True)]
        say(f"    reused finished run {previous.info.run_id} (same config and data; --force retrains)")
        if unit.log_model and not tracking.has_logged_model(previous):
            say("    no model to show: that run logged none (--force retrains and logs it)")
    else:
        splits = data.splits(**config.split_args())
        begin, end = progress_printer(config.epochs, say)
        batches = math.ceil(len(splits.y_train) / config.batch_size)
        one_more = lambda epoch, logs: display.update_overall(advance=1)  # noqa: E731
        with display.epoch_bar(config.epochs, batches) as (bar_begin, bar_batch), \
                tracking.run(experiment, unit.name, tags, nested=True, system_metrics=True):
            result = train_in_run(config, splits, on_epoch=(end, one_more), on_epoch_begin=(begin, *bar_begin),
                                  on_batch=bar_batch, data_file=resolve_data_path(data.path), log_model=unit.log_model)
        say(f"    test accuracy {result.test_accuracy:.4f} after {result.epochs_run} epochs"
            f"{' (stopped early)' if result.stopped_early else ''}, {result.train_seconds:.0f} s")
        metrics, correct = result.metrics(), (result.test_predictions == result.test_labels).tolist()
    return {
        **unit.row, "name": unit.name, "seed": config.seed, "work_key": key,
        "test_accuracy": metrics["test_accuracy"], "best_val_accuracy": metrics["best_val_accuracy"],
        "epochs_run": int(metrics["epochs_run"]), "epochs": config.epochs, "train_seconds": metrics["train_seconds"],
        "train_cpu_seconds": metrics["train_cpu_seconds"], "num_params": int(metrics["num_params"]),
        "flops": int(metrics["flops"]), "seconds_per_epoch": metrics["seconds_per_epoch"],
        "reused": previous is not None, "correct": correct or None,
    }


def ladder_evidence(rows: list[dict], steps) -> dict:
    """Per-step summaries and paired changes of a ladder's rows, as plain data."""
    order = list(dict.fromkeys((s.name, s.is_baseline) for s in steps))
    unique = list({s.name: s for s in steps}.values())
    return {"steps": [dataclasses.asdict(s) for s in evidence.summarize_steps(rows, order)],
            "changes": [dataclasses.asdict(c) for c in evidence.compare_steps(rows, evidence.ladder_pairs(unique))]}
