"""The source's ImageDataGenerator augmentation as one Keras layer: one affine resampling per image.

ImageDataGenerator(rotation_range, width_shift_range, height_shift_range, zoom_range, horizontal_flip)
draws, per image, an angle, two shifts, an x zoom and a y zoom drawn independently from [1 - z, 1 + z]
(so the aspect ratio changes), and a flip; it composes them into one affine transform about the image
centre and resamples once (bilinear, edges filled with the nearest pixel). Keras 3's RandomZoom keeps
the aspect ratio, and chaining RandomRotation, RandomTranslation and RandomZoom resamples a 32x32 image
three times, which blurs it more: this layer does what the generator did. See docs/recipe.md.

The resampling is written with gathers, not `keras.ops.image.affine_transform`: on TensorFlow that
op is ImageProjectiveTransformV3, which XLA cannot compile, and Keras turns XLA on by itself when a
GPU is visible (docs/stack.md#xla-and-the-augmentation).

MixUp and CutMix (`mix`, `MixedBatches`) mix each training batch with a shuffled copy of itself,
images and targets alike. They are part of the input feed, outside the compiled step: they change
the targets, which a layer of the model never sees. Their draws depend only on the run's seed, the
epoch and the batch, so a resumed run mixes as an uninterrupted one would.
"""

import math

import keras
import numpy as np
from keras import ops

PARAMETERS = ("angle", "shift_x", "shift_y", "zoom_x", "zoom_y", "flip")  # per image, as drawn


def has_augmentation(config) -> bool:
    """Whether the config asks for any augmentation."""
    return bool(config.rotation_range or config.width_shift_range or config.height_shift_range
                or config.zoom_range or config.horizontal_flip)


def draw(batch: int, config, seed, height: int = 32, width: int = 32) -> dict:
    """Per-image transform parameters: angle (radians), shifts (pixels: fractions of the width and height), zooms, flip."""
    uniform = lambda low, high: keras.random.uniform((batch,), low, high, seed=seed)  # noqa: E731
    angle = math.radians(config.rotation_range)
    flip = ops.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if config.horizontal_flip else ops.ones((batch,))
    return {
        "angle": uniform(-angle, angle) if angle else ops.zeros((batch,)),
        "shift_x": uniform(-config.width_shift_range, config.width_shift_range) * width,
        "shift_y": uniform(-config.height_shift_range, config.height_shift_range) * height,
        # Two independent draws: the generator zooms x and y separately.
        "zoom_x": uniform(1.0 - config.zoom_range, 1.0 + config.zoom_range),
        "zoom_y": uniform(1.0 - config.zoom_range, 1.0 + config.zoom_range),
        "flip": flip,
    }


def transform_vectors(params: dict, height: int, width: int):
    """The 8-number transforms of `resample` and keras.ops.image.affine_transform (output pixel -> input pixel).

    input = R(angle) @ (diag(flip * zoom_x, zoom_y) @ (output - centre) + shift) + centre: zoom and
    flip first, then the shift, then the rotation, all about the centre, as the generator composed them.
    """
    cos, sin = ops.cos(params["angle"]), ops.sin(params["angle"])
    sx, sy = params["flip"] * params["zoom_x"], params["zoom_y"]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a0, a1, b0, b1 = cos * sx, -sin * sy, sin * sx, cos * sy
    tx, ty = params["shift_x"], params["shift_y"]
    a2 = cx - a0 * cx - a1 * cy + cos * tx - sin * ty
    b2 = cy - b0 * cx - b1 * cy + sin * tx + cos * ty
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def resample(images, transforms):
    """Bilinear resampling, edges filled with the nearest pixel: `affine_transform(images, transforms,
    "bilinear", fill_mode="nearest")` (channels last, affine transforms only) with ops XLA compiles.

    As TensorFlow's kernel does it, operation for operation: the input point is clamped into the
    image, then weighted between its floor and the next pixel (a neighbour past the edge has weight 0).
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    batch = ops.shape(images)[0]
    out_y, out_x = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"),
                                indexing="ij")
    t = [ops.reshape(transforms[:, i], (-1, 1, 1)) for i in range(6)]
    x = ops.clip(t[0] * out_x + t[1] * out_y + t[2], 0.0, width - 1.0)
    y = ops.clip(t[3] * out_x + t[4] * out_y + t[5], 0.0, height - 1.0)
    x_floor, y_floor = ops.floor(x), ops.floor(y)
    x_low, y_low = ops.cast(x_floor, "int32"), ops.cast(y_floor, "int32")
    x_high, y_high = ops.minimum(x_low + 1, width - 1), ops.minimum(y_low + 1, height - 1)
    pixels = ops.reshape(images, (-1, channels))
    first = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))

    def at(rows, columns):
        return ops.take(pixels, first + rows * width + columns, axis=0)

    weight = lambda w: ops.expand_dims(w, -1)  # noqa: E731  (one weight for every channel)
    x_right, x_left = weight(x - x_floor), weight(x_floor + 1.0 - x)
    top = x_left * at(y_low, x_low) + x_right * at(y_low, x_high)
    bottom = x_left * at(y_high, x_low) + x_right * at(y_high, x_high)
    return weight(y_floor + 1.0 - y) * top + weight(y - y_floor) * bottom


class RandomAffine(keras.layers.Layer):
    """Rotation, shifts, independent x/y zoom and horizontal flip, one resampling; active in training only."""

    def __init__(self, config, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        shape = ops.shape(images)
        params = draw(shape[0], self.config, self.seed_generator, images.shape[1], images.shape[2])
        transforms = transform_vectors(params, images.shape[1], images.shape[2])
        return resample(images, transforms)

    def compute_output_shape(self, input_shape):
        return input_shape


# ---------------------------------------------------------------------------------------------
# MixUp and CutMix.

MIXING_STREAM = 2  # the mixing draws' own stream of the run's seed: training (0) and validation (1) draws stay as they were


def has_mixing(config) -> bool:
    """Whether the config mixes training batches (MixUp or CutMix)."""
    return bool(config.mixup_alpha or config.cutmix_alpha)


def mix(images: np.ndarray, targets: np.ndarray, config, rng: np.random.Generator):
    """One batch mixed with a shuffled copy of itself: (images, targets) as new arrays of the same dtypes.

    MixUp (Zhang et al. 2018): weight ~ Beta(mixup_alpha, mixup_alpha), images and targets blended.
    CutMix (Yun et al. 2019): a box of area 1 - weight, weight ~ Beta(cutmix_alpha, cutmix_alpha),
    pasted from the copy; the targets are weighted by the areas actually kept. One weight per batch,
    as both papers draw it; with both alphas set, each batch takes one of the two with probability 1/2 (timm's
    default switch). `targets` are one-hot (or soft) rows.
    """
    partner = rng.permutation(len(images))
    if config.cutmix_alpha and (not config.mixup_alpha or rng.random() < 0.5):
        weight = rng.beta(config.cutmix_alpha, config.cutmix_alpha)
        mixed, weight = paste_box(images, images[partner], weight, rng)
    else:
        weight = rng.beta(config.mixup_alpha, config.mixup_alpha)
        mixed = weight * images + (1.0 - weight) * images[partner]
    soft = weight * targets + (1.0 - weight) * targets[partner]
    return mixed.astype(images.dtype), soft.astype(targets.dtype)


def paste_box(images: np.ndarray, others: np.ndarray, weight: float, rng: np.random.Generator):
    """CutMix's box: sides sqrt(1 - weight) of the image's, centre uniform, clipped at the edges.

    Returns the images with the box taken from `others`, and the fraction of each image kept.
    """
    height, width = images.shape[1], images.shape[2]
    side = math.sqrt(1.0 - weight)
    half_h, half_w = int(height * side) // 2, int(width * side) // 2
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(centre_y - half_h, 0), min(centre_y + half_h, height)
    left, right = max(centre_x - half_w, 0), min(centre_x + half_w, width)
    mixed = images.copy()
    mixed[:, top:bottom, left:right] = others[:, top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


class MixedBatches(keras.utils.PyDataset):
    """Training batches, in a fresh order every epoch, each mixed by `mix`.

    The order and the draws depend only on (seed, epoch, batch); the training loop sets `epoch` at
    each epoch's start (`SetMixingEpoch`).
    """

    def __init__(self, x: np.ndarray, targets: np.ndarray, config, batch_size: int):
        super().__init__()
        self.x, self.targets, self.config, self.batch_size = x, targets, config, batch_size
        self.epoch, self._order = 0, (None, None)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def order(self) -> np.ndarray:
        """This epoch's order of the training images (drawn once an epoch)."""
        if self._order[0] != self.epoch:
            rng = np.random.default_rng([self.config.seed, MIXING_STREAM, self.epoch])
            self._order = (self.epoch, rng.permutation(len(self.x)))
        return self._order[1]

    def __getitem__(self, index):
        part = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.config.seed, MIXING_STREAM, self.epoch, index])
        return mix(self.x[part], self.targets[part], self.config, rng)


class SetMixingEpoch(keras.callbacks.Callback):
    """Tells the mixed feed which epoch begins (a resumed run starts at its saved epoch)."""

    def __init__(self, feed: MixedBatches):
        super().__init__()
        self.feed = feed

    def on_epoch_begin(self, epoch, logs=None):
        self.feed.epoch = epoch
