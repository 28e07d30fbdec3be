"""A network saved for others carries Keras' own BatchNormalization: same weights, same numbers."""

import keras
import numpy as np

from ablation.models import build_model
from ablation.models.layers import BatchNormalization, portable


def test_the_portable_network_has_no_project_layer_and_predicts_the_same():
    network = build_model("template_resnet", (32, 32, 3), 10, stage2_blocks=1, stage3_blocks=1, stage4_blocks=1,
                          dropout_rate=0.5)
    images = np.random.default_rng(0).uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    network(images, training=True)  # moving statistics away from their starting values
    copy = portable(network)
    assert any(isinstance(layer, BatchNormalization) for layer in network.layers)
    assert not any(isinstance(layer, BatchNormalization) for layer in copy.layers)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in copy.layers) == sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in network.layers)
    np.testing.assert_allclose(copy.predict(images, verbose=0), network.predict(images, verbose=0), atol=1e-6)
