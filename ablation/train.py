"""Training: a config and data in, a result out. No MLflow and no printing here (see callbacks)."""

import math
import os
import time
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from ablation.config import EPOCH_METRICS, Config
from ablation.data import Splits
from ablation.models import build_model
from ablation.models.flops import count_flops



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
        }


def augmentation(config: Config) -> list:
    """The source's ImageDataGenerator settings as preprocessing layers (active in training only)."""
    out = []
    if config.rotation_range:
        # ImageDataGenerator takes degrees; RandomRotation a fraction of a full turn.
        out.append(layers.RandomRotation(config.rotation_range / 360, fill_mode="nearest"))
    if config.width_shift_range or config.height_shift_range:
        out.append(layers.RandomTranslation(config.height_shift_range, config.width_shift_range, fill_mode="nearest"))
    if config.horizontal_flip:
        out.append(layers.RandomFlip("horizontal"))
    if config.zoom_range:
        # ImageDataGenerator zooms by [1 - z, 1 + z]; RandomZoom's factor is the same range, both signs.
        out.append(layers.RandomZoom((-config.zoom_range, config.zoom_range), fill_mode="nearest"))
    return out


def build(config: Config, input_shape=(32, 32, 3), num_classes=10) -> tuple[keras.Model, keras.Model]:
    """The network, and the model that is trained: augmentation layers in front of the network."""
    network = build_model(config.model, input_shape, num_classes, **config.model_args)
    steps = augmentation(config)
    if not steps:
        return network, network
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in steps:
        x = layer(x)
    return network, keras.Model(inputs, network(x), name=f"augmented_{network.name}")


def prepare_inputs(splits: Splits, config: Config):
    """Images as float32 in [0, 1], minus the training set's mean image when asked."""
    x_train, x_val, x_test = (x.astype("float32") / 255.0 for x in (splits.x_train, splits.x_val, splits.x_test))
    if config.normalization == "per_pixel_mean":
        mean = x_train.mean(axis=0)
        x_train -= mean
        x_val -= mean
        x_test -= mean
    return x_train, x_val, x_test


def schedule_callbacks(config: Config) -> list:
    """Early stopping, ReduceLROnPlateau and the step schedule, as the config asks."""
    out = []
    if config.early_stopping_monitor:
        out.append(keras.callbacks.EarlyStopping(
            monitor=config.early_stopping_monitor,
            patience=config.early_stopping_patience,
            min_delta=config.early_stopping_min_delta,
            restore_best_weights=config.restore_best_weights,
        ))
    if config.reduce_lr_monitor:
        out.append(keras.callbacks.ReduceLROnPlateau(
            monitor=config.reduce_lr_monitor,
            factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience,
            min_lr=config.min_lr,
        ))
    if config.lr_schedule:
        out.append(keras.callbacks.LearningRateScheduler(lambda epoch, lr: step_learning_rate(config, epoch)))
    return out


def step_learning_rate(config: Config, epoch: int) -> float:
    """Learning rate of the step schedule at a 0-based epoch."""
    multiplier = 1.0
    for start, mult in sorted(config.lr_schedule):
        if epoch >= start:
            multiplier = mult
    return config.learning_rate * multiplier


class _RecordLearningRate(keras.callbacks.Callback):
    """Puts the optimizer's current learning rate into each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


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


def make_optimizer(config: Config):
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=0.9)
    return keras.optimizers.Adam(config.learning_rate)


def train(config: Config, splits: Splits, on_epoch=(), on_epoch_begin=(), verbose=0) -> Result:
    """Train `config` on `splits` and evaluate on the test set once, at the end.

    `on_epoch`: functions called as `hook(epoch, logs)` after each epoch (epoch from 1, logs with
    loss, accuracy, val_loss, val_accuracy, learning_rate); `on_epoch_begin`: likewise before it.
    """
    keras.utils.set_random_seed(config.seed)
    network, model = build(config, splits.x_train.shape[1:], len(splits.class_names))
    model.compile(
        optimizer=make_optimizer(config),
        # Integer labels: the same loss as the source's one-hot categorical cross-entropy, 10x less memory.
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=config.run_eagerly,
    )
    x_train, x_val, x_test = prepare_inputs(splits, config)
    epoch_callbacks = [*schedule_callbacks(config), _RecordLearningRate(), EpochHooks(on_epoch, on_epoch_begin)]

    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    fit = model.fit(
        x_train, splits.y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(x_val, splits.y_val),
        callbacks=epoch_callbacks,
        shuffle=True,
        verbose=verbose,
    )
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0

    history = {key: [float(v) for v in fit.history.get(key, [])] for key in EPOCH_METRICS}
    if any(not math.isfinite(v) for v in history["loss"]):
        raise FloatingPointError(f"training diverged: loss {history['loss'][-1]} at epoch {len(history['loss'])}")
    # One pass over the test set gives predictions, loss and accuracy (augmentation is off here).
    probabilities = model.predict(x_test, batch_size=256, verbose=0)
    test_loss, test_accuracy, predictions = test_scores(probabilities, splits.y_test)
    epochs_run = len(history["loss"])
    return Result(
        history=history,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        epochs_run=epochs_run,
        train_seconds=wall,
        train_cpu_seconds=cpu,
        num_params=network.count_params(),
        flops=count_flops(network),
        stopped_early=epochs_run < config.epochs,
        test_predictions=predictions,
        test_labels=splits.y_test,
    )


def test_scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Cross-entropy (clipped as Keras clips it), accuracy and predicted classes."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predictions = np.argmax(probabilities, axis=1).astype("int64")
    return float(-np.log(picked).mean()), float((predictions == labels).mean()), predictions


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
