"""The shared runner: a step's work identified by its content, reused when finished, else trained in its own run.

The ladder (and every command that trains) goes through here: `run_ladder` for a study's steps,
`train_in_run` for one config inside an open nested run. Keras is imported in `train_in_run`
alone, when something has to train, so re-running a finished study costs no TensorFlow start-up.

Nothing is lost and nothing is recorded twice: a unit that trains saves a checkpoint after every
epoch (with the store, keyed by its work); the same command after a kill resumes the interrupted
parent run and each unfinished unit in its own run, from its last saved epoch. A unit whose training
fails (a diverging loss, say) ends FAILED with the reason, and the other units go on.
"""

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field

from ablation import tracking
from ablation.analysis import evidence
from ablation.core import console, interrupt
from ablation.core.config import Config, StudyError
from ablation.core.console import Display
from ablation.data import LazySplits, resolve_data_path
from ablation.tracking import Kind, Tag
from ablation.training import checkpoint


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
            f"lr {logs.get('learning_rate', float('nan')):.1e}  "
            f"BN check {logs.get('val_accuracy_moving_bn', float('nan')):.4f} moving / "
            f"{logs.get('val_accuracy_recomputed_bn', float('nan')):.4f} recomputed  {seconds:.1f} s")

    return begin, end


def train_in_run(config, splits, on_epoch=(), on_epoch_begin=(), checkpoint_folder=None, say=print, on_batch=(),
                 data_file=None, log_model=False):
    """Train `config` inside the active run, logging params, datasets, every epoch and the result; returns the Result.

    With a save in `checkpoint_folder`, training goes on from it: the epochs it holds that the run has
    not logged (a kill between the save and the log, or a new run) are logged first. `data_file`:
    where the images came from (None: Keras' download); `log_model`: log the trained network as an
    MLflow model too.
    """
    interrupt.check()  # a stop asked for already: spare TensorFlow's start-up
    with console.native_stderr_hidden():
        from ablation.training.fit import train  # Keras: imported only when something trains

    tracking.log_config(config, {})
    tracking.log_datasets(splits, data_file)
    saved = checkpoint.read(checkpoint_folder) if checkpoint_folder else None
    if saved is not None:
        for epoch in range(tracking.logged_epochs(tracking.active_run_id()) + 1, saved.epoch + 1):
            tracking.log_epoch(epoch, {key: values[epoch - 1] for key, values in saved.history.items()})
        tracking.set_tags({Tag.RESUMED_AT_EPOCH: saved.epoch})
        say(f"    resuming from the checkpoint after epoch {saved.epoch}/{config.epochs}")
    result = train(config, splits, on_epoch=(tracking.log_epoch, *on_epoch), on_epoch_begin=on_epoch_begin,
                   checkpoint_folder=checkpoint_folder, on_batch=on_batch)
    tracking.log_result(result, splits.class_names)
    if log_model:
        log_network(config, splits, result)
    return result


def log_network(config, splits, result):
    """The trained network as the run's MLflow model, saying what input it takes."""
    inputs = f"float32 images (N, {', '.join(map(str, splits.x_test.shape[1:]))}), pixel values / 255"
    if result.input_mean is not None:
        inputs += ", minus the training images' mean (the run's artifact input_mean.json)"
        tracking.log_dict({"input_mean": result.input_mean.tolist()}, "input_mean.json")
    metadata = {"input": inputs, "output": "class probabilities", "class_names": list(splits.class_names),
                "config_hash": config.hash(), "test_accuracy": result.test_accuracy}
    from ablation.models.layers import portable  # Keras: loaded already, the network is trained

    # Saved with Keras' own BatchNormalization: the model loads where only MLflow and Keras are installed.
    tracking.log_keras_model(portable(result.network), splits.x_test[:1].astype("float32") / 255.0, metadata)


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


def ladder_units(study, profile, steps, log_models="none") -> list[Unit]:
    """The ladder's units: one per resolved step (and seed), tagged as ladder steps.

    `log_models`: which log their trained network (final: the study's last step that is no
    baseline; all; none).
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
                Tag.OVERRIDES: study.overrides_json()}
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


def run_ladder(study, profile, steps, data_path=None, force=False, say=print, keep_checkpoints=False,
               stop_on_failure=False, log_models="final", queue=None, rope=evidence.stats.ROPE,
               alpha=evidence.stats.ALPHA) -> list[dict]:
    """Run (or reuse) every resolved step under one parent run; returns one row per step and seed.

    `say`: a function printing a line, or a `Display` (bars on a terminal); `log_models` as
    `ladder_units` takes it; `queue`: `run_units` through the shared queue (`queue.run_units_shared`,
    the same arguments), or None to run the units here; `rope`, `alpha`: the verdicts' equivalence
    margin and level, recorded on the parent run and used by its summary (and later by the report).
    """
    seeds = sorted({step.config.seed for step in steps})
    split_seeds = sorted({step.config.split_seed for step in steps})
    parent_tags = {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name, Tag.PROFILE: profile.name, Tag.SEEDS: seeds,
                   Tag.OVERRIDES: study.overrides_json(), Tag.NOTE: f"{study.title}: {profile.name} profile",
                   Tag.ROPE: rope, Tag.ALPHA: alpha, Tag.METRIC: study.metric}
    units = ladder_units(study, profile, steps, log_models)
    say(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
    if study.overrides:
        say(f"overrides (every step): {study.overrides_json()}")
    say(f"training seeds {seeds}, split seed(s) {split_seeds}")
    return (queue or run_units)(study, f"{study.name}-{profile.name}", parent_tags, units, data_path, force, say,
                                summarize=lambda rows: ladder_evidence(rows, steps, rope, alpha, study.metric),
                                keep_checkpoints=keep_checkpoints, stop_on_failure=stop_on_failure)


class UnitFailed(Exception):
    """A unit's training failed and the caller asked to stop there."""


def run_units(study, parent_name, parent_tags, units, data_path=None, force=False, say=print,
              summarize=None, keep_checkpoints=False, stop_on_failure=False) -> list[dict]:
    """Every unit under one parent run (reused when finished, else trained); one row per unit.

    An interrupted parent of the same plan (its name and its units' work) is resumed, with its
    unfinished units' runs. A unit that fails is a row with status "failed"; `stop_on_failure` raises
    UnitFailed there instead. `summarize(rows)`, if given, returns a dict logged on the parent as
    `summary.json` (the ladder's intervals and tests, a design's attributions). `say`: a function
    printing a line, or a `Display` (bars on a terminal).
    """
    # Phase 1: each unit's work, and the data of those that must train, before any run opens.
    display = say if isinstance(say, Display) else Display(live=False, out=say)
    data = LazySplits(data_path, say)  # a wrong path fails here
    tagged = [(unit, run_tags(unit, data.fingerprint(**unit.config.split_args()))) for unit in units]
    plan = plan_key(parent_name, [tags[Tag.WORK_KEY] for _, tags in tagged])
    experiment = tracking.experiment_id(study.name)
    for run_id in tracking.sweep_stale_runs(experiment):
        say(f"marked stale run {run_id} KILLED (its process had died)")
    for unit, tags in tagged:
        if force or tracking.find_finished(experiment, tags[Tag.WORK_KEY]) is None:
            data.splits(**unit.config.split_args())  # a data problem fails now, leaving no run behind
    interrupt.check()  # a stop asked for while the data was read: no run opened yet
    # Phase 2: the parent run (resumed when this plan was interrupted) and its units.
    earlier = None if force else tracking.find_interrupted(experiment, {Tag.PLAN_KEY: plan})
    children = tracking.child_runs(experiment, earlier.info.run_id) if earlier else {}
    rows, planned = [], 0
    with tracking.run(experiment, parent_name, {**parent_tags, Tag.PLAN_KEY: plan},
                      resume=earlier.info.run_id if earlier else None) as parent:
        tracking.log_study_file(study.path)
        say(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, "
            f"{'resumed ' if earlier else ''}parent run {parent.info.run_id}")
        say_ui(say, experiment, parent.info.run_id)
        display.start_overall(parent_name, sum(unit.config.epochs for unit in units), "epochs")
        for number, (unit, tags) in enumerate(tagged, start=1):
            interrupt.check()
            say(f"\n[{number}/{len(units)}] {unit.label or unit.name}")
            display.update_overall(description=f"[{number}/{len(units)}] {unit.name}")
            rows.append(run_unit(experiment, unit, tags, data, force, display, children.get(unit.name), keep_checkpoints))
            planned += unit.config.epochs  # a reused, resumed or early-stopped unit's epochs count as done
            display.update_overall(completed=planned)
            if rows[-1]["status"] == "failed" and stop_on_failure:
                raise UnitFailed(f"{unit.name} failed: {rows[-1]['error']}")
        tracking.log_table([{k: v for k, v in row.items() if k != "correct"} for row in rows], "units.json")
        if summarize is not None:
            tracking.log_dict(summarize(rows), "summary.json")
    say_ui(say, experiment, parent.info.run_id)
    return rows


def say_ui(say, experiment: str, parent_run_id: str, order_by: str = tracking.BY_ORDER):
    """Where the MLflow UI lists a parent run's runs (sorted by `order_by`), and how to serve it."""
    say(f"MLflow UI: {tracking.ui_url(experiment, parent_run_id, order_by)}")
    command = tracking.ui_command()
    if command:
        say(f"  (serve it with: {command})")


def plan_key(parent_name: str, work_keys: list[str]) -> str:
    """Identifies an invocation's plan: the same parent name over the same units' work, in order."""
    return hashlib.sha256("|".join([parent_name, *work_keys]).encode()).hexdigest()[:16]


def run_tags(unit: Unit, fingerprint: dict) -> dict:
    """A unit's tags with the identity of its work: config hash, work key, seeds and the data fingerprint."""
    config = unit.config
    return {**unit.tags, Tag.CONFIG_HASH: config.hash(), Tag.WORK_KEY: work_key(config, fingerprint),
            Tag.SEED: config.seed, Tag.SPLIT_SEED: config.split_seed, Tag.BN_STATISTICS: config.bn_statistics,
            **tracking.data_tags(fingerprint)}


def run_unit(experiment, unit: Unit, tags: dict, data, force=False, say=print, earlier=None,
             keep_checkpoints=False, parent_run_id=None, on_run=None) -> dict:
    """One unit: its run finished before an interruption (`earlier`), a reused run of the same work, or trained.

    The one executor of a unit, here and in a queue's worker: that one gives the planner's `parent_run_id`
    (another process's run) and `on_run(run_id)`, told the unit's run as soon as it exists.
    """
    config, key = unit.config, tags[Tag.WORK_KEY]
    fingerprint = data.fingerprint(**config.split_args())
    say(f"    {config.model} {dict(config.model_args)}, {config.epochs} epochs, seed {config.seed}, "
        f"{fingerprint['train_size']} train / {fingerprint['val_size']} val / {fingerprint['test_size']} test images")
    same_work = earlier is not None and earlier.data.tags.get(Tag.WORK_KEY) == key
    if same_work and earlier.info.status == "FINISHED":
        say(f"    finished before the interruption (run {earlier.info.run_id})")
        return unit_row(unit, key, earlier.data.metrics, predicted_correctly(earlier.info.run_id),
                        reused=Tag.REUSED_FROM in earlier.data.tags)
    previous = None if force else finished_work(experiment, key, say)
    if previous is not None:
        copied = tracking.copy_run(previous, experiment, unit.name, tags, parent_run_id=parent_run_id)
        metrics = copied.data.metrics
        if on_run is not None:
            on_run(copied.info.run_id)
        say(f"    reused finished run {previous.info.run_id} (same config and data; --force retrains)")
        if unit.log_model and not tracking.has_logged_model(previous):
            say("    no model to show: that run logged none (--force retrains and logs it)")
        return unit_row(unit, key, metrics, predicted_correctly(previous.info.run_id), reused=True)
    return train_unit(experiment, unit, tags, data, earlier.info.run_id if same_work else None, keep_checkpoints, say,
                      parent_run_id, on_run)


def finished_work(experiment: str, key: str, say):
    """A FINISHED run of this work to reuse, or None; waits first while another process trains it."""
    wait_for_other_process(experiment, key, say)
    return tracking.find_finished(experiment, key)


def wait_for_other_process(experiment: str, key: str, say, poll: float = 1.0):
    """Wait while another process of this host trains the same work: then its run is reused, not trained twice.

    Two commands on one store (a ladder and an attribution, or the same command twice) would
    otherwise train the same unit side by side, sharing its checkpoint folder.
    """
    other = tracking.live_run_of(experiment, key)
    if other is not None:
        say(f"    waiting: run {other.info.run_id} (process {other.data.tags.get(Tag.PID)}) is training the same "
            "work; its result will be reused")
    while other is not None:
        interrupt.check()
        time.sleep(poll)
        other = tracking.live_run_of(experiment, key)


def train_unit(experiment, unit: Unit, tags: dict, data, resume, keep_checkpoints, say, parent_run_id=None,
               on_run=None) -> dict:
    """Train a unit in its nested run (`resume`: its unfinished run to continue), from its checkpoint if any.

    The checkpoint is kept when the run is KILLED (the next run goes on from it) and removed when it
    ends FINISHED or FAILED, unless `keep_checkpoints`.
    """
    config, key = unit.config, tags[Tag.WORK_KEY]
    splits, folder = data.splits(**config.split_args()), tracking.checkpoint_folder(key)
    if resume and checkpoint.read(folder) is None and tracking.logged_epochs(resume) > 0:
        resume = None  # its epochs cannot go on (the checkpoint is gone): a new run, not the same epochs twice
    begin, end = progress_printer(config.epochs, say)
    display = say if isinstance(say, Display) else Display(live=False, out=say)
    one_more = lambda epoch, logs: display.update_overall(advance=1)  # noqa: E731  (the whole command's bar)
    try:
        with display.epoch_bar(config.epochs, math.ceil(len(splits.y_train) / config.batch_size)) as bar, \
                tracking.run(experiment, unit.name, tags, nested=True, resume=resume, system_metrics=True,
                             parent_run_id=parent_run_id) as run:
            if on_run is not None:
                on_run(run.info.run_id)
            result = train_in_run(config, splits, on_epoch=(end, one_more), on_epoch_begin=(begin, *bar[0]),
                                  checkpoint_folder=folder, say=say, on_batch=bar[1],
                                  data_file=resolve_data_path(data.path), log_model=unit.log_model)
    except Exception as error:  # this unit's failure (diverged, out of memory...): its run says why, the rest go on
        say(f"    FAILED: {type(error).__name__}: {error}")
        if not keep_checkpoints:
            checkpoint.remove(folder)
        return unit_row(unit, key, {}, None, reused=False, error=f"{type(error).__name__}: {error}")
    if not keep_checkpoints:
        checkpoint.remove(folder)
    say(f"    test accuracy {result.test_accuracy:.4f} after {result.epochs_run} epochs"
        f"{' (stopped early)' if result.stopped_early else ''}, {result.train_seconds:.0f} s")
    return unit_row(unit, key, result.metrics(), (result.test_predictions == result.test_labels).tolist(), reused=False)


def predicted_correctly(run_id: str) -> list | None:
    """Per test image, whether a finished run predicted it right (from its test_predictions.json)."""
    predictions = tracking.load_json_artifact(run_id, "test_predictions.json") or {}
    correct = [p == y for p, y in zip(predictions.get("predictions", []), predictions.get("labels", []), strict=True)]
    return correct or None


ROW_METRICS = ("test_accuracy", "test_top5_accuracy", "best_val_accuracy", "train_seconds", "train_cpu_seconds",
               "seconds_per_epoch")
ROW_COUNTS = ("epochs_run", "num_params", "flops")


def unit_row(unit: Unit, key: str, metrics: dict, correct, reused: bool, error: str | None = None) -> dict:
    """A unit's row of results; a failed unit has NaN metrics, zero counts, status "failed" and its error."""
    return {
        **unit.row, "name": unit.name, "seed": unit.config.seed, "work_key": key, "epochs": unit.config.epochs,
        **{k: metrics.get(k, math.nan) for k in ROW_METRICS}, **{k: int(metrics.get(k, 0)) for k in ROW_COUNTS},
        "reused": reused, "correct": correct, "status": "failed" if error else "finished", "error": error,
    }


def ladder_evidence(rows: list[dict], steps, rope: float = evidence.stats.ROPE, alpha: float = evidence.stats.ALPHA,
                    metric: str = "test_accuracy") -> dict:
    """Per-step summaries, the paired changes (of `metric`) judged as one family, the variance split and the failed
    rows, as plain data."""
    order = list(dict.fromkeys((s.name, s.is_baseline) for s in steps))
    unique = list({s.name: s for s in steps}.values())
    finished = [row for row in rows if row["status"] == "finished"]
    changes = evidence.compare_steps(finished, evidence.ladder_pairs(unique), rope, alpha, metric)
    return {"metric": metric, "steps": [dataclasses.asdict(s) for s in evidence.summarize_steps(finished, order)],
            "changes": [dataclasses.asdict(c) for c in changes],
            "variance": dataclasses.asdict(evidence.variance_split(finished, changes)),
            "failed": [{"step": r["step"], "seed": r["seed"], "error": r["error"]} for r in rows if r["status"] == "failed"]}
