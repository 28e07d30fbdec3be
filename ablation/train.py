"""Training: a config and data in, a result out. No MLflow and no printing here (see callbacks)."""

import math
import os
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from ablation.augment import RandomAffine, has_augmentation
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
    network: keras.Model | None = field(default=None, repr=False)  # the trained network (no augmentation layer)
    input_mean: np.ndarray | None = field(default=None, repr=False)  # subtracted from inputs (per_pixel_mean)

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


def build(config: Config, input_shape=(32, 32, 3), num_classes=10) -> tuple[keras.Model, keras.Model]:
    """The network, and the model that is trained: the augmentation layer in front of the network."""
    network = build_model(config.model, input_shape, num_classes, **config.model_args)
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


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping, optionally restoring the best weights only when it fired (Keras 2's behaviour).

    Keras 3 restores them at the end of training even when stopping never fired; tf.keras up to 2.15
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


class BatchHooks(keras.callbacks.Callback):
    """Calls plain functions `hook(batch, {})` (batch from 1 within its epoch) after each training batch.

    A callback of its own, added only when there are hooks (a progress bar): any batch-level
    callback that is not async-safe makes Keras wait for every batch's numbers.
    """

    async_safe = True  # the hooks only draw; Keras may call them from its dispatch thread

    def __init__(self, on_batch):
        super().__init__()
        self.on_batch = tuple(on_batch)

    def on_train_batch_end(self, batch, logs=None):
        for hook in self.on_batch:
            hook(batch + 1, {})


def make_optimizer(config: Config):
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=0.9)
    return keras.optimizers.Adam(config.learning_rate)


def train(config: Config, splits: Splits, on_epoch=(), on_epoch_begin=(), on_batch=(), verbose=0) -> Result:
    """Train `config` on `splits` and evaluate on the test set once, at the end.

    `on_epoch`: functions called as `hook(epoch, logs)` after each epoch (epoch from 1, logs with
    loss, accuracy, val_loss, val_accuracy, learning_rate); `on_epoch_begin`: likewise before it;
    `on_batch`: `hook(batch, {})` after each training batch (from 1 in each epoch).
    """
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        enable_op_determinism()
    network, model = build(config, splits.x_train.shape[1:], len(splits.class_names))
    model.compile(
        optimizer=make_optimizer(config),
        # Integer labels: the same loss as the source's one-hot categorical cross-entropy, 10x less memory.
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=config.run_eagerly,
    )
    x_train, x_val, x_test, input_mean = prepare_inputs(splits, config)
    epoch_callbacks = [*schedule_callbacks(config), _RecordLearningRate(), EpochHooks(on_epoch, on_epoch_begin),
                       *([BatchHooks(on_batch)] if on_batch else [])]

    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    fit = model.fit(
        x_train, splits.y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=AugmentedImages(x_val, splits.y_val, config) if config.augment_validation
        and has_augmentation(config) else (x_val, splits.y_val),
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
        network=network,
        input_mean=input_mean,
    )


def test_scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Cross-entropy (clipped as Keras clips it), accuracy and predicted classes."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    predictions = np.argmax(probabilities, axis=1).astype("int64")
    return float(-np.log(picked).mean()), float((predictions == labels).mean()), predictions


def enable_op_determinism():
    """Bit-identical repeats of a seed on TensorFlow (slower kernels); other backends: nothing to do."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # the backend itself, already loaded by Keras

        tf.config.experimental.enable_op_determinism()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
