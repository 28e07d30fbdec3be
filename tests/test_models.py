"""Tests parametrized over the model registry: build, parameter count, FLOPs, one training step, knobs.

How the expected parameter counts were obtained (Keras 3.15; a BN layer counts 4 per channel:
gamma, beta and the two moving statistics; every conv has a bias unless noted):
- template_resnet: docs/sources.md#the-template-residual-network gives 316,394; a closed-form count
  by hand agrees.
- vgg_like: closed form by hand: 19,776 + 93,120 + 370,560 (the three conv groups with BN)
  + 280,074 (Dense 2048→128→128→10) = 763,530.
- resnet_v1 / resnet_v2: the Keras ResNet tutorial's code copied as printed into a scratch script (two
  typesetting breaks repaired: the missing `conv_first=True):` line and `stack &gt 0`), run on
  Keras 3; its count_params(), a closed-form count and the registry's builder agree at every
  depth, and the two models match layer by layer (type, output shape, parameters).
- resnet18 / resnet34: the TF2 ResNet-18 tutorial's subclassed ResNet copied as printed into a scratch script
  (tf.nn.relu → keras.ops.relu) and built on a 32x32x3 batch; count_params() agrees with the
  builder and with a closed-form count (bias-carrying 1x1 shortcuts without BN; the "valid" stem
  conv changes the maps, 30/15/8/4, not the count).
- template_resnet with block "pre", inception_resnet: our own designs (see their docstrings); a closed-form count by
  hand agrees with Keras, for the defaults and for the variants below.
"""

import functools
import inspect
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from ablation.models import MODELS, build_model, get_builder
from ablation.models.flops import count_flops

EXPECTED_PARAMS = {
    "template_resnet": 316_394,  # docs/sources.md#the-template-residual-network
    "vgg_like": 763_530,
    "resnet_v1": 274_442,  # depth 20; the paper says ~0.27M
    "resnet_v2": 1_673_738,  # depth 56
    "resnet18": 11_184_778,
    "resnet34": 21_304_074,
    "inception_resnet": 388_842,
}

VARIANT_PARAMS = [
    # The ladder's last step: stage 2 with 7 blocks, stage 3 with 1 + 5, stage 4 with 1 + 2, dropout.
    ("template_resnet", {"stage2_blocks": 7, "stage3_blocks": 5, "stage4_blocks": 2, "dropout_rate": 0.5}, 434_346),
    # Pre-activation blocks: the template's 316,394 - 1,536: the BNs move to each conv's input (same sizes
    # in identity blocks), the two shortcut BNs and the first block's BN(64) go, a final BN(256) comes.
    ("template_resnet", {"block": "pre"}, 314_858),
    ("template_resnet", {"stage2_blocks": 7, "stage3_blocks": 5, "stage4_blocks": 2, "dropout_rate": 0.5,
                         "block": "pre"}, 432_810),
    # Tutorial 003's code; the ResNet paper (option A shortcuts: zero padding, no parameters) says
    # 0.27M / 0.46M / 0.85M / 1.7M; the tutorial's 1x1 projections and conv biases add ~1-2%.
    ("resnet_v1", {"depth": 20}, 274_442),
    ("resnet_v1", {"depth": 32}, 470_218),
    ("resnet_v1", {"depth": 56}, 861_770),
    ("resnet_v1", {"depth": 110}, 1_742_762),
    ("resnet_v2", {"depth": 56}, 1_673_738),
    ("inception_resnet", {"blocks_a": 5, "blocks_b": 10, "blocks_c": 5, "width": 32}, 3_200_074),
]

# Template FLOPs by hand, multiply-adds per image (then x2):
#   stem 3x3x3x64 at 32x32:                                   1,769,472
#   stage 2, 5 x (64·16 + 9·16·16 + 16·64 = 4,352) x 1,024:   22,282,240
#   stage 3 conv block (2,048 + 9,216 + 4,096 + 8,192 shortcut) x 256: 6,029,312
#           3 identity blocks (4,096 + 9,216 + 4,096) x 256:  13,369,344
#   stage 4 conv block (8,192 + 36,864 + 16,384 + 32,768) x 64: 6,029,312
#           1 identity block (16,384 + 36,864 + 16,384) x 64: 4,456,448
#   Dense 4,096 x 10:                                              40,960
#   total 53,977,088 multiply-adds = 107,954,176 FLOPs.
TEMPLATE_FLOPS = 2 * 53_977_088


@functools.cache
def default_model(name):
    keras.utils.set_random_seed(0)
    return build_model(name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builds_with_expected_param_count(name):
    model = default_model(name)
    assert model.output.shape[-1] == 10
    params = model.count_params()
    if name not in EXPECTED_PARAMS:
        pytest.fail(f"model {name!r} has no entry in EXPECTED_PARAMS: add {name!r}: {params:_} after checking it")
    assert params == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name, knobs, expected", VARIANT_PARAMS)
def test_knob_variant_param_count(name, knobs, expected):
    assert build_model(name, **knobs).count_params() == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_flops_are_plausible(name):
    model = default_model(name)
    flops, params = count_flops(model), model.count_params()
    # Every weight is used at least once per image, and at most at every one of the 32x32 positions.
    assert params < flops < 2 * 32 * 32 * params


def test_template_flops_match_hand_count():
    assert count_flops(default_model("template_resnet")) == TEMPLATE_FLOPS


def test_flops_convention_on_small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4x4 positions x 3·3·3·4
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 4x4 x 3·3·4
    x = keras.layers.SeparableConv2D(6, 3, padding="valid")(x)  # 2x2 x (3·3·4 + 4·6)
    x = keras.layers.BatchNormalization()(x)  # not counted
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)  # 24 x 5
    model = keras.Model(inputs, outputs)
    multiply_adds = 16 * 108 + 16 * 36 + 4 * (36 + 24) + 24 * 5
    assert count_flops(model) == 2 * multiply_adds


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_training_step(name):
    model = default_model(name)
    # Eagerly: tracing and compiling the graph of one step costs 5-10x the step itself on a CPU.
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32, 3), dtype=np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 10, 8), 10)
    loss = model.train_on_batch(images, labels)
    assert math.isfinite(float(np.asarray(loss).ravel()[0]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unknown_knob_is_named(name):
    with pytest.raises(TypeError, match="no_such_knob"):
        build_model(name, no_such_knob=1)


def test_resnet_depth_must_fit_the_formula():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_model("resnet_v1", depth=21)
    with pytest.raises(ValueError, match="9n \\+ 2"):
        build_model("resnet_v2", depth=21)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_knobs_read_from_source_match_the_builder(name):
    signature = inspect.signature(get_builder(name)).parameters.values()
    knobs = {p.name: p.default for p in signature if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert MODELS[name] == knobs


def test_study_files_load_without_keras():
    # Checking a study (and re-running a finished one) must not pay for TensorFlow's start-up.
    code = ("import sys, pathlib; from ablation.core.study import load_study; "
            "[load_study(p) for p in sorted(pathlib.Path('studies').glob('*.toml'))]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1])
    assert result.stdout.strip() == "[]"
