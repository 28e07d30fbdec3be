"""BatchNormalization's statistics: recomputed at the current weights, and a check of the moving ones.

BatchNormalization evaluates with moving averages of its batch statistics, an exponential average
over about 1 / (1 - momentum) = 100 optimizer steps. In the recipe (1,250 steps an epoch) that is a
small fraction of an epoch; on a few thousand images it is a whole epoch, taken while the weights move
fastest, and the logged validation and test numbers measure that lag rather than what the network
has learned. The fix ("precise BatchNorm", Wu & Johnson 2021) recomputes the statistics over a fixed
set of training images at the current weights. See docs/recipe.md#batchnorm-statistics.

`recompute` does it in one forward pass of the whole set with momentum 0 (each layer's moving mean
and variance become that batch's exact mean and biased variance, every earlier layer already
normalizing with the same set's statistics), dropout off: the statistics the network sees at test time.
"""

import keras
import numpy as np

from ablation.core.config import Config
from ablation.models.layers import training_forward

RECOMPUTE_IMAGES = 500  # training images the statistics are recomputed from: fixed per run (its seed)
CHECK_IMAGES = 500  # validation images the per-epoch check scores twice (moving, recomputed)


def layers_of(model: keras.Model, kind: type) -> list:
    """Every layer of `kind` inside `model`, nested models included, in a fixed order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, kind):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(layers_of(layer, kind))
    return found


def batch_norm_layers(model: keras.Model) -> list:
    return layers_of(model, keras.layers.BatchNormalization)


def dropout_layers(model: keras.Model) -> list:
    return layers_of(model, keras.layers.Dropout)


def moving_statistics(model: keras.Model) -> list[np.ndarray]:
    """The moving means and variances of every BatchNormalization layer, as arrays (a copy)."""
    return [keras.ops.convert_to_numpy(v) for layer in batch_norm_layers(model)
            for v in (layer.moving_mean, layer.moving_variance)]


def set_moving_statistics(model: keras.Model, values: list[np.ndarray]):
    variables = [v for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def recompute(network: keras.Model, images: np.ndarray, compiled: bool = True):
    """Set every BatchNormalization layer's moving statistics to the exact ones of `images` at the current weights.

    `compiled`: one graph, built at the first call with momentum 0 and dropout off (what it is for),
    and reused; else an eager pass (a few images: no graph to build).
    """
    layers, dropouts = batch_norm_layers(network), dropout_layers(network)
    momenta, rates = [layer.momentum for layer in layers], [layer.rate for layer in dropouts]
    try:
        for layer in layers:
            layer.momentum = 0.0
        for layer in dropouts:
            layer.rate = 0.0  # test-time activations: dropout's noise would widen the variances after it
        (training_forward(network) if compiled else lambda x: network(x, training=True))(images)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate


def fixed_images(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` images of `x` drawn once with `seed` (all of them if there are fewer)."""
    if len(x) <= count:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), count, replace=False))]


def accuracy(network: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of `x` the network classifies as `y` (Keras' predict: a graph unless the network runs eagerly)."""
    return float((np.argmax(network.predict(x, batch_size=250, verbose=0), axis=1) == y).mean())


class BatchNormCheck(keras.callbacks.Callback):
    """Per epoch: validation accuracy with the moving and with recomputed statistics, on the same images.

    With `use_recomputed`, the statistics are recomputed before every validation pass too and kept,
    so the logged validation numbers (and what early stopping and ReduceLROnPlateau watch) use them;
    the moving averages go on from there. Without it the layers keep their moving averages throughout.
    """

    def __init__(self, network, recompute_images, check_x, check_y, use_recomputed: bool, compiled: bool = True):
        super().__init__()
        self.network, self.recompute_images, self.compiled = network, recompute_images, compiled
        self.check_x, self.check_y, self.use_recomputed = check_x, check_y, use_recomputed
        self.moving = None  # the moving statistics as training left them, before a recompute

    def before_test(self):
        """With `use_recomputed`, the statistics at the final weights (early stopping's best, say) for the test pass."""
        if self.use_recomputed:
            recompute(self.network, self.recompute_images, self.compiled)

    def on_epoch_begin(self, epoch, logs=None):
        self.moving = None

    def on_test_begin(self, logs=None):
        if self.use_recomputed and self.moving is None:  # fit's validation: once an epoch
            self.moving = moving_statistics(self.network)
            recompute(self.network, self.recompute_images, self.compiled)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        current = moving_statistics(self.network)
        if self.moving is None:  # validation used the moving statistics: recompute for the check
            self.moving = current
            recompute(self.network, self.recompute_images, self.compiled)
        # Else the layers hold this epoch's recomputed statistics already (the weights have not moved since).
        logs["val_accuracy_recomputed_bn"] = accuracy(self.network, self.check_x, self.check_y)
        set_moving_statistics(self.network, self.moving)
        logs["val_accuracy_moving_bn"] = accuracy(self.network, self.check_x, self.check_y)
        set_moving_statistics(self.network, current)


def batch_norm_check(config: Config, network, x_train, x_val, y_val):
    """The per-epoch BatchNormalization check (and treatment: `before_test` readies the test pass).

    Both image sets are drawn once from the run's seed and are not augmented: the statistics the
    network should test with are those of the images it is tested on.
    """
    statistics_images = fixed_images(x_train, RECOMPUTE_IMAGES, config.seed)
    check = fixed_images(np.arange(len(x_val)), CHECK_IMAGES, config.seed + 1)
    network.run_eagerly = config.run_eagerly  # the check's predict, as the training runs
    return BatchNormCheck(network, statistics_images, x_val[check], y_val[check],
                          use_recomputed=config.bn_statistics == "recomputed", compiled=not config.run_eagerly)
