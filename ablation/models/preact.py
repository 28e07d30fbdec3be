"""The template with the course slides' pre-activation (ResNet v2) block (docs/sources.md#residual-blocks-v1-and-v2).

Same stages, filters and knobs as `template_resnet`, so the two differ only in the block design:
- block: BN → ReLU → Conv 1x1 F1 (stride) → BN → ReLU → Conv 3x3 F2 → BN → ReLU → Conv 1x1 F3,
  added to the input with no ReLU after the add and nothing (no BN) on the identity path;
- where the shape changes (first block of stages 3 and 4) the shortcut is a plain strided
  Conv 1x1 F3 (with bias, no BN) on the block's raw input, as the Keras ResNet tutorial's v2 does.
Stem and head (choices, following He et al. 2016, "Identity Mappings in Deep Residual Networks",
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
from ablation.models.template import stages


def _bn_relu(x):
    return layers.ReLU()(BatchNormalization()(x))


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
def preact_resnet(
    input_shape=(32, 32, 3),
    num_classes=10,
    *,
    stage2_blocks: int = 5,
    stage3_blocks: int = 3,
    stage4_blocks: int = 1,
    dropout_rate: float = 0.0,
):
    """The template's stages: stem 64, then (16,16,64), (32,32,128), (64,64,256) pre-activation blocks."""
    inputs = keras.Input(input_shape)
    x = _bn_relu(layers.Conv2D(64, 3, padding="same")(inputs))
    for index, (filters, strides) in enumerate(stages(stage2_blocks, stage3_blocks, stage4_blocks)):
        x = preact_bottleneck_block(x, filters, strides, preactivate=index > 0)
    x = layers.Flatten()(layers.AveragePooling2D(2, padding="same")(_bn_relu(x)))
    return keras.Model(inputs, classifier(x, num_classes, dropout_rate), name="preact_resnet")
