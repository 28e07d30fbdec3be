"""The template residual network of the assignment report (docs/sources.md#the-template-residual-network),
with its block design as a knob: `block = "post"` is the report's, `"pre"` the course slides' pre-activation
(ResNet v2) block (docs/sources.md#residual-blocks-v1-and-v2), so the two differ only in the block.

The pre-activation variant:
- block: BN → ReLU → Conv 1x1 F1 (stride) → BN → ReLU → Conv 3x3 F2 → BN → ReLU → Conv 1x1 F3,
  added to the input with no ReLU after the add and nothing (no BN) on the identity path;
- where the shape changes (first block of stages 3 and 4) the shortcut is a plain strided
  Conv 1x1 F3 (with bias, no BN) on the block's raw input, as the Keras ResNet tutorial's v2 does.
Its stem and head (choices, following He et al. 2016, "Identity Mappings in Deep Residual Networks",
which the Keras ResNet tutorial's v2 also follows):
- stem: the template's Conv 3x3 64 (same) → BN → ReLU, applied "before splitting into two
  paths"; so the network's first block skips its own leading BN-ReLU (it would repeat the stem's).
- head: BN → ReLU before the template's AveragePooling2D(2x2, same) → Flatten → [Dropout] →
  Dense(softmax); this last activation is needed because no block ends in one.
"""

import keras
from keras import layers

from ablation.models import register
from ablation.models.layers import BatchNormalization, classifier


def _conv_bn(x, filters, kernel, strides=1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same")(x)
    return BatchNormalization()(x)


def _bn_relu(x):
    return layers.ReLU()(BatchNormalization()(x))


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


def preact_bottleneck_block(x, filters, strides=1, preactivate=True):
    """Pre-activation 1x1 → 3x3 → 1x1 bottleneck; identity shortcut, or a 1x1 conv when strides > 1."""
    f1, f2, f3 = filters
    shortcut = x
    if preactivate:
        x = _bn_relu(x)
    x = layers.Conv2D(f1, 1, strides=strides, padding="same")(x)
    x = layers.Conv2D(f2, 3, padding="same")(_bn_relu(x))
    x = layers.Conv2D(f3, 1, padding="same")(_bn_relu(x))
    if strides != 1:
        shortcut = layers.Conv2D(f3, 1, strides=strides, padding="same")(shortcut)
    return layers.Add()([x, shortcut])


@register
def template_resnet(input_shape=(32, 32, 3), num_classes=10, *, stage2_blocks: int = 5, stage3_blocks: int = 3,
                    stage4_blocks: int = 1, dropout_rate: float = 0.0, block: str = "post"):
    """Stage 1 conv; stage 2 identity blocks; stages 3-4 a convolutional block + identity blocks.

    The ladder's last step deepens stage 3 to 1 + 5 and stage 4 to 1 + 2 blocks and adds
    Dropout(0.5) before the classifier; the template itself has 316,394 parameters.
    """
    if block not in ("post", "pre"):
        raise ValueError(f"template_resnet: block must be 'post' or 'pre', not {block!r}")
    inputs = keras.Input(input_shape)
    x = layers.ReLU()(_conv_bn(inputs, 64, 3))
    for index, (filters, strides) in enumerate(stages(stage2_blocks, stage3_blocks, stage4_blocks)):
        if block == "pre":
            x = preact_bottleneck_block(x, filters, strides, preactivate=index > 0)
        else:
            x = bottleneck_block(x, filters, strides)
    if block == "pre":
        x = _bn_relu(x)
    x = layers.Flatten()(layers.AveragePooling2D(2, padding="same")(x))
    return keras.Model(inputs, classifier(x, num_classes, dropout_rate), name="template_resnet")


def stages(stage2_blocks: int, stage3_blocks: int, stage4_blocks: int) -> list[tuple[tuple[int, int, int], int]]:
    """The template's blocks in order, as (filters, strides): stage 2's identity blocks, then stages 3 and 4,
    each a strided block that halves the map and identity blocks."""
    return ([((16, 16, 64), 1)] * stage2_blocks
            + [((32, 32, 128), 2)] + [((32, 32, 128), 1)] * stage3_blocks
            + [((64, 64, 256), 2)] + [((64, 64, 256), 1)] * stage4_blocks)
