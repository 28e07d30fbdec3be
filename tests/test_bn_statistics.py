"""BatchNormalization statistics: the recompute is exact, shrunk profiles log what the network learned, full is the recipe."""

import dataclasses

import keras
import numpy as np
import pytest

from ablation.core.profiles import get_profile
from ablation.core.study import load_study
from ablation.data import LazySplits
from ablation.models import build_model
from ablation.training import bn_statistics


def test_recomputed_statistics_are_each_layers_input_mean_and_variance_at_the_current_weights():
    network = build_model("template_resnet", (32, 32, 3), 10, stage2_blocks=1, stage3_blocks=1, stage4_blocks=1,
                          dropout_rate=0.5)
    layers = bn_statistics.batch_norm_layers(network)
    momenta = [layer.momentum for layer in layers]
    images = np.random.default_rng(0).uniform(0, 1, (64, 32, 32, 3)).astype("float32")
    network(images[:8], training=True)  # the moving statistics now hold something else

    bn_statistics.recompute(network, images)

    # Layer by layer, in order: each layer's input computed in inference mode through the layers before
    # it (the first layer's input involves no statistics at all, so each layer rests on checked ones).
    assert len(layers) > 3
    for layer in layers:
        inputs = keras.ops.convert_to_numpy(keras.Model(network.inputs, layer.input)(images, training=False))
        channels = inputs.reshape(-1, inputs.shape[-1]).astype("float64")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), channels.mean(axis=0),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), channels.var(axis=0),
                                   rtol=1e-3, atol=1e-5)
    assert [layer.momentum for layer in layers] == momenta
    assert [layer.rate for layer in bn_statistics.dropout_layers(network)] == [0.5]


def test_full_profile_configs_hash_as_before_the_treatment_existed():
    # Recorded from the code before bn_statistics (and the later fields) existed: the recipe's finished
    # work must stay reusable.
    before = {"template": "06d3a04db0cf", "augmentation": "e294a7f232d8", "deeper_early_stopping": "12db6b304b61",
              "lr_schedule": "65c465eae643", "deeper_dropout": "348f4785b904", "vgg_like": "04f0ac372b3a"}
    study, full = load_study("assignment"), get_profile("full")
    assert {step.name: full.apply(step.config).hash() for step in study.steps} == before
    assert all(full.apply(step.config).bn_statistics == "moving" for step in study.steps)


def test_the_treatment_is_part_of_the_work_it_names():
    config = get_profile("quick").apply(load_study("assignment").step("template").config)
    assert config.bn_statistics == "recomputed"
    assert config.hash() != dataclasses.replace(config, bn_statistics="moving").hash()


@pytest.mark.slow
def test_a_shrunk_profiles_logged_test_accuracy_is_the_networks_not_the_lag(cifar_path):
    """About 500 training images, one epoch (16 steps): the moving statistics still hold mostly their starting values.

    The recipe's moving statistics ("moving") score far from the same network with recomputed ones;
    the profile's treatment logs that network's accuracy.
    """
    from ablation.training.fit import prepare_inputs, train

    smoke = get_profile("smoke").apply(load_study("assignment").step("template").config)
    # The template without its identity blocks (the tests' tiny network): its BatchNormalization layers lag the
    # same (a 14-15 point gap over seeds 0-2, recomputed within 0.25), at a third of the full template's CPU.
    config = dataclasses.replace(smoke, train_subset=640, test_subset=400, epochs=1,
                                 model_args={**smoke.model_args, "stage2_blocks": 0, "stage3_blocks": 0,
                                             "stage4_blocks": 0})
    splits = LazySplits(cifar_path).splits(**config.split_args())
    gaps = {}
    for treatment in ("moving", config.bn_statistics):
        result = train(dataclasses.replace(config, bn_statistics=treatment), splits)
        x_train, _, x_test, _ = prepare_inputs(splits, config)
        bn_statistics.recompute(result.network, bn_statistics.fixed_images(x_train, 500, seed=123))
        gaps[treatment] = result.test_accuracy - bn_statistics.accuracy(result.network, x_test, splits.y_test)
    assert abs(gaps["moving"]) > 0.02, gaps  # the lag is there to be removed
    assert abs(gaps["recomputed"]) <= 0.02, gaps
