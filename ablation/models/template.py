"""The template residual network of the assignment report (docs/sources.md#the-template-residual-network)."""

import keras
from keras import layers

from ablation.models import register
from ablation.models.layers import BatchNormalization, classifier


def _conv_bn(x, filters, kernel, strides=1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same")(x)
    return BatchNormalization()(x)


def bottleneck_block(x, filters, strides=1):
    """1x1 → 3x3 → 1x1 bottleneck, ReLU after the add; a strided 1x1+BN shortcut when strides > 1."""
    f1, f2, f3 = filters
    shortcut = x
    x = layers.ReLU()(_conv_bn(x, f1, 1, strides))
    x = layers.ReLU()(_conv_bn(x, f2, 3))
    x = _conv_bn(x, f3, 1)
    if strides != 1:
        shortcut = _conv_bn(shortcut, f3, 1, strides)
    return layers.ReLU()(layers.Add()([x, shortcut]))


@register
def template_resnet(
    input_shape=(32, 32, 3),
    num_classes=10,
    *,
    stage2_blocks: int = 5,
    stage3_blocks: int = 3,
    stage4_blocks: int = 1,
    dropout_rate: float = 0.0,
):
    """Stage 1 conv; stage 2 identity blocks; stages 3-4 a convolutional block + identity blocks.

    The ladder's last step deepens stage 3 to 1 + 5 and stage 4 to 1 + 2 blocks and adds
    Dropout(0.5) before the classifier; the template itself has 316,394 parameters.
    """
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(_conv_bn(inputs, 64, 3))
    for filters, strides in stages(stage2_blocks, stage3_blocks, stage4_blocks):
        x = bottleneck_block(x, filters, strides)
    x = layers.Flatten()(layers.AveragePooling2D(2, padding="same")(x))
    return keras.Model(inputs, classifier(x, num_classes, dropout_rate), name="template_resnet")


def stages(stage2_blocks: int, stage3_blocks: int, stage4_blocks: int) -> list[tuple[tuple[int, int, int], int]]:
    """The template's blocks in order, as (filters, strides): stage 2's identity blocks, then stages 3 and 4,
    each a strided block that halves the map and identity blocks (the template and its pre-activation twin)."""
    return ([((16, 16, 64), 1)] * stage2_blocks
            + [((32, 32, 128), 2)] + [((32, 32, 128), 1)] * stage3_blocks
            + [((64, 64, 256), 2)] + [((64, 64, 256), 1)] * stage4_blocks)
