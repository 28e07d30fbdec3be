"""The fused BatchNormalization gives the numbers of `keras.layers.BatchNormalization`, and is fused on TF."""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from ablation.models.layers import BatchNormalization

ON_TF = keras.backend.backend() == "tensorflow"
needs_tf = pytest.mark.skipif(not ON_TF, reason="the fused kernel exists on the TensorFlow backend only")

ATOL = 1e-5
SHAPE_4D = (8, 6, 6, 5)  # batch, height, width, channels
CONFIGS = {
    "default": {},
    "no_center": {"center": False},
    "no_scale": {"scale": False},
    "neither": {"center": False, "scale": False},
    "momentum_epsilon_axis": {"momentum": 0.9, "epsilon": 2e-5, "axis": 3},
}


def _inputs(shape, seed=0):
    """Inputs off zero mean and unit variance, so that normalization visibly does something."""
    rng = np.random.default_rng(seed)
    return (3.0 * rng.standard_normal(shape) + 1.5).astype("float32")


def _pair(shape, **config):
    """A fused layer and a Keras layer with the same config and the same (non-default) weights."""
    fused = BatchNormalization(**config)
    plain = keras.layers.BatchNormalization(**config)
    fused.build(shape)
    plain.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in fused.get_weights()]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _assert_weights_close(fused, plain):
    names = [w.name for w in fused.weights]
    for name, a, b in zip(names, fused.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_outputs_match_keras(config, training):
    fused, plain = _pair(SHAPE_4D, **config)
    x = _inputs(SHAPE_4D)
    assert fused.uses_fused_kernel(x) == ON_TF
    np.testing.assert_allclose(
        _numpy(fused(x, training=training)), _numpy(plain(x, training=training)), atol=ATOL
    )


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_moving_statistics_match_keras_after_training_calls(config):
    fused, plain = _pair(SHAPE_4D, **config)
    for step in range(5):
        x = _inputs(SHAPE_4D, seed=step)
        fused(x, training=True)
        plain(x, training=True)
    _assert_weights_close(fused, plain)
    x = _inputs(SHAPE_4D, seed=99)
    np.testing.assert_allclose(
        _numpy(fused(x, training=False)), _numpy(plain(x, training=False)), atol=ATOL
    )


def test_batch_of_one_pixel_matches_keras():
    """n = 1: the biased variance is 0 (the kernel's Bessel correction must not divide by zero)."""
    fused, plain = _pair((1, 1, 1, 3))
    x = _inputs((1, 1, 1, 3))
    np.testing.assert_allclose(_numpy(fused(x, training=True)), _numpy(plain(x, training=True)), atol=ATOL)
    _assert_weights_close(fused, plain)


def test_frozen_layer_uses_moving_statistics_like_keras():
    fused, plain = _pair(SHAPE_4D)
    fused.trainable = plain.trainable = False
    x = _inputs(SHAPE_4D)
    np.testing.assert_allclose(_numpy(fused(x, training=True)), _numpy(plain(x, training=True)), atol=ATOL)
    _assert_weights_close(fused, plain)


@needs_tf
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_gradients_match_keras(config, training):
    import tensorflow as tf

    fused, plain = _pair(SHAPE_4D, **config)
    x = tf.constant(_inputs(SHAPE_4D))
    # A loss that weights the outputs unevenly: the plain sum has zero gradient through BN.
    weights = tf.constant(_inputs(SHAPE_4D, seed=7))

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=training) * weights)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    fused_grads, plain_grads = gradients(fused), gradients(plain)
    assert len(fused_grads) == 1 + config.get("center", True) + config.get("scale", True)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_dense_features_fall_back_to_keras(training):
    fused, plain = _pair((16, 7))
    x = _inputs((16, 7))
    assert not fused.uses_fused_kernel(x)
    np.testing.assert_allclose(
        _numpy(fused(x, training=training)), _numpy(plain(x, training=training)), atol=ATOL
    )
    _assert_weights_close(fused, plain)


@pytest.mark.parametrize(
    "config", [{"axis": 1}, {"renorm": True}, {"epsilon": 1e-6}], ids=["channels_first", "renorm", "tiny_epsilon"]
)
def test_configs_the_kernel_does_not_cover_fall_back_to_keras(config):
    fused, plain = _pair(SHAPE_4D, **config)
    x = _inputs(SHAPE_4D)
    assert not fused.uses_fused_kernel(x)
    for training in (True, False):
        np.testing.assert_allclose(
            _numpy(fused(x, training=training)), _numpy(plain(x, training=training)), atol=ATOL
        )
    _assert_weights_close(fused, plain)


def _traced_op_types(layer, shape, training):
    import tensorflow as tf

    function = tf.function(lambda x: layer(x, training=training))
    graph = function.get_concrete_function(tf.TensorSpec((None, *shape[1:]), "float32")).graph
    return {op.type for op in graph.get_operations()}


@needs_tf
@pytest.mark.parametrize("training", [True, False])
def test_fused_kernel_runs_on_tensorflow(training):
    layer, _ = _pair(SHAPE_4D)
    assert layer.uses_fused_kernel(_inputs(SHAPE_4D))
    assert "FusedBatchNormV3" in _traced_op_types(layer, SHAPE_4D, training)


@needs_tf
def test_dense_features_trace_no_fused_kernel():
    layer, _ = _pair((16, 7))
    assert not any(op.startswith("FusedBatchNorm") for op in _traced_op_types(layer, (16, 7), True))


# Mixed precision: the inputs are rounded to the compute type, the statistics stay float32. The
# outputs may differ from Keras' in the last bit of the compute type (both round a float32 result).
MIXED_TOLERANCE = {"mixed_bfloat16": 2**-6, "mixed_float16": 2**-9}


@needs_tf
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("policy", MIXED_TOLERANCE)
def test_mixed_precision_runs_the_fused_kernel_on_half_inputs_with_float32_statistics(policy, training):
    import tensorflow as tf

    fused, plain = _pair(SHAPE_4D, dtype=policy)
    x = _inputs(SHAPE_4D)
    assert fused.uses_fused_kernel(keras.ops.cast(x, fused.compute_dtype))
    kernels = [op for op in tf.function(lambda x: fused(x, training=training)).get_concrete_function(
        tf.TensorSpec(SHAPE_4D, "float32")).graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert [(op.get_attr("T"), op.get_attr("U")) for op in kernels] == [(tf.as_dtype(fused.compute_dtype), tf.float32)]
    for step in range(3):
        outputs, expected = fused(_inputs(SHAPE_4D, seed=step), training=training), plain(_inputs(SHAPE_4D, seed=step), training=training)
        assert keras.backend.standardize_dtype(outputs.dtype) == fused.compute_dtype
        np.testing.assert_allclose(_numpy(keras.ops.cast(outputs, "float32")), _numpy(keras.ops.cast(expected, "float32")),
                                   atol=MIXED_TOLERANCE[policy] * 4, rtol=MIXED_TOLERANCE[policy])
    assert {keras.backend.standardize_dtype(w.dtype) for w in fused.weights} == {"float32"}
    _assert_weights_close(fused, plain)


@needs_tf
@pytest.mark.parametrize("policy", MIXED_TOLERANCE)
def test_mixed_precision_gradients_match_keras(policy):
    import tensorflow as tf

    fused, plain = _pair(SHAPE_4D, dtype=policy)
    x, weights = tf.constant(_inputs(SHAPE_4D)), tf.constant(_inputs(SHAPE_4D, seed=7))

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), "float32") * weights)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    for a, b in zip(gradients(fused), gradients(plain), strict=True):
        assert a.dtype == b.dtype == tf.float32
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=MIXED_TOLERANCE[policy] * 16, rtol=MIXED_TOLERANCE[policy] * 4)


def _small_convnet(batch_norm):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(batch_norm()(x))
    x = keras.layers.Flatten()(x)
    x = batch_norm()(keras.layers.Dense(6)(x))
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _data(n=64):
    rng = np.random.default_rng(3)
    return _inputs((n, 8, 8, 3)), rng.integers(0, 3, n)


def test_fit_matches_keras_layer():
    """A few optimizer steps through whole models stay on Keras' trajectory."""
    fused_model, plain_model = _small_convnet(BatchNormalization), _small_convnet(keras.layers.BatchNormalization)
    plain_model.set_weights(fused_model.get_weights())
    x, y = _data()
    for model in (fused_model, plain_model):
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(fused_model.get_weights(), plain_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_saved_model_reloads(tmp_path):
    model = _small_convnet(BatchNormalization)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    bn_layers = [layer for layer in reloaded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn_layers) == 2 and all(type(layer) is BatchNormalization for layer in bn_layers)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert [layer.get_config() for layer in bn_layers] == [
        layer.get_config() for layer in model.layers if isinstance(layer, BatchNormalization)
    ]


def test_only_this_module_imports_tensorflow_and_only_when_the_backend_is_tensorflow():
    """KERAS_BACKEND=jax must work without TensorFlow installed."""
    package = Path(__file__).resolve().parents[1] / "ablation"
    importers = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] == "tensorflow" for name in names):
                importers.setdefault(path.relative_to(package).as_posix(), []).append(node)
    assert set(importers) == {"models/layers.py"}, f"modules importing tensorflow: {sorted(importers)}"
    top_level = ast.parse((package / "models" / "layers.py").read_text()).body
    assert not any(node in top_level for node in importers["models/layers.py"]), "unguarded tensorflow import"
