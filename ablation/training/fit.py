"""Training: a config and data in, a result out. No MLflow and no printing here (see callbacks).

Three guards run with every fit: a signal's stop request (see `ablation.core.interrupt`) is honoured at
the next batch end; a non-finite loss ends training at the batch it appears in (`Diverged`); and,
given a checkpoint folder, the state is saved after every epoch and a saved one is continued.
With `steps_per_execution` N > 1 Keras runs N batches per call and "the next batch end" is the end
of the call: stops, the divergence check and the batch hooks act every N batches (and at the epoch's
last batch), still within the epoch.
"""

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ablation.core import interrupt, memory
from ablation.core.config import EPOCH_METRICS, Config, check_combination
from ablation.data import Splits
from ablation.models import build_model
from ablation.models.flops import count_flops
from ablation.models.layers import enable_op_determinism
from ablation.training import bn_statistics, checkpoint
from ablation.training.augment import MixedBatches, RandomAffine, SetMixingEpoch, has_augmentation, has_mixing


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite: the run cannot recover, so it ends at that batch."""


@dataclass
class Result:
    """What a training run produced."""

    history: dict[str, list[float]]  # per epoch: loss, accuracy, val_loss, val_accuracy, learning_rate
    test_loss: float
    test_accuracy: float
    epochs_run: int
    train_seconds: float  # wall time of fit()
    train_cpu_seconds: float  # user+sys CPU time of fit(): stable where wall time is not
    num_params: int
    flops: int  # forward FLOPs per image
    stopped_early: bool
    test_predictions: np.ndarray = field(repr=False)  # predicted class per test image
    test_labels: np.ndarray = field(repr=False)  # the true class of each test image
    network: keras.Model | None = field(default=None, repr=False)  # the trained network (no augmentation layer)
    input_mean: np.ndarray | None = field(default=None, repr=False)  # subtracted from inputs (per_pixel_mean)
    test_top5_accuracy: float | None = None  # None where there are 5 classes or fewer

    def metrics(self) -> dict[str, float]:
        """The final numbers, as logged to MLflow."""
        return {
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "epochs_run": self.epochs_run,
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "seconds_per_epoch": self.train_seconds / max(1, self.epochs_run),
            "num_params": self.num_params,
            "flops": self.flops,
            "best_val_accuracy": max(self.history["val_accuracy"], default=float("nan")),
            **({} if self.test_top5_accuracy is None else {"test_top5_accuracy": self.test_top5_accuracy}),
        }


def build(config: Config, input_shape=(32, 32, 3), num_classes=10) -> tuple[keras.Model, keras.Model]:
    """The network, and the model that is trained: the augmentation layer in front of the network.

    The network's layers take Keras' dtype policy `config.precision`, except its output layer (the
    classifier's softmax), which computes in float32 as mixed precision needs; the augmentation layer
    is built outside the policy and resamples in float32 (docs/stack.md#mixed-precision).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)  # read by every layer as it is created
    try:
        with interrupt.raising():  # a deep network builds for minutes: a stop must not wait for it
            network = build_model(config.model, input_shape, num_classes, **config.model_args)
    finally:
        keras.config.set_dtype_policy(previous)
    network.layers[-1].dtype_policy = "float32"  # a no-op under "float32"
    if not has_augmentation(config):
        return network, network
    inputs = keras.Input(input_shape)
    outputs = network(RandomAffine(config, seed=config.seed)(inputs))
    return network, keras.Model(inputs, outputs, name=f"augmented_{network.name}")


class AugmentedImages(keras.utils.PyDataset):
    """Validation images augmented afresh every epoch, as the source's generator fed them."""

    def __init__(self, x, y, config: Config, batch_size: int = 256):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.augment = RandomAffine(config, seed=config.seed + 1)  # its own stream: training draws stay as they were

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return keras.ops.convert_to_numpy(self.augment(self.x[part], training=True)), self.y[part]


def prepare_inputs(splits: Splits, config: Config):
    """Images as float32 in [0, 1], minus the training set's mean image when asked (returned last, or None)."""
    x_train, x_val, x_test = (x.astype("float32") / 255.0 for x in (splits.x_train, splits.x_val, splits.x_test))
    if config.normalization != "per_pixel_mean":
        return x_train, x_val, x_test, None
    mean = x_train.mean(axis=0)
    x_train -= mean
    x_val -= mean
    x_test -= mean
    return x_train, x_val, x_test, mean


def schedule_callbacks(config: Config) -> list:
    """Early stopping, ReduceLROnPlateau and the step schedule, as the config asks."""
    out = []
    if config.early_stopping_monitor:
        out.append(EarlyStopping(
            monitor=config.early_stopping_monitor,
            patience=config.early_stopping_patience,
            min_delta=config.early_stopping_min_delta,
            restore_best_weights=config.restore_best_weights != "never",
            restore_on_stop_only=config.restore_best_weights == "on_stop",
        ))
    if config.reduce_lr_monitor:
        out.append(keras.callbacks.ReduceLROnPlateau(
            monitor=config.reduce_lr_monitor,
            factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience,
            min_lr=config.min_lr,
        ))
    if config.lr_schedule or config.lr_decay != "none" or config.warmup_epochs:
        out.append(keras.callbacks.LearningRateScheduler(lambda epoch, lr: epoch_learning_rate(config, epoch)))
    return out


def epoch_learning_rate(config: Config, epoch: int) -> float:
    """Learning rate at a 0-based epoch: the linear warm-up, then the cosine decay or the step schedule.

    Warm-up epoch e (< warmup_epochs) trains at learning_rate * (e + 1) / (warmup_epochs + 1); the cosine
    runs from learning_rate over the epochs after it, learning_rate * (1 + cos(pi * t)) / 2 with t the
    fraction of those epochs already done (Loshchilov & Hutter 2017, without restarts), once an epoch.
    """
    if epoch < config.warmup_epochs:
        return config.learning_rate * (epoch + 1) / (config.warmup_epochs + 1)
    if config.lr_decay == "cosine":
        done = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))
    multiplier = 1.0
    for start, mult in sorted(config.lr_schedule):
        if epoch >= start:
            multiplier = mult
    return config.learning_rate * multiplier


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping, optionally restoring the best weights only when it fired (Keras 2's behaviour).

    Keras 3 restores them at the end of training even when stopping never fired; Keras 2 (up to 2.15)
    kept the last epoch's weights then. A replay of a Keras 2 recipe sets restore_best_weights = "on_stop".
    """

    def __init__(self, *, restore_on_stop_only: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.restore_on_stop_only = restore_on_stop_only

    def on_train_end(self, logs=None):
        if self.restore_on_stop_only and self.stopped_epoch == 0:
            self.best_weights = None  # training ran its course: keep the last epoch's weights
        super().on_train_end(logs)


class _RecordLearningRate(keras.callbacks.Callback):
    """Puts the optimizer's current learning rate into each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _KeepFreedMemory(keras.callbacks.Callback):
    """ablation.core.memory's settings again before every epoch: the last epoch's validation may have reset them."""

    def on_epoch_begin(self, epoch, logs=None):
        memory.keep_freed_memory()


class EpochHooks(keras.callbacks.Callback):
    """Calls plain functions `hook(epoch, logs)` (epoch from 1) at each epoch's end and start.

    Tracking, progress and pruning are such functions: they need no Keras of their own.
    """

    def __init__(self, on_end=(), on_begin=()):
        super().__init__()
        self.on_end, self.on_begin = tuple(on_end), tuple(on_begin)

    def on_epoch_begin(self, epoch, logs=None):
        for hook in self.on_begin:
            hook(epoch + 1, {})

    def on_epoch_end(self, epoch, logs=None):
        for hook in self.on_end:
            hook(epoch + 1, dict(logs or {}))


def batches_done(callback: keras.callbacks.Callback, batch: int) -> int:
    """The batches trained so far in the epoch at Keras' batch end `batch` (0-based).

    Keras reports the last batch a call could have run: with steps_per_execution N, an epoch of 10
    batches ends its calls at batches 4, 8 and "12"; the last call ran 2. Capped at the epoch's count.
    """
    steps = (callback.params or {}).get("steps")
    return batch + 1 if not steps else min(batch + 1, steps)


class BatchHooks(keras.callbacks.Callback):
    """Calls plain functions `hook(batch, {})` (batches done in the epoch, from 1) after each training call.

    A call is one batch, or `steps_per_execution` batches (the epoch's last call: those left).
    A callback of its own, added only when there are hooks (a progress bar): a batch-level callback
    that is not async-safe makes Keras wait for every batch's numbers.
    """

    async_safe = True  # the hooks only draw; Keras may call them from its dispatch thread

    def __init__(self, on_batch):
        super().__init__()
        self.on_batch = tuple(on_batch)

    def on_train_batch_end(self, batch, logs=None):
        for hook in self.on_batch:
            hook(batches_done(self, batch), {})


class StopOnRequest(keras.callbacks.Callback):
    """Raises `interrupt.Interrupted` at the first batch end (training, validation or test) after a signal."""

    def on_epoch_begin(self, epoch, logs=None):
        interrupt.check()

    def on_train_batch_end(self, batch, logs=None):
        interrupt.check()

    def on_test_batch_end(self, batch, logs=None):
        interrupt.check()

    def on_predict_batch_end(self, batch, logs=None):
        interrupt.check()


class StopOnDivergence(keras.callbacks.Callback):
    """Raises `Diverged` at the first batch end whose running loss is NaN or infinite (the epoch's mean stays so).

    The running loss is the epoch's mean so far: a NaN in any batch of a multi-batch call shows at its end.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(keras.ops.convert_to_numpy(loss))):
            raise Diverged(f"training diverged: loss {float(keras.ops.convert_to_numpy(loss))} "
                           f"at epoch {self.epoch}, batch {batches_done(self, batch)}")


COUNTERS = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")  # early stopping, ReduceLROnPlateau


class EpochHistory(keras.callbacks.Callback):
    """One value an epoch for every metric logged, a save's epochs first (what the Result and the next save hold).

    A metric that a save from an older version lacks (the BatchNorm check, top-5) is NaN for the epochs before."""

    def __init__(self, saved):
        super().__init__()
        self.values = {key: list(values) for key, values in (saved.history if saved else {}).items()}

    def on_epoch_end(self, epoch, logs=None):
        for key in EPOCH_METRICS:
            if key in (logs or {}) or key in self.values:  # top-5 only where there are more than 5 classes
                self.values.setdefault(key, [math.nan] * epoch).append(float((logs or {}).get(key, math.nan)))


class Checkpoint(keras.callbacks.Callback):
    """Saves the whole training state after every epoch (see `ablation.training.checkpoint`) and puts a saved one back.

    Saved: the weights with the optimizer's state (moments, iteration count, current learning rate),
    early stopping's and ReduceLROnPlateau's counters and best values (early stopping's best weights
    too), the seed generators' states (augmentation draws, dropout masks), numpy's and Python's random
    states, the history and the training time so far. Keras' BackupAndRestore keeps only the first two.
    Not restorable: tf.data's shuffling state, so batches after a resume come in another order.
    """

    def __init__(self, folder: Path, saved, schedule: list, seed_variables: list, clock, history: EpochHistory):
        super().__init__()
        self.folder, self.saved, self.schedule, self.seed_variables = folder, saved, schedule, seed_variables
        self.clock = clock  # () -> (wall, cpu) seconds of training so far, earlier runs included
        self.history = history  # recorded before this callback runs

    def on_train_begin(self, logs=None):
        # After the schedule callbacks' own on_train_begin, which resets these counters.
        if self.saved is None:
            return
        for callback, counters in zip(self.schedule, self.saved.state["counters"], strict=True):
            for name, value in counters.items():
                setattr(callback, name, value)
            if isinstance(callback, keras.callbacks.EarlyStopping):
                callback.best_weights = self.saved.best_weights()

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu = self.clock()
        state = {"counters": [{name: _plain(getattr(c, name)) for name in COUNTERS if hasattr(c, name)}
                              for c in self.schedule],
                 "seeds": [keras.ops.convert_to_numpy(v).tolist() for v in self.seed_variables],
                 "numpy_random": _numpy_state(), "python_random": random.getstate(),
                 "train_seconds": wall, "train_cpu_seconds": cpu, "stopped": bool(self.model.stop_training)}
        best = next((c.best_weights for c in self.schedule if isinstance(c, keras.callbacks.EarlyStopping)), None)
        checkpoint.write(self.folder, epoch + 1, self.history.values, state,
                         lambda path: self.model.save_weights(path), best)


def restore(model, saved, seed_variables: list):
    """Put a save's weights, optimizer state and random states back into a compiled model."""
    model.optimizer.build(model.trainable_variables)  # its variables must exist before they are loaded
    model.load_weights(saved.weights_path)
    for variable, value in zip(seed_variables, saved.state["seeds"], strict=True):
        variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))
    numpy_state = saved.state["numpy_random"]
    np.random.set_state((numpy_state[0], np.asarray(numpy_state[1], np.uint32), *numpy_state[2:]))
    version, internal, gauss = saved.state["python_random"]
    random.setstate((version, tuple(internal), gauss))


def resume(folder: Path | None, model, validation):
    """(the save in `folder` or None, the seed generators' states, a clock of training time so far).

    The save, if any, is put back into the compiled model; the clock counts the save's time too.
    """
    saved = checkpoint.read(folder) if folder else None
    seeds = seed_variables(model, *([validation.augment] if isinstance(validation, AugmentedImages) else []))
    if saved is not None:
        restore(model, saved, seeds)
    wall_before, cpu_before = (saved.state["train_seconds"], saved.state["train_cpu_seconds"]) if saved else (0.0, 0.0)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    return saved, seeds, lambda: (wall_before + time.perf_counter() - wall0, cpu_before + _cpu_seconds() - cpu0)


def _numpy_state() -> list:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), position, has_gauss, gauss]


def _plain(value):
    """A counter as JSON holds it (numpy scalars become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def seed_variables(*layers) -> list:
    """The states of every seed generator inside `layers`, in a fixed order: what random draws continue from."""
    return [v for layer in layers for v in layer.variables if v.name == "seed_generator_state"]


def make_optimizer(config: Config):
    """The config's optimizer; under float16 inside Keras' dynamic loss scaling.

    float16 flushes gradients below about 6e-8 to zero, so the loss is scaled up before the gradients
    and they are scaled back before the update; bfloat16 has float32's range and needs no scaling.
    """
    # Keras' weight decay is decoupled (Loshchilov & Hutter 2019): Adam with it is AdamW. None when 0: no op.
    decay = config.weight_decay or None
    optimizer = (keras.optimizers.SGD(config.learning_rate, momentum=0.9, nesterov=config.nesterov, weight_decay=decay)
                 if config.optimizer == "sgd" else keras.optimizers.Adam(config.learning_rate, weight_decay=decay))
    if config.precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def train(config: Config, splits: Splits, on_epoch=(), on_epoch_begin=(), verbose=0,
          checkpoint_folder: Path | None = None, on_batch=()) -> Result:
    """Train `config` on `splits` and evaluate on the test set once, at the end.

    `on_epoch`: functions called as `hook(epoch, logs)` after each epoch (epoch from 1, logs with
    loss, accuracy, val_loss, val_accuracy, learning_rate); `on_epoch_begin`: likewise before it;
    `on_batch`: `hook(batch, {})` after each training batch, or each `steps_per_execution` batches (batch:
    those done in the epoch, from 1).
    `checkpoint_folder`: save the training state there after every epoch and, if a save is there
    already, go on from it (the hooks then see only the epochs after it; the Result has them all).
    """
    check_combination(config, "config")  # a study's are checked as it is read; this guards a Config made in code
    interrupt.check()  # a stop asked for while Keras was starting
    memory.keep_freed_memory()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        enable_op_determinism()
    num_classes = len(splits.class_names)
    network, model = build(config, splits.x_train.shape[1:], num_classes)
    compile_model(model, config, num_classes)
    x_train, x_val, x_test, input_mean = prepare_inputs(splits, config)
    y_train, y_val = (targets(config, labels, num_classes) for labels in (splits.y_train, splits.y_val))
    validation = (AugmentedImages(x_val, y_val, config) if config.augment_validation
                  and has_augmentation(config) else (x_val, y_val))
    feed = MixedBatches(x_train, y_train, config, config.batch_size) if has_mixing(config) else None
    bn_check = bn_statistics.batch_norm_check(config, network, x_train, x_val, splits.y_val)

    # Phase 1: a save to go on from, put back; Phase 2: the epochs left, guarded.
    saved, seeds, clock = resume(checkpoint_folder, model, validation)
    schedule, recorded = schedule_callbacks(config), EpochHistory(saved)
    saving = [Checkpoint(checkpoint_folder, saved, schedule, seeds, clock, recorded)] if checkpoint_folder else []
    model.fit(
        x_train if feed is None else feed, y_train if feed is None else None,
        batch_size=config.batch_size if feed is None else None,  # the feed makes its own batches
        initial_epoch=saved.epoch if saved else 0,
        epochs=saved.epoch if saved and saved.state["stopped"] else config.epochs,  # early stopping had fired
        validation_data=validation,
        # The BatchNormalization check first: the schedule, the checkpoint and the hooks see its numbers.
        callbacks=[bn_check, _KeepFreedMemory(), StopOnRequest(), StopOnDivergence(), *schedule, _RecordLearningRate(),
                   recorded, *saving, EpochHooks(on_epoch, on_epoch_begin), *([BatchHooks(on_batch)] if on_batch else []),
                   *([] if feed is None else [SetMixingEpoch(feed)])],
        shuffle=feed is None,  # the mixed feed draws its own order each epoch
        verbose=verbose,
    )
    wall, cpu = clock()

    # Phase 3: one pass over the test set gives predictions, loss and accuracy (augmentation is off here).
    history = {key: recorded.values.get(key, []) for key in EPOCH_METRICS}
    epochs_run = len(history["loss"])
    bn_check.before_test()
    probabilities = model.predict(x_test, batch_size=256, verbose=0)
    test_loss, test_accuracy, predictions = test_scores(probabilities, splits.y_test)
    return Result(
        history=history, test_loss=float(test_loss), test_accuracy=float(test_accuracy), epochs_run=epochs_run,
        train_seconds=wall, train_cpu_seconds=cpu, num_params=network.count_params(), flops=count_flops(network),
        stopped_early=epochs_run < config.epochs, test_predictions=predictions, test_labels=splits.y_test,
        network=network, input_mean=input_mean,
        test_top5_accuracy=top_k_accuracy(probabilities, splits.y_test, 5) if num_classes > 5 else None,
    )


def soft_targets(config: Config) -> bool:
    """Whether the loss needs target rows rather than class numbers: label smoothing, MixUp, CutMix."""
    return bool(config.label_smoothing) or has_mixing(config)


def targets(config: Config, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels as the loss takes them: class numbers, or one-hot rows (float32) for soft targets."""
    return np.eye(num_classes, dtype="float32")[labels] if soft_targets(config) else labels


def compile_model(model: keras.Model, config: Config, num_classes: int):
    """Compile with the config's optimizer, loss and metrics (top-5 accuracy where there are more than 5 classes)."""
    if soft_targets(config):
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        top5 = keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy")
    else:
        # Class numbers: the same loss as the source's one-hot categorical cross-entropy, 10x less memory.
        loss, top5 = "sparse_categorical_crossentropy", keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5_accuracy")
    model.compile(
        optimizer=make_optimizer(config), loss=loss,
        metrics=["accuracy", *([top5] if num_classes > 5 else [])], run_eagerly=config.run_eagerly,
        jit_compile=config.jit_compile,  # "auto": XLA when a GPU is visible (every layer here compiles)
        # N batches per call: no host round trip per batch; the batch callbacks run every N batches.
        steps_per_execution=config.steps_per_execution,
    )


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The fraction of images whose class is among the k most probable."""
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


def test_scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Cross-entropy (clipped as Keras clips it), accuracy and predicted classes."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predictions = np.argmax(probabilities, axis=1).astype("int64")
    return float(-np.log(picked).mean()), float((predictions == labels).mean()), predictions


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
