"""ResNet-18 and ResNet-34 for CIFAR-10, as in the TF2 ResNet-18 tutorial (docs/sources.md#the-tf2-resnet-18-tutorial).

Rewritten over the functional API (the tutorial subclasses keras.Model); the layers, their order
and their arguments are the tutorial's, so the parameter count is the same. Two details copied
as written there:
- the stem conv gives no padding, so it is "valid": 32x32 → 30x30 (then 15, 8, 4 in layers 2-4);
- the shortcut is a bare 1x1 conv (no BN) where the stride is not 1, and the identity otherwise.
One deliberate change: the tutorial's Dense(10) has no activation (it trains on logits); here it
is a softmax, because the project trains every model with categorical cross-entropy on
probabilities (docs/sources.md#the-ladder).
"""

import keras
from keras import layers

from ablation.models import register
from ablation.models.layers import BatchNormalization, classifier


def basic_block(x, filters, strides=1):
    """Conv3x3-BN-ReLU-Conv3x3-BN, add the shortcut (1x1 conv where strides != 1), ReLU."""
    shortcut = x
    x = layers.Conv2D(filters, 3, strides=strides, padding="same")(x)
    x = layers.Activation("relu")(BatchNormalization()(x))
    x = layers.Conv2D(filters, 3, strides=1, padding="same")(x)
    x = BatchNormalization()(x)
    if strides != 1:
        shortcut = layers.Conv2D(filters, 1, strides=strides)(shortcut)
    return layers.Activation("relu")(layers.Add()([x, shortcut]))


def _resnet(input_shape, num_classes, blocks_per_layer, name):
    """Stem, four layers of basic blocks (64/128/256/512 filters, strides 1/2/2/2), GAP, Dense."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(64, 3, strides=1)(inputs)  # padding "valid", as in the tutorial
    x = layers.Activation("relu")(BatchNormalization()(x))
    x = layers.MaxPooling2D(pool_size=2, strides=1, padding="same")(x)
    for filters, strides, num_blocks in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks_per_layer):
        x = basic_block(x, filters, strides)
        for _ in range(1, num_blocks):
            x = basic_block(x, filters)
    return keras.Model(inputs, classifier(layers.GlobalAveragePooling2D()(x), num_classes), name=name)


@register
def resnet18(input_shape=(32, 32, 3), num_classes=10):
    """ResNet-18: basic blocks [2, 2, 2, 2] (the TF2 ResNet-18 tutorial)."""
    return _resnet(input_shape, num_classes, (2, 2, 2, 2), "resnet18")


@register
def resnet34(input_shape=(32, 32, 3), num_classes=10):
    """ResNet-34: basic blocks [3, 4, 6, 3] (the TF2 ResNet-18 tutorial)."""
    return _resnet(input_shape, num_classes, (3, 4, 6, 3), "resnet34")
