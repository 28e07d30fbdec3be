"""The VGG-like baseline of the previous assignment (the assignment report, docs/sources.md#the-vgg-like-baseline)."""

import keras
from keras import layers

from ablation.models import register
from ablation.models.layers import BatchNormalization, classifier


@register
def vgg_like(
    input_shape=(32, 32, 3),
    num_classes=10,
    *,
    filters: tuple = (32, 64, 128),
    convs_per_group: int = 3,
    dense_units: int = 128,
    dropout_rate: float = 0.2,
):
    """Groups of Conv3x3-BN-ReLU with a 2x2 max-pool after each; two Dense(128); dropout; softmax.

    Choices where the report is silent (docs/sources.md#the-vgg-like-baseline): filters 32/64/128
    (the report gives none) and one pooling layer per group.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for group_filters in filters:
        for _ in range(convs_per_group):
            x = layers.Conv2D(group_filters, 3, padding="same")(x)
            x = layers.ReLU()(BatchNormalization()(x))
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    return keras.Model(inputs, classifier(x, num_classes, dropout_rate), name="vgg_like")
