"""A small Inception-ResNet for 32x32 inputs (the course slides, docs/sources.md#inception-resnet; Szegedy et al. 2016).

The paper's layout, shrunk for CIFAR-10 on a CPU. With `width` = w (default 16), "/2" = stride 2:

| part         | map   | channels  | contents                                                      |
|--------------|-------|-----------|---------------------------------------------------------------|
| stem         | 32x32 | 4w = 64   | Conv3x3 2w → Conv3x3 4w                                       |
| A x blocks_a | 32x32 | 4w = 64   | 1x1 w / 1x1 w → 3x3 w / 1x1 w → 3x3 w → 3x3 w; scale_a        |
| reduction A  | 16x16 | 8w = 128  | maxpool3x3/2 / 3x3/2 2w / 1x1 w → 3x3 w → 3x3/2 2w            |
| B x blocks_b | 16x16 | 8w = 128  | 1x1 2w / 1x1 2w → 1x7 2w → 7x1 2w; scale_b                    |
| reduction B  | 8x8   | 16w = 256 | maxpool3x3/2 / 1x1 2w → 3x3/2 4w / 1x1 2w → 3x3/2 2w /        |
|              |       |           | 1x1 2w → 3x3 2w → 3x3/2 2w                                    |
| C x blocks_c | 8x8   | 16w = 256 | 1x1 3w / 1x1 3w → 1x3 3w → 3x1 3w; scale_c                    |
| head         |       |           | GlobalAveragePooling → Dropout(dropout_rate) → Dense(softmax) |

Why these sizes: the paper's grids 35/17/8 become 32/16/8, so each block family sees the
resolution it was designed for. The stem keeps only the first convs of the paper's stem: its
strides and pools would leave 4x4 of a 32x32 image. The trunk doubles at each reduction
(paper: 256 → 896 → 1792) and the branches are a quarter of the trunk in A and B, 3/16 in C
(paper: about an eighth; 32, 128, 192 wide), so that a thin trunk still has branches of 16-48
filters. With the defaults (w = 16, 2/4/2 blocks; the paper has 5/10/5) that is 388,842
parameters and 0.21 GFLOPs per image: about the template's size (316,394; 0.11 GFLOPs), so it
trains on a CPU; A blocks run on the largest map, so they get the fewest. (5/10/5 blocks with
w = 32 give 3.2M parameters.) The residual scales 0.17 / 0.1 / 0.2 are those of Keras'
InceptionResNetV2 application; the paper scales residuals by 0.1 to 0.3 to keep wide networks
stable.

Every branch conv is Conv (no bias) → BN → ReLU, as in the Keras application; a block's
concatenated branches go through a linear 1x1 conv (with bias, no BN) back to the block's
channels, are scaled, added to the block input, then ReLU.
Padding is "same" everywhere, so a stride-2 layer halves the map exactly.
"""

import keras
from keras import layers

from ablation.models import register
from ablation.models.layers import BatchNormalization, classifier


def conv_bn(x, filters, kernel, strides=1):
    """Conv (no bias, same) → BN → ReLU."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    return layers.ReLU()(BatchNormalization()(x))


def _chain(x, filters, kernels, last_strides=1):
    """A branch: conv_bn layers in sequence; the last one strided."""
    for index, kernel in enumerate(kernels):
        x = conv_bn(x, filters[index], kernel, last_strides if index == len(kernels) - 1 else 1)
    return x


def inception_resnet_block(x, branches, scale):
    """Concatenate the branches, project linearly by 1x1 to the input's channels, add scale x that, ReLU."""
    mixed = layers.Concatenate()([_chain(x, filters, kernels) for filters, kernels in branches])
    up = layers.Conv2D(x.shape[-1], 1, padding="same")(mixed)
    up = layers.Rescaling(scale)(up)
    return layers.ReLU()(layers.Add()([x, up]))


def block_a(x, width, scale):
    return inception_resnet_block(
        x, [((width,), (1,)), ((width, width), (1, 3)), ((width, width, width), (1, 3, 3))], scale
    )


def block_b(x, width, scale):
    w2 = 2 * width
    return inception_resnet_block(x, [((w2,), (1,)), ((w2, w2, w2), (1, (1, 7), (7, 1)))], scale)


def block_c(x, width, scale):
    w3 = 3 * width
    return inception_resnet_block(x, [((w3,), (1,)), ((w3, w3, w3), (1, (1, 3), (3, 1)))], scale)


def reduction_a(x, width):
    """4w → 8w channels, map halved."""
    return layers.Concatenate()([
        layers.MaxPooling2D(3, strides=2, padding="same")(x),
        conv_bn(x, 2 * width, 3, strides=2),
        _chain(x, (width, width, 2 * width), (1, 3, 3), last_strides=2),
    ])


def reduction_b(x, width):
    """8w → 16w channels, map halved."""
    w2 = 2 * width
    return layers.Concatenate()([
        layers.MaxPooling2D(3, strides=2, padding="same")(x),
        _chain(x, (w2, 4 * width), (1, 3), last_strides=2),
        _chain(x, (w2, w2), (1, 3), last_strides=2),
        _chain(x, (w2, w2, w2), (1, 3, 3), last_strides=2),
    ])


@register
def inception_resnet(
    input_shape=(32, 32, 3),
    num_classes=10,
    *,
    blocks_a: int = 2,
    blocks_b: int = 4,
    blocks_c: int = 2,
    width: int = 16,
    scale_a: float = 0.17,
    scale_b: float = 0.1,
    scale_c: float = 0.2,
    dropout_rate: float = 0.2,
):
    """Stem; A blocks; reduction A; B blocks; reduction B; C blocks; GAP; softmax (see the module doc)."""
    inputs = keras.Input(input_shape)
    x = conv_bn(conv_bn(inputs, 2 * width, 3), 4 * width, 3)
    for _ in range(blocks_a):
        x = block_a(x, width, scale_a)
    x = reduction_a(x, width)
    for _ in range(blocks_b):
        x = block_b(x, width, scale_b)
    x = reduction_b(x, width)
    for _ in range(blocks_c):
        x = block_c(x, width, scale_c)
    x = layers.GlobalAveragePooling2D()(x)  # then Dropout: the paper keeps 0.8 of the units
    return keras.Model(inputs, classifier(x, num_classes, dropout_rate), name="inception_resnet")
