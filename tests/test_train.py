"""Training: the source's augmentation as one affine draw, seeds and determinism, early stopping's restore rule."""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy import stats as scipy_stats

from ablation.core.config import Config
from ablation.data import load_cifar10, make_splits
from ablation.models.layers import BatchNormalization
from ablation.training.augment import RandomAffine, draw, resample, transform_vectors
from ablation.training.fit import AugmentedImages, EarlyStopping, make_optimizer, train

AUGMENTED = Config(rotation_range=15.0, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
                   horizontal_flip=True)
TINY = Config(model_args={"stage2_blocks": 0, "stage3_blocks": 0, "stage4_blocks": 0}, epochs=2, batch_size=32,
              train_subset=80, test_subset=50, run_eagerly=True)


@pytest.fixture(scope="module")
def tiny_splits(cifar_path):
    return make_splits(load_cifar10(cifar_path), **TINY.split_args())


def drawn(count=20_000, seed=7) -> dict:
    return {k: keras.ops.convert_to_numpy(v) for k, v in draw(count, AUGMENTED, keras.random.SeedGenerator(seed)).items()}


def test_zoom_draws_x_and_y_independently_and_uniformly_like_image_data_generator():
    params = drawn()
    for axis in ("zoom_x", "zoom_y"):
        values = params[axis]
        assert 0.9 <= values.min() and values.max() <= 1.1
        assert scipy_stats.kstest((values - 0.9) / 0.2, "uniform").pvalue > 1e-3
    # RandomZoom would draw one factor for both axes (correlation 1); the generator draws two.
    assert abs(np.corrcoef(params["zoom_x"], params["zoom_y"])[0, 1]) < 0.05
    assert np.mean(np.abs(params["zoom_x"] - params["zoom_y"]) > 0.02) > 0.5


def test_angle_shift_and_flip_ranges():
    params = drawn()
    assert np.degrees(np.abs(params["angle"]).max()) <= 15.0 + 1e-4
    assert np.degrees(np.abs(params["angle"]).max()) > 14.5  # the whole range is used
    assert np.abs(params["shift_x"]).max() <= 3.2 + 1e-4 and np.abs(params["shift_y"]).max() <= 3.2 + 1e-4
    assert set(np.unique(params["flip"])) == {-1.0, 1.0}
    assert 0.45 < np.mean(params["flip"] < 0) < 0.55


def test_one_resampling_reproduces_shift_and_flip_exactly():
    image = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    identity = {"angle": [0.0], "shift_x": [0.0], "shift_y": [0.0], "zoom_x": [1.0], "zoom_y": [1.0], "flip": [1.0]}
    as_arrays = lambda p: {k: np.asarray(v, "float32") for k, v in p.items()}  # noqa: E731
    apply = lambda p: keras.ops.convert_to_numpy(resample(image, transform_vectors(as_arrays(p), 32, 32)))  # noqa: E731
    assert np.array_equal(apply(identity), image)
    assert np.array_equal(apply({**identity, "flip": [-1.0]}), image[:, :, ::-1])
    assert np.array_equal(apply({**identity, "shift_x": [3.0]})[:, :, :29], image[:, :, 3:])


@pytest.mark.parametrize("ranges", [AUGMENTED, Config(rotation_range=90.0, width_shift_range=0.9, height_shift_range=0.5,
                                                     zoom_range=0.9, horizontal_flip=True)], ids=["recipe", "far_outside"])
def test_resampling_by_gathers_gives_affine_transforms_numbers(ranges):
    """Bilinear, edges filled with the nearest pixel: what keras.ops.image.affine_transform gave (on TF, bit for bit)."""
    images = np.random.default_rng(3).random((64, 24, 40, 3)).astype("float32") * 255.0
    transforms = transform_vectors(draw(64, ranges, keras.random.SeedGenerator(5)), 24, 40)
    expected = keras.ops.image.affine_transform(images, transforms, interpolation="bilinear", fill_mode="nearest")
    tolerance = 0.0 if keras.backend.backend() == "tensorflow" else 1e-3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resample(images, transforms)),
                               keras.ops.convert_to_numpy(expected), atol=tolerance, rtol=0)


def test_augmentation_only_in_training():
    layer = RandomAffine(AUGMENTED, seed=1)
    images = np.random.default_rng(1).random((4, 32, 32, 3)).astype("float32")
    assert np.array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    assert not np.allclose(keras.ops.convert_to_numpy(layer(images, training=True)), images)


def test_validation_images_are_augmented_afresh_each_pass():
    x = np.random.default_rng(2).random((10, 32, 32, 3)).astype("float32")
    y = np.arange(10)
    batches = AugmentedImages(x, y, AUGMENTED, batch_size=10)
    first, labels = batches[0]
    second, _ = batches[0]
    assert len(batches) == 1 and np.array_equal(labels, y)
    assert not np.allclose(first, x) and not np.allclose(first, second)


def test_the_same_training_seed_repeats_its_history_bit_for_bit(tiny_splits):
    augmentation = {k: getattr(AUGMENTED, k) for k in ("rotation_range", "width_shift_range", "height_shift_range",
                                                       "zoom_range", "horizontal_flip")}
    config = dataclasses.replace(TINY, **augmentation, seed=3, deterministic=True)
    first, again = train(config, tiny_splits), train(config, tiny_splits)
    other = train(dataclasses.replace(config, seed=4), tiny_splits)
    assert first.history == again.history
    assert np.array_equal(first.test_predictions, again.test_predictions)
    assert first.history["loss"] != other.history["loss"]


def test_hooks_see_every_epoch_from_one(tiny_splits):
    seen = []
    result = train(TINY, tiny_splits, on_epoch=[lambda epoch, logs: seen.append((epoch, sorted(logs)))])
    assert [epoch for epoch, _ in seen] == [1, 2] and result.epochs_run == 2
    assert seen[0][1] == sorted(["accuracy", "learning_rate", "loss", "val_accuracy", "val_loss",
                                 "val_accuracy_moving_bn", "val_accuracy_recomputed_bn",  # the BatchNormalization check
                                 "top5_accuracy", "val_top5_accuracy"])  # 10 classes: top-5 too


@pytest.mark.parametrize("on_stop_only, restored", [(True, False), (False, True)])
def test_best_weights_restored_only_on_a_real_stop_when_asked(on_stop_only, restored):
    # mode="max" on the loss makes the first epoch the best; patience 10 of 3 epochs: stopping never fires.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.default_rng(0).random((32, 4)), np.random.default_rng(1).random((32, 1))
    weights = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(model.get_weights()))
    stopping = EarlyStopping(monitor="loss", mode="max", patience=10, restore_best_weights=True,
                             restore_on_stop_only=on_stop_only)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[record, stopping])
    assert stopping.stopped_epoch == 0 and len(weights) == 3
    expected = weights[0] if restored else weights[-1]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), expected, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[-1], strict=True))


AUGMENTATION = {k: getattr(AUGMENTED, k) for k in ("rotation_range", "width_shift_range", "height_shift_range",
                                                   "zoom_range", "horizontal_flip")}


def test_an_augmented_step_trains_under_xla(tiny_splits):
    """jit_compile = true compiles the training step, augmentation included (Keras' "auto" does on a GPU)."""
    config = dataclasses.replace(TINY, **AUGMENTATION, epochs=1, run_eagerly=False, jit_compile=True)
    assert config.params()["jit_compile"] is True
    result = train(config, tiny_splits)
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"]).all()


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_statistics_and_classifier(tiny_splits, precision):
    config = dataclasses.replace(TINY, **AUGMENTATION, epochs=1, precision=precision)
    result = train(config, tiny_splits)
    assert np.isfinite(result.history["loss"]).all() and np.isfinite(result.test_loss)
    half = precision.removeprefix("mixed_")
    layers = result.network.layers
    assert {layer.compute_dtype for layer in layers[1:-1]} == {half} and layers[-1].compute_dtype == "float32"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in result.network.weights)
    outputs = result.network(tiny_splits.x_test[:4].astype("float32") / 255.0)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    normalizations = [layer for layer in layers if isinstance(layer, BatchNormalization)]
    assert normalizations and all(layer.uses_fused_kernel(keras.ops.zeros((1, 2, 2, 1), half)) for layer in normalizations)
    # float16 needs the loss scaled (its smallest numbers are far above small gradients); bfloat16 does not.
    scaled = isinstance(make_optimizer(config), keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")


@pytest.mark.parametrize("user_value, seen", [(None, "true"), ("false", "false")])
def test_gpu_memory_grows_unless_the_user_says_otherwise(user_value, seen):
    """Every command imports the package first: there TensorFlow is told to take GPU memory as it needs it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_FORCE_GPU_ALLOW_GROWTH"}
    env.update({"TF_FORCE_GPU_ALLOW_GROWTH": user_value} if user_value else {})
    shown = subprocess.run([sys.executable, "-c", "import os, ablation; print(os.environ['TF_FORCE_GPU_ALLOW_GROWTH'])"],
                           env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == seen
