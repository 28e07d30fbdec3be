"""Performance benchmark: seven ratios, each with its medians, to a CSV and a Markdown table.

Run from the repository root:

    python -m benchmarks.bench --data ../shared/data/cifar-10-python.tar.gz     # all seven ratios
    python -m benchmarks.bench --data ... --quick                                # fewer images, rounds, trials
    python -m benchmarks.bench --data ... --only 1,2 --images 1600 --rounds 6    # some ratios, more samples

The default cost about 900 CPU-seconds when a turn was one epoch (~16 minutes on two idle cores, two
or three times that when other jobs share them); ratios 1, 2 and 7 now train two epochs a turn.

Needs the `bench` extra for ratio 1 (`pip install -e '.[bench]'`: tf-keras, the source's Keras 2).

1. ladder step vs the source's code (goal >= 1.0): the source's CPU-s per training image divided by
   the project's, for the template (+ augmentation) and for the final ladder network. Project: the
   ladder's path for one step (`ablation.engine.units`: a nested run tagged as a ladder step under a ladder
   parent, `train_in_run` with the ladder's progress hooks; augmentation layers, MLflow tracking into
   a temp store). Source: the same network written in `tf_keras` (Keras 2, fused BatchNormalization)
   trained with `model.fit(ImageDataGenerator(...).flow(x, y, batch_size=32))`, as the assignment did;
   the final network also gets the source's EarlyStopping and ReduceLROnPlateau.
2. ladder step vs bare fit (goal >= 0.95): `keras.Model.fit` of the same model (augmentation layers
   included, same optimizer, loss and validation data) on in-memory arrays, with the per-epoch
   BatchNormalization check every run makes (its recompute and two passes: computation the run asks
   for, as in the project's path), no other callbacks and no tracking, divided into the project's
   cost: 0.95 means tracking, progress and data handling add 5%.
3. search with pruning vs without (goal <= 0.5): the same search (sampler seed, trials, data),
   `ablation.engine.trials.run_search` with no pruner, with the median pruner (the default) and with
   Hyperband, on a small search sized for a CPU (SEARCH_STUDY below); for each pruner, epochs trained
   until a trial first reaches the best value both searches reached, pruned / unpruned.
4. re-run of a finished smoke study (goal <= 5 s wall): `python -m ablation.ladder --profile smoke`
   again on the store the first run filled: nothing to train.
5. `python -m ablation.ladder --help` (goal <= 1 s wall).
6. `python -m ablation.report` over a store of 1,000 runs shaped like ladder and search runs (goal <= 10 s).
7. the allocator settings (goal >= 1.0): the project's CPU per training image with glibc's malloc defaults
   (`ABLATION_MALLOC=system`) divided by its cost with `ablation.core.memory.keep_freed_memory` (the default),
   on the first network; the note gives each worker's peak resident memory. The bare path of ratio 2
   applies the same settings, so ratio 2 still measures the project's own overhead.

How training is timed (ratios 1, 2, 7): each path (source, project, bare, project-glibc; per network) is one worker
process with its own TensorFlow state, and the workers take turns: the parent lets one run its setup
and first epoch (graph tracing, not counted), then each in turn two more epochs per round, while the
others wait, blocked, at an epoch's end. So every path pays its tracing once, and a slow minute of
this shared machine hits all paths alike (the order reverses every other round). Of a turn's two
epochs only the second is measured: a process that waited idle at an epoch's end can stall at the
next epoch's start (tf.data, about as long as it waited; `Turns`), and the first epoch takes that.
At each epoch's end (after the ladder's tracking and progress hooks, for the project) a worker reads
its CPU time (user + sys, all its threads) and the wall clock. The cost of a path is the median over
its measured epochs; every epoch includes its validation pass, in all paths alike. CPU time is the
steady measure: on shared cores the wall time of the same epoch doubles from one minute to the next.
"""

import argparse
import csv
import dataclasses
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import optuna

from ablation import tracking
from ablation.core import memory
from ablation.core.config import with_values
from ablation.core.profiles import Profile, get_profile
from ablation.core.study import load_study
from ablation.data import CLASS_NAMES, Splits, load_cifar10, make_splits, resolve_data_path
from ablation.engine import trials, units
from ablation.tracking import Kind, Tag
from ablation.training.bn_statistics import batch_norm_check
from ablation.training.fit import build, make_optimizer, prepare_inputs

REPO = Path(__file__).resolve().parents[1]
MODULE = "benchmarks.bench"  # what the workers run: `python -m benchmarks.bench --worker SPEC`
DEFAULT_OUT = "bench_results/bench.csv"
STUDY = REPO / "studies" / "assignment.toml"
RESULT_PREFIX = "BENCH_RESULT "  # a worker's last stdout line: this prefix, then its result as JSON
EPOCH_PREFIX = "BENCH_EPOCH "  # a training worker's line at each epoch's end, then it waits for "go"
# a_median, b_median: the medians the ratio is made of, in `unit`; a_other, b_other: the same runs
# measured another way, in `other_unit` (wall images/s beside CPU-ms/image; CPU s beside wall s).
COLUMNS = ("ratio", "case", "value", "goal", "met", "a", "a_median", "b", "b_median", "unit",
           "a_other", "b_other", "other_unit", "samples", "note")
# The profile of the benchmark's own runs: its sizes are set by the benchmark, not scaled.
BENCH_PROFILE = Profile("bench", 1.0, None, None, "the benchmark's own sizes")


@dataclasses.dataclass(frozen=True)
class Size:
    """How big the benchmark is: the default, --quick, or a test's tiny size."""

    train_images: int = 800  # per epoch; a quarter as many more are the validation images (validation_split 0.2)
    rounds: int = 4  # measured epochs per path, one per round, after one epoch of graph tracing
    networks: tuple[str, ...] = ("template", "final")
    search_trials: int = 16  # with 8, the best trial came among the median pruner's 3 unpruned first ones
    search_train_images: int = 160  # per trial epoch (a quarter as many more validate), smoke-sized
    search_epochs: int = 6  # per trial; the median pruner judges from epoch 3 on (a third of the budget)
    command_repeats: int = 3  # ratios 4-6: timed repeats of each command
    report_runs: int = 1000


SIZES = {
    "default": Size(),
    "quick": Size(train_images=320, rounds=2, search_trials=8, search_train_images=64, command_repeats=1),
}

# The networks of ratios 1, 2 and 7: the ladder step the project trains, with these depths, and the source's twin.
NETWORKS = {
    "template": {"step": "augmentation", "blocks": (5, 3, 1), "dropout_rate": 0.0, "schedule_callbacks": False},
    "final": {"step": "deeper_dropout", "blocks": (7, 5, 2), "dropout_rate": 0.5, "schedule_callbacks": True},
    # The machinery's test: the template without identity blocks, traced in seconds.
    "tiny": {"step": "augmentation", "blocks": (0, 0, 0), "dropout_rate": 0.0, "schedule_callbacks": False},
}
GOALS = {1: (">=", 1.0), 2: (">=", 0.95), "2 (wall)": (">=", 0.9), 3: ("<=", 0.5), 4: ("<=", 5.0), 5: ("<=", 1.0), 6: ("<=", 10.0), 7: (">=", 1.0)}
PRUNERS = ("none", "median", "hyperband")  # the reference first


# ---------------------------------------------------------------------------------------------
# Training measurements (ratios 1 and 2): each in a worker process.


def _clock() -> tuple[float, float]:
    """(CPU seconds of this process, all threads, user + sys; wall seconds)."""
    times = os.times()
    return times.user + times.system, time.perf_counter()


class Turns:
    """A worker's side of taking turns: it runs from the parent's `go` to its next measured epoch's end, then waits.

    The first turn (setup) is one epoch; every later turn is two, and only the second is measured (its
    mark carries the first's end as `warm_cpu`, `warm_wall`). Why: a process that sat idle at an
    epoch's end, as a worker does during the others' turns, can stall at the next epoch's start for
    about as long as it waited, in TensorFlow's tf.data (docs/stack.md#idle-training-processes-and-tfdata-the-benchmarks-wall-time);
    the unmeasured first epoch takes that stall, and the measured one starts right after an epoch, as in real training.
    """

    def __init__(self):
        self.resumed = _clock()
        self.warm = None  # (cpu, wall) at the end of this turn's unmeasured epoch
        self.first_turn = True

    def wait(self):
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("benchmark worker: the parent process went away")
        self.resumed, self.warm = _clock(), None

    def epoch_end(self, epoch=None, logs=None):
        """Mark the epoch's end and wait for the next turn; an epoch hook of `ablation.training.fit.train` too."""
        cpu, wall = _clock()
        if not self.first_turn and self.warm is None:
            self.warm = (cpu, wall)  # the turn's first epoch: not measured
            return
        mark = {"cpu": cpu, "wall": wall, "resumed_cpu": self.resumed[0], "resumed_wall": self.resumed[1]}
        if self.warm is not None:
            mark.update(warm_cpu=self.warm[0], warm_wall=self.warm[1])
        print(EPOCH_PREFIX + json.dumps(mark), flush=True)
        self.first_turn = False
        self.wait()


def load_splits(data_file: str) -> Splits:
    """The benchmark's splits, saved once by the parent process."""
    with np.load(data_file) as arrays:
        parts = [arrays[k] for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")]
    fingerprint = json.loads(Path(data_file).with_suffix(".json").read_text())
    return Splits(*parts, class_names=CLASS_NAMES, fingerprint=fingerprint)


def project_step(network: str, splits, epochs: int):
    """(study, step): the ladder step the benchmark trains, at the network's depths, E epochs, its splits."""
    spec = NETWORKS[network]
    study = load_study(STUDY)
    step = study.step(spec["step"])
    depths = dict(zip(("stage2_blocks", "stage3_blocks", "stage4_blocks"), spec["blocks"]))
    config = with_values(step.config, {
        **depths, "dropout_rate": spec["dropout_rate"], "epochs": epochs,
        "train_subset": len(splits.y_train) + len(splits.y_val), "test_subset": len(splits.y_test)})
    return study, dataclasses.replace(step, config=config)


def train_project(network: str, splits, epochs: int, turns: Turns):
    """The ladder's path for one step, tracking to $MLFLOW_TRACKING_URI; a turn ends after its epoch hooks."""
    study, step = project_step(network, splits, epochs)
    config = step.config
    tags = units.run_tags(units.ladder_units(study, BENCH_PROFILE, [step])[0], splits.fingerprint)
    lines = []
    begin, end = units.progress_printer(epochs, lines.append)
    experiment = tracking.experiment_id("bench")
    parent_tags = {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name, Tag.PROFILE: BENCH_PROFILE.name}
    with tracking.run(experiment, "bench", parent_tags), tracking.run(experiment, step.name, tags, nested=True):
        units.train_in_run(config, splits, on_epoch=(end, turns.epoch_end), on_epoch_begin=(begin,))
    if len(lines) != epochs:
        raise RuntimeError(f"expected {epochs} progress lines from units.progress_printer, got {len(lines)}")


def train_bare(network: str, splits, epochs: int, turns: Turns):
    """keras.Model.fit of the project's model (augmentation included) on arrays, with the BatchNormalization
    check every run makes per epoch (a recompute and two passes over 500 images: work the run asks for, not
    overhead); no tracking, no other hooks."""
    _, step = project_step(network, splits, epochs)
    config = step.config
    memory.keep_freed_memory()  # as the project's training does: ratio 2 compares the rest
    keras.utils.set_random_seed(config.seed)
    network, model = build(config, splits.x_train.shape[1:], len(splits.class_names))
    model.compile(optimizer=make_optimizer(config), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=config.jit_compile)  # as the project compiles
    x_train, x_val, _, _ = prepare_inputs(splits, config)
    check = batch_norm_check(config, network, x_train, x_val, splits.y_val)
    turn = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: turns.epoch_end())
    model.fit(x_train, splits.y_train, batch_size=config.batch_size, epochs=epochs,
              validation_data=(x_val, splits.y_val), shuffle=True, verbose=0, callbacks=[check, turn])


def source_network(tf_keras, blocks=(5, 3, 1), dropout_rate=0.0):
    """The assignment's template ResNet, as the assignment's Keras 2 code builds it."""
    layers = tf_keras.layers

    def block(x, filters, strides=1):
        f1, f2, f3 = filters
        shortcut = x
        x = layers.Conv2D(f1, 1, strides=strides, padding="same")(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.Conv2D(f2, 3, padding="same")(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.BatchNormalization()(layers.Conv2D(f3, 1, padding="same")(x))
        if strides != 1:
            shortcut = layers.BatchNormalization()(layers.Conv2D(f3, 1, strides=strides, padding="same")(shortcut))
        return layers.Activation("relu")(layers.Add()([x, shortcut]))

    inputs = layers.Input((32, 32, 3))
    x = layers.Conv2D(64, 3, padding="same")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    for _ in range(blocks[0]):
        x = block(x, (16, 16, 64))
    x = block(x, (32, 32, 128), strides=2)
    for _ in range(blocks[1]):
        x = block(x, (32, 32, 128))
    x = block(x, (64, 64, 256), strides=2)
    for _ in range(blocks[2]):
        x = block(x, (64, 64, 256))
    x = layers.Flatten()(layers.AveragePooling2D(2, padding="same")(x))
    if dropout_rate:
        x = layers.Dropout(dropout_rate)(x)
    return tf_keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


def train_source(tf_keras, network: str, splits, epochs: int, turns: Turns):
    """The source's code path: tf_keras, one-hot labels, ImageDataGenerator.flow into model.fit."""
    spec = NETWORKS[network]
    tf_keras.utils.set_random_seed(0)
    model = source_network(tf_keras, spec["blocks"], spec["dropout_rate"])
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    x_train, x_val = (x.astype("float32") / 255.0 for x in (splits.x_train, splits.x_val))
    y_train, y_val = (tf_keras.utils.to_categorical(y, 10) for y in (splits.y_train, splits.y_val))
    datagen = tf_keras.preprocessing.image.ImageDataGenerator(
        rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True, zoom_range=0.1)
    callbacks = [tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: turns.epoch_end())]
    if spec["schedule_callbacks"]:  # the ladder's last step: the assignment's EarlyStopping and ReduceLROnPlateau
        callbacks[:0] = [tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=10, min_delta=1e-4,
                                                          restore_best_weights=True),
                         tf_keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=5,
                                                              min_lr=1e-5)]
    model.fit(datagen.flow(x_train, y_train, batch_size=32), epochs=epochs, validation_data=(x_val, y_val),
              callbacks=callbacks, verbose=0)


def training_worker(spec: dict) -> dict:
    """One training measurement, in this (fresh) process, taking turns with the others."""
    turns = Turns()
    turns.wait()  # setup too is one at a time: tracing competes for the cores like training does
    splits = load_splits(spec["data_file"])
    network, epochs = spec["network"], spec["epochs"]
    if spec["path"] == "source":
        import tf_keras  # the `bench` extra (Keras 2): loaded by the source's worker alone

        train_source(tf_keras, network, splits, epochs, turns)
    else:
        {"project": train_project, "project-glibc": train_project, "bare": train_bare}[spec["path"]](
            network, splits, epochs, turns)
    return {"images": len(splits.y_train), "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def epoch_costs(marks: list[dict], images: int) -> dict:
    """Per-image costs from a worker's epoch marks: setup + epoch 1, then each later measured epoch.

    A measured epoch runs from the end of its turn's unmeasured epoch (`warm_cpu`, `warm_wall`; see
    `Turns`) to its own end, CPU and wall alike. A mark without them (one epoch a turn) counts its
    CPU from the previous mark (what the process did while it waited for its turn, little, is
    charged to it) and its wall time from its turn's start.
    """
    first = marks[0]
    return {
        "setup_cpu_ms": 1000 * (first["cpu"] - first["resumed_cpu"]) / images,
        "cpu_ms": [1000 * (b["cpu"] - b.get("warm_cpu", a["cpu"])) / images for a, b in zip(marks, marks[1:])],
        "wall_ms": [1000 * (b["wall"] - b.get("warm_wall", b["resumed_wall"])) / images for b in marks[1:]],
        "waiting_cpu_s": sum(b["resumed_cpu"] - a["cpu"] for a, b in zip(marks, marks[1:])),
    }


# ---------------------------------------------------------------------------------------------
# Ratio 3: the search with and without pruning, in a worker process.


# A small network on a smoke-sized slice, so that 2 x N trials fit in minutes on a CPU (eager, as the smoke
# profile runs): the assignment's template with shallow stages, searched over depth, dropout and learning rate.
SEARCH_STUDY = """
[study]
name = "bench_search"

[base]
model = "template_resnet"
model_args = {{ stage2_blocks = 1, stage3_blocks = 0, stage4_blocks = 0, dropout_rate = 0.5 }}
epochs = {epochs}
train_subset = {train_subset}
test_subset = 100
run_eagerly = true

[[steps]]
name = "small"

[search]
monitor = "val_accuracy"

[search.params.stage2_blocks]
type = "int"
low = 0
high = 2

[search.params.dropout_rate]
type = "float"
low = 0.0
high = 0.6

[search.params.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""


def search_worker(spec: dict) -> dict:
    """Run the benchmark's search with one pruner; per trial: number, value, epochs run, state."""
    path = Path(spec["reports"]) / "bench_search.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SEARCH_STUDY.format(epochs=spec["epochs"], train_subset=spec["train_images"] * 5 // 4))
    cpu, wall = _clock()
    summary = trials.run_search(load_study(path), BENCH_PROFILE, trials=spec["trials"], data_path=spec["data"],
                                storage=spec["storage"], study_name=f"bench-{spec['pruner']}",
                                pruner=spec["pruner"], reports=spec["reports"], out=lambda text: None)
    cpu1, wall1 = _clock()
    per_trial = sorted((r["number"], r["value"], r["epochs_run"], r["state"]) for r in summary["rows"])
    return {"trials": per_trial, "cpu_s": cpu1 - cpu, "wall_s": wall1 - wall}


def epochs_to_reach(trials, target: float) -> int | None:
    """Epochs trained, in trial order, until a complete trial's value first reaches `target` (maximize)."""
    total = 0
    for _, value, epochs_run, state in trials:
        total += epochs_run or 0
        if state == "complete" and value is not None and value >= target - 1e-12:
            return total
    return None


def best_value(trials) -> float:
    return max((v for _, v, _, state in trials if state == "complete" and v is not None), default=float("nan"))


# ---------------------------------------------------------------------------------------------
# Ratio 6: a store of N runs shaped like the ladder's and the search's, in a worker process.


class SyntheticRuns:
    """Writes finished runs into one experiment of $MLFLOW_TRACKING_URI, as the ladder and the search leave
    them: the whole config as params, per-epoch metrics, and for a finished training its final metrics and
    test predictions."""

    def __init__(self, experiment: str, epochs: int, folder: Path):
        self.experiment, self.epochs, self.folder = experiment, epochs, folder
        self.rng = random.Random(0)
        self.count = 0

    def write(self, name: str, tags: dict, parent=None, config=None, accuracy=0.0, last_epoch=None) -> str:
        """One run (a parent run when `config` is None); trained to `last_epoch` of the epochs (all: finished)."""
        last_epoch = self.epochs if last_epoch is None else last_epoch
        finished = config is not None and last_epoch == self.epochs
        metrics = [] if config is None else self.metrics(config, accuracy, last_epoch)
        run_id = tracking.write_run(self.experiment, name, tags=tags, params={} if config is None else config.params(),
                                    metrics=metrics, parent_run_id=parent)
        if finished:
            self.log_predictions(run_id)
        self.count += 1
        return run_id

    def metrics(self, config, accuracy: float, last_epoch: int) -> list[tuple[str, float, int]]:
        """Per-epoch metrics (the epoch as the step), then the final ones (step 0) if the run finished."""
        out = []
        for epoch in range(1, last_epoch + 1):
            values = {"loss": 2.0 / epoch, "accuracy": accuracy * epoch / self.epochs, "val_loss": 2.1 / epoch,
                      "val_accuracy": accuracy * epoch / self.epochs, "learning_rate": config.learning_rate}
            out += [(key, value, epoch) for key, value in values.items()]
        if last_epoch == self.epochs:
            final = {"test_loss": 1.0, "test_accuracy": accuracy, "epochs_run": self.epochs, "train_seconds": 60.0,
                     "train_cpu_seconds": 110.0, "seconds_per_epoch": 6.0, "num_params": 316394, "flops": 1.2e8,
                     "best_val_accuracy": accuracy}
            out += [(key, value, 0) for key, value in final.items()]
        return out

    def log_predictions(self, run_id: str):
        """test_predictions.json as `tracking.log_result` writes it: class names, labels and predictions."""
        draw = lambda: [self.rng.randrange(10) for _ in range(100)]  # noqa: E731
        payload = {"class_names": list(CLASS_NAMES), "labels": draw(), "predictions": draw()}
        (self.folder / "test_predictions.json").write_text(json.dumps(payload))
        tracking.log_report(self.folder, run_id, artifact_path="")  # the folder's files as the run's artifacts


def synthetic_fingerprint(config) -> dict:
    """A data fingerprint shaped like `make_splits`' (the quick profile's sizes), for the data.* tags."""
    return {"source": "synthetic", "train_size": 3200, "val_size": 800, "test_size": 2000, "subset_train": 4000,
            "subset_test": 2000, "seed": config.seed, "validation_split": config.validation_split,
            "digest": f"synthetic-{config.seed}"}


def fill_ladders(runs: SyntheticRuns, study, ladders: int):
    """Ladders of the study's steps, one per seed (0, 1, ...), each under its parent run."""
    profile = get_profile("quick")  # named in the tags, as a quick ladder names it
    for seed in range(ladders):
        parent = runs.write(f"{study.name}-quick", {Tag.KIND: Kind.LADDER, Tag.STUDY: study.name,
                                                    Tag.PROFILE: profile.name})
        steps = [dataclasses.replace(step, config=dataclasses.replace(step.config, seed=seed)) for step in study.steps]
        for unit in units.ladder_units(study, profile, steps):
            tags = units.run_tags(unit, synthetic_fingerprint(unit.config))
            runs.write(unit.name, tags, parent, unit.config, runs.rng.uniform(0.4, 0.9))


def fill_search(runs: SyntheticRuns, study, journal: str, count: int):
    """One search of `count` trials (every third pruned), as MLflow runs and in its Optuna journal."""
    space, base = study.search, study.step(study.search.base_step).config
    name = f"{study.name}-quick"
    storage, kind, where = tracking.open_storage(journal)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored = optuna.create_study(storage=storage, study_name=name, direction=space.direction)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory: samples only
    parent = runs.write(f"search-{name}", {
        Tag.KIND: Kind.SEARCH, Tag.STUDY: study.name, Tag.PROFILE: "quick", Tag.OPTUNA_STUDY: name,
        Tag.OPTUNA_STORAGE_KIND: kind, Tag.OPTUNA_STORAGE: where, Tag.BASE_STEP: space.base_step,
        Tag.PRUNER: "MedianPruner", Tag.SEED: base.seed})
    frozen = []
    for number in range(count):
        draw = draws.ask()
        params = trials.suggest(draw, space)
        pruned, accuracy = number % 3 == 2, runs.rng.uniform(0.3, 0.8)
        last = runs.epochs // 3 if pruned else runs.epochs
        config = with_values(base, params)
        fingerprint = synthetic_fingerprint(config)
        runs.write(f"trial-{number:04d}", {
            Tag.KIND: Kind.SEARCH_TRIAL, Tag.STUDY: study.name, Tag.PROFILE: "quick", Tag.OPTUNA_STUDY: name,
            Tag.OPTUNA_TRIAL: number, Tag.BASE_STEP: space.base_step, Tag.SEED: config.seed,
            Tag.TRIAL_STATE: "pruned" if pruned else "complete", Tag.SEARCH_PARAMS: json.dumps(params, sort_keys=True),
            Tag.CONFIG_HASH: config.hash(), Tag.WORK_KEY: units.work_key(config, fingerprint),
            **tracking.data_tags(fingerprint)}, parent, config, accuracy, last)
        frozen.append(optuna.trial.create_trial(
            params=params, distributions=draw.distributions, value=None if pruned else accuracy,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            intermediate_values={e: accuracy * e / runs.epochs for e in range(last)}))
    stored.add_trials(frozen)


def fill_store(spec: dict) -> dict:
    """A store of spec["runs"] runs in $MLFLOW_TRACKING_URI: up to five ladders (one per 200 runs), then one
    search with the remaining runs as trials, its Optuna journal at spec["journal"]."""
    study = load_study(STUDY)
    with tempfile.TemporaryDirectory() as folder:
        runs = SyntheticRuns(tracking.experiment_id(study.name), spec.get("epochs", 10), Path(folder))
        fill_ladders(runs, study, ladders=max(1, min(5, spec["runs"] // 200)))
        fill_search(runs, study, spec["journal"], count=spec["runs"] - runs.count - 1)  # 1: the search's parent
    return {"runs": runs.count}


# ---------------------------------------------------------------------------------------------
# The parent process: run the workers and the commands, compute the ratios.


def worker_command(spec: dict) -> list[str]:
    return [sys.executable, "-m", MODULE, "--worker", json.dumps(spec)]


def run_worker(spec: dict, env: dict) -> dict:
    """Run one measurement in a fresh Python process; its result, or an error with its output's tail."""
    done = subprocess.run(worker_command(spec), env=env, capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stdout + done.stderr)[-3000:]
    raise RuntimeError(f"benchmark worker {spec.get('kind')}/{spec.get('path', '')} failed "
                       f"(exit {done.returncode}):\n{tail}")


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of a command that must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{tail}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def store_env(env: dict, folder: Path) -> dict:
    """`env` with a SQLite MLflow store of its own in `folder`."""
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}


def prepare_data(data_path, size: Size, folder: Path) -> str:
    """The benchmark's splits (seeded, stratified), saved for the workers; returns the .npz path."""
    dataset = load_cifar10(data_path)
    splits = make_splits(dataset, validation_split=0.2, seed=0, train_subset=size.train_images * 5 // 4,
                         test_subset=100)
    path = folder / "splits.npz"
    np.savez(path, x_train=splits.x_train, y_train=splits.y_train, x_val=splits.x_val, y_val=splits.y_val,
             x_test=splits.x_test, y_test=splits.y_test)
    path.with_suffix(".json").write_text(json.dumps(splits.fingerprint))
    return str(path)


def _median(values):
    return statistics.median(values) if values else float("nan")


def _row(ratio, case, value, a="", a_median="", b="", b_median="", unit="", a_other="", b_other="", other_unit="",
         samples="", note=""):
    sign, goal = GOALS[ratio]
    met = "" if value != value else (value >= goal if sign == ">=" else value <= goal)
    return {"ratio": ratio, "case": case, "value": value, "goal": f"{sign} {goal:g}", "met": met, "a": a,
            "a_median": a_median, "b": b, "b_median": b_median, "unit": unit, "a_other": a_other, "b_other": b_other,
            "other_unit": other_unit, "samples": samples, "note": note}


class Worker:
    """A training worker process that the parent lets run one turn (its setup, or one epoch) at a time."""

    def __init__(self, spec: dict, env: dict, folder: Path):
        self.name = f"{spec['path']}/{spec['network']}"
        self.log = open(folder / f"{spec['path']}-{spec['network']}.log", "w+")
        self.process = subprocess.Popen(worker_command(spec), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True)
        self.marks = []
        self.result = None

    def turn(self):
        """Let the worker run until its next epoch's end (or its exit), and record its clock marks."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(EPOCH_PREFIX):
                self.marks.append(json.loads(line[len(EPOCH_PREFIX):]))
                return
            if line.startswith(RESULT_PREFIX):
                self.result = json.loads(line[len(RESULT_PREFIX):])
        self.process.wait()
        if self.process.returncode != 0 or self.result is None:
            self.log.seek(0)
            raise RuntimeError(f"benchmark worker {self.name} failed (exit {self.process.returncode}):\n"
                               f"{self.log.read()[-3000:]}")

    def finish(self):
        """Let the worker end (the project's step then evaluates and logs), and wait for it."""
        self.turn()
        self.log.close()


def training_plan(only, size: Size) -> list[tuple[str, str]]:
    """(path, network) of every training worker: ratio 2 needs the first network only."""
    plan = []
    for network in size.networks:
        if 1 in only:
            plan.append(("source", network))
        first = network == size.networks[0]
        if 1 in only or (first and {2, 7} & set(only)):
            plan.append(("project", network))
        if 2 in only and first:
            plan.append(("bare", network))
        if 7 in only and first:
            plan.append(("project-glibc", network))  # the project with glibc's malloc defaults
    return plan


def take_turns(order: list[Worker], size: Size, images: int, say):
    """Setup and epoch 1 of every worker (not counted), then one epoch each per round, then their ends."""
    for worker in order:
        worker.turn()
    for round_number in range(1, size.rounds + 1):
        for worker in order if round_number % 2 else order[::-1]:  # ABC CBA ...: drift hits all alike
            worker.turn()
        say(f"  round {round_number}/{size.rounds}: CPU-ms/image " + "  ".join(
            f"{w.name} {epoch_costs(w.marks, images)['cpu_ms'][-1]:.1f}" for w in order))
    for worker in order:
        worker.finish()


def bench_training(only, size: Size, data_file: str, folder: Path, env: dict, say) -> list[dict]:
    """Ratios 1 and 2: every path's worker takes turns, one epoch each per round."""
    images = json.loads(Path(data_file).with_suffix(".json").read_text())["train_size"]
    workers = {}
    try:
        for path, network in training_plan(only, size):
            spec = {"kind": "training", "path": path, "network": network, "epochs": 1 + 2 * size.rounds,
                    "data_file": data_file}
            malloc = {"ABLATION_MALLOC": "system"} if path == "project-glibc" else {}
            workers[path, network] = Worker(spec, {**store_env(env, folder / f"mlruns-{path}-{network}"), **malloc},
                                            folder)
        take_turns(list(workers.values()), size, images, say)
    finally:
        for worker in workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
    costs = {key: {**epoch_costs(w.marks, w.result["images"]), "max_rss_mb": w.result["max_rss_mb"]}
             for key, w in workers.items()}
    return training_rows(only, size, costs)


def training_rows(only, size: Size, costs: dict) -> list[dict]:
    """Ratio rows from each path's per-epoch costs (medians over the rounds)."""
    med = {key: {"cpu_ms": _median(c["cpu_ms"]), "wall_ms": _median(c["wall_ms"])} for key, c in costs.items()}
    samples = f"{size.rounds} epochs after 1 of tracing, {size.train_images} images each"
    rows = []
    for network in size.networks:
        source = ("source", network)
        if 1 in only:
            rows.append(_versus_project(
                1, network, "source", "source (tf-keras + ImageDataGenerator)", med, costs, samples,
                f"setup + epoch 1 (tracing): source {costs[source]['setup_cpu_ms']:.1f}, project "
                f"{costs['project', network]['setup_cpu_ms']:.1f} CPU-ms/image"))
        if 2 in only and ("bare", network) in med:
            rows.append(_versus_project(2, network, "bare", "bare keras.Model.fit", med, costs, samples))
            rows.append(_row("2 (wall)", network, med["bare", network]["wall_ms"] / med["project", network]["wall_ms"],
                             "bare keras.Model.fit", med["bare", network]["wall_ms"], "project ladder step",
                             med["project", network]["wall_ms"], "wall-ms/image", samples=samples))
        glibc = ("project-glibc", network)
        if 7 in only and glibc in med:
            rows.append(_versus_project(
                7, network, "project-glibc", "project, glibc malloc defaults", med, costs, samples,
                f"peak resident memory: glibc defaults {costs[glibc]['max_rss_mb']:.0f} MB, project "
                f"{costs['project', network]['max_rss_mb']:.0f} MB"))
    return rows


def _versus_project(ratio, network, path, label, med, costs, samples, note="") -> dict:
    """A ratio row: `path`'s CPU-ms per image over the project ladder step's, images/s beside, the spread noted."""
    a, b = (path, network), ("project", network)
    spread = _spread(costs[a], costs[b])
    return _row(ratio, network, med[a]["cpu_ms"] / med[b]["cpu_ms"], label, med[a]["cpu_ms"], "project ladder step",
                med[b]["cpu_ms"], "CPU-ms/image", 1000 / med[a]["wall_ms"], 1000 / med[b]["wall_ms"], "images/s",
                samples, f"{spread}; {note}" if note else spread)


def _spread(a: dict, b: dict) -> str:
    """How much the ratio moves from round to round (the same round's epochs ran minutes apart at most)."""
    ratios = sorted(x / y for x, y in zip(a["cpu_ms"], b["cpu_ms"]))
    walls = _median(a["wall_ms"]) / _median(b["wall_ms"])
    return f"per-round CPU ratios {ratios[0]:.2f}-{ratios[-1]:.2f}; wall ratio {walls:.2f}"


def run_searches(size: Size, data_path, folder: Path, env: dict, say) -> dict:
    """The same search once per pruner, each in its own worker and stores; the workers' results by pruner."""
    results = {}
    for pruner in PRUNERS:
        spec = {"kind": "search", "pruner": pruner, "trials": size.search_trials, "epochs": size.search_epochs,
                "train_images": size.search_train_images, "data": str(data_path) if data_path else None,
                "storage": str(folder / f"optuna-{pruner}.journal"), "reports": str(folder / "reports")}
        results[pruner] = run_worker(spec, store_env(env, folder / f"mlruns-search-{pruner}"))
        say(f"  search, pruner {pruner}: " + "  ".join(
            f"#{n} {s[0]}{e}ep {v:.3f}" if v is not None else f"#{n} {s[0]}{e}ep"
            for n, v, e, s in results[pruner]["trials"]))
    return results


def bench_search(size: Size, data_path, folder: Path, env: dict, say) -> list[dict]:
    """Ratio 3: epochs to reach the same best value, with the median pruner and with Hyperband, against none."""
    results = run_searches(size, data_path, folder, env, say)
    plain = results["none"]["trials"]
    rows = []
    for pruner in PRUNERS[1:]:
        pruned = results[pruner]["trials"]
        target = min(best_value(plain), best_value(pruned))
        a, b = epochs_to_reach(pruned, target), epochs_to_reach(plain, target)
        value = a / b if a and b else float("nan")
        total_a, total_b = (sum(t[2] or 0 for t in trials) for trials in (pruned, plain))
        note = (f"best val_accuracy both reached {target:.4f} (unpruned best {best_value(plain):.4f}, pruned best "
                f"{best_value(pruned):.4f}); all epochs: {total_a} pruned vs {total_b}; "
                f"{sum(t[3] == 'pruned' for t in pruned)} of {len(pruned)} trials pruned; CPU "
                f"{results[pruner]['cpu_s']:.0f} s vs {results['none']['cpu_s']:.0f} s")
        rows.append(_row(3, f"{pruner} pruner", value, "search with pruning", a, "search without pruning", b,
                         "epochs to the same best value", results[pruner]["wall_s"], results["none"]["wall_s"], "s",
                         f"{size.search_trials} trials x {size.search_epochs} epochs, "
                         f"{size.search_train_images} images", note))
    return rows


def bench_help(size: Size, env: dict, say) -> dict:
    """Ratio 5: `python -m ablation.ladder --help`."""
    walls = [timed([sys.executable, "-m", "ablation.ladder", "--help"], env)
             for _ in range(max(3, size.command_repeats))]
    say(f"  ladder --help: wall {', '.join(f'{w:.2f}' for w, _ in walls)} s")
    return _row(5, "ladder --help", _median([w for w, _ in walls]), "python -m ablation.ladder --help",
                _median([w for w, _ in walls]), unit="s wall", a_other=_median([c for _, c in walls]),
                other_unit="CPU s", samples=len(walls))


def bench_rerun(size: Size, data_path, folder: Path, env: dict, say) -> dict:
    """Ratio 4: a smoke ladder, then its re-runs on the same store (nothing left to train)."""
    run_env = store_env(env, folder / "mlruns-smoke")
    command = [sys.executable, "-m", "ablation.ladder", "--profile", "smoke", "--no-report"]
    command += ["--data", str(data_path)] if data_path else []
    first = timed(command, run_env)
    say(f"  smoke ladder, first run (trains): wall {first[0]:.1f} s")
    walls = [timed(command, run_env) for _ in range(size.command_repeats)]
    say(f"  smoke ladder, re-run (nothing to train): wall {', '.join(f'{w:.1f}' for w, _ in walls)} s")
    return _row(4, "smoke re-run", _median([w for w, _ in walls]), "re-run of a finished smoke ladder",
                _median([w for w, _ in walls]), "first run (trains)", first[0], "s wall",
                _median([c for _, c in walls]), first[1], "CPU s", len(walls))


def bench_report(size: Size, folder: Path, env: dict, say) -> dict:
    """Ratio 6: `python -m ablation.report` over a store the fill_store worker made."""
    store = folder / "mlruns-report"
    report_env = store_env(env, store)
    started = time.perf_counter()
    run_worker({"kind": "fill_store", "runs": size.report_runs, "journal": str(store / "optuna.journal")},
               report_env)
    say(f"  store of {size.report_runs} runs made in {time.perf_counter() - started:.0f} s")
    command = [sys.executable, "-m", "ablation.report", "--study", str(STUDY), "--out", str(folder / "report")]
    walls = [timed(command, report_env) for _ in range(size.command_repeats)]
    say(f"  report over {size.report_runs} runs: wall {', '.join(f'{w:.1f}' for w, _ in walls)} s")
    return _row(6, f"report, {size.report_runs} runs", _median([w for w, _ in walls]), "python -m ablation.report",
                _median([w for w, _ in walls]), unit="s wall", a_other=_median([c for _, c in walls]),
                other_unit="CPU s", samples=len(walls))


def bench_commands(only, size: Size, data_path, folder: Path, env: dict, say) -> list[dict]:
    """Ratios 4-6: wall seconds of the project's commands."""
    rows = []
    if 5 in only:
        rows.append(bench_help(size, env, say))
    if 4 in only:
        rows.append(bench_rerun(size, data_path, folder, env, say))
    if 6 in only:
        rows.append(bench_report(size, folder, env, say))
    return rows


# ---------------------------------------------------------------------------------------------
# Output.


def machine() -> str:
    """The machine and library versions, in one line."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("tensorflow", "keras", "tf-keras", "mlflow", "optuna"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{model}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
            f"{platform.system()}; {', '.join(versions)}")


def _fmt(value, digits=2) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The performance table of docs/results.md."""
    lines = ["| # | measure | case | A | B | ratio or value | goal | met |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a = f"{row['a']}: {_fmt(row['a_median'])}" if row["a"] else ""
        b = f"{row['b']}: {_fmt(row['b_median'])}" if row["b"] else ""
        if row["other_unit"] == "images/s":  # training: wall throughput beside the CPU cost
            a += f" ({_fmt(row['a_other'], 0)} img/s)"
            b += f" ({_fmt(row['b_other'], 0)} img/s)"
        met = "" if row["met"] == "" else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['ratio']} | {row['unit']} | {row['case']} | {a} | {b} | {_fmt(row['value'])} | "
                     f"{row['goal']} | {met} |")
    return "\n".join(lines)


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per ratio: its value, goal, medians and note."""
    lines = []
    for row in rows:
        a = f"{row['a']} {_fmt(row['a_median'])}" if row["a"] else ""
        b = f" / {row['b']} {_fmt(row['b_median'])}" if row["b"] else ""
        lines.append(f"ratio {row['ratio']} ({row['case']}): {_fmt(row['value'])}  goal {row['goal']}  "
                     f"[{a}{b} {row['unit']}]  {row['note']}")
    return lines


def write_csv(rows: list[dict], path: Path, machine_line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, [*COLUMNS, "machine"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: _fmt(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                             "machine": machine_line})


# ---------------------------------------------------------------------------------------------
# Entry points.


def child_env() -> dict:
    """The environment of the workers and commands: quiet, unbuffered, and this checkout importable from any
    working directory (the workers run `python -m benchmarks.bench`, the commands `python -m ablation...`)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def run_bench(only=(1, 2, 3, 4, 5, 6, 7), size: Size = SIZES["default"], data_path=None, out=DEFAULT_OUT,
              say=print) -> list[dict]:
    """Measure the ratios in `only`; write the CSV; return its rows."""
    data_path = resolve_data_path(data_path)
    env = child_env()
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ablation-bench-") as tmp:
        folder = Path(tmp)
        if {1, 2, 7} & set(only):
            say(f"ratios 1, 2, 7: training, {size.rounds} rounds of one epoch of {size.train_images} images per path")
            data_file = prepare_data(data_path, size, folder)
            rows += bench_training(only, size, data_file, folder, env, say)
        if 3 in only:
            say(f"ratio 3: the search, {size.search_trials} trials, without pruning, median, hyperband")
            rows += bench_search(size, data_path, folder, env, say)
        if {4, 5, 6} & set(only):
            say("ratios 4-6: commands")
            rows += bench_commands(only, size, data_path, folder, env, say)
    rows.sort(key=lambda row: (int(str(row["ratio"]).split()[0]), str(row["ratio"])))  # "2 (wall)" after 2
    write_csv(rows, Path(out), machine())
    say(f"\nbenchmark took {time.perf_counter() - started:.0f} s; results in {out}")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Measure the performance ratios; write a CSV.")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10 (archive or folder; default: $ABLATION_DATA, else Keras' download)")
    parser.add_argument("--quick", action="store_true", help="fewer images, rounds and trials (~5 min)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7", help="ratios to measure, e.g. 1,2 (default: all)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"CSV file (default: {DEFAULT_OUT})")
    parser.add_argument("--images", type=int, default=None,
                        help=f"training images per epoch, ratios 1, 2 and 7 (default {SIZES['default'].train_images})")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"measured epochs per path, ratios 1, 2 and 7 (default {SIZES['default'].rounds})")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args(argv)
    try:
        args.only = tuple(sorted({int(n) for n in args.only.split(",") if n.strip()}))
    except ValueError:
        parser.error(f"--only takes ratio numbers 1-7 separated by commas, got {args.only!r}")
    if not args.only or not set(args.only) <= set(GOALS):
        parser.error(f"--only takes ratio numbers 1-7 separated by commas, got {args.only!r}")
    for name in ("images", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


WORKERS = {"training": training_worker, "search": search_worker, "fill_store": fill_store}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:  # one measurement, in this process; its result is the last line
        spec = json.loads(args.worker)
        print(RESULT_PREFIX + json.dumps(WORKERS[spec["kind"]](spec)), flush=True)
        return 0
    size = SIZES["quick" if args.quick else "default"]
    size = dataclasses.replace(size, train_images=args.images or size.train_images, rounds=args.rounds or size.rounds)
    rows = run_bench(args.only, size, args.data, args.out)
    print("\n" + "\n".join(summary_lines(rows)))
    print(f"\nmachine: {machine()}\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
