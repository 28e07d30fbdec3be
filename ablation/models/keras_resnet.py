"""Keras ResNet v1 and v2 for CIFAR-10, as in the Keras ResNet tutorial (docs/sources.md#the-keras-resnet-tutorial).

The tutorial's code is followed layer for layer: every conv is he_normal with an l2(1e-4) kernel
regularizer and a bias, projection shortcuts are bare 1x1 convs (no BN, no activation), and the
head is AveragePooling2D(8) → Flatten → Dense(softmax, he_normal) with no regularizer.
"""

import keras
from keras import layers

from ablation.models import register
from ablation.models.layers import BatchNormalization


def resnet_layer(
    inputs,
    num_filters=16,
    kernel_size=3,
    strides=1,
    activation="relu",
    batch_normalization=True,
    conv_first=True,
):
    """The tutorial's building unit: Conv-BN-activation (conv_first) or BN-activation-Conv."""
    conv = layers.Conv2D(
        num_filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(1e-4),
    )
    x = inputs
    if conv_first:
        x = conv(x)
    if batch_normalization:
        x = BatchNormalization()(x)
    if activation is not None:
        x = layers.Activation(activation)(x)
    if not conv_first:
        x = conv(x)
    return x


def _classifier(x, num_classes):
    # The tutorial's AveragePooling2D(8) averages a 32x32 image's whole 8x8 final map: any size, its whole map.
    x = layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]))(x)
    x = layers.Flatten()(x)
    return layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(x)


@register
def resnet_v1(input_shape=(32, 32, 3), num_classes=10, *, depth: int = 20):
    """ResNet v1: depth = 6n + 2; three stacks of n basic blocks with 16/32/64 filters.

    The first block of stacks 2 and 3 has stride 2 and a 1x1 conv projection shortcut; ReLU after
    every add; no BN after the last add (the tutorial's comment).
    """
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"resnet_v1 depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
    num_res_blocks = (depth - 2) // 6
    num_filters = 16

    inputs = keras.Input(input_shape)
    x = resnet_layer(inputs)
    for stack in range(3):
        for res_block in range(num_res_blocks):
            downsample = stack > 0 and res_block == 0
            strides = 2 if downsample else 1
            y = resnet_layer(x, num_filters, strides=strides)
            y = resnet_layer(y, num_filters, activation=None)
            if downsample:
                # Linear projection shortcut to match the changed dimensions.
                x = resnet_layer(
                    x, num_filters, kernel_size=1, strides=strides,
                    activation=None, batch_normalization=False,
                )
            x = layers.Activation("relu")(layers.Add()([x, y]))
        num_filters *= 2
    outputs = _classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=f"resnet_v1_{depth}")


@register
def resnet_v2(input_shape=(32, 32, 3), num_classes=10, *, depth: int = 56):
    """ResNet v2: depth = 9n + 2; three stages of n pre-activation bottleneck units (BN-ReLU-Conv).

    Filters 16 in → 64 out in stage 1, then doubling. The very first unit skips its BN-ReLU (the
    stem conv already applied one); the first unit of every stage has a 1x1 conv projection
    shortcut (stride 2 in stages 2 and 3); no ReLU after the adds; BN → ReLU before the pooling.
    """
    if depth < 11 or (depth - 2) % 9 != 0:
        raise ValueError(f"resnet_v2 depth must be 9n + 2 with n >= 1 (56, 110), got {depth}")
    num_res_blocks = (depth - 2) // 9
    num_filters_in = 16

    inputs = keras.Input(input_shape)
    # v2 performs Conv2D with BN-ReLU on the input before splitting into two paths.
    x = resnet_layer(inputs, num_filters_in, conv_first=True)
    for stage in range(3):
        for res_block in range(num_res_blocks):
            activation, batch_normalization, strides = "relu", True, 1
            if stage == 0:
                num_filters_out = num_filters_in * 4
                if res_block == 0:
                    activation, batch_normalization = None, False
            else:
                num_filters_out = num_filters_in * 2
                if res_block == 0:
                    strides = 2
            y = resnet_layer(
                x,
                num_filters_in,
                kernel_size=1,
                strides=strides,
                activation=activation,
                batch_normalization=batch_normalization,
                conv_first=False,
            )
            y = resnet_layer(y, num_filters_in, conv_first=False)
            y = resnet_layer(y, num_filters_out, kernel_size=1, conv_first=False)
            if res_block == 0:
                x = resnet_layer(
                    x, num_filters_out, kernel_size=1, strides=strides,
                    activation=None, batch_normalization=False,
                )
            x = layers.Add()([x, y])
        num_filters_in = num_filters_out
    x = layers.Activation("relu")(BatchNormalization()(x))
    outputs = _classifier(x, num_classes)
    return keras.Model(inputs, outputs, name=f"resnet_v2_{depth}")
