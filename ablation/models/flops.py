"""Forward-pass FLOPs per image of a Keras functional model.

Convention: 2 FLOPs per multiply-add (a multiply and an add), counted for the layers that hold
nearly all of them: convolutions (Conv1D/2D/3D, DepthwiseConv, SeparableConv) and Dense.
Biases, BN (folded into the preceding conv at inference), activations, adds, pooling and
concatenation are elementwise and left out: together under 1% for the registered networks.
Each layer is counted once, at its first call; the builders here share no layers.
"""

import math

import keras

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D)


def _spatial_size(shape, data_format):
    """Number of output positions: the shape without its batch and channel axes."""
    dims = shape[2:] if data_format == "channels_first" else shape[1:-1]
    return math.prod(dims)


def layer_flops(layer) -> int:
    """FLOPs of one forward call of `layer` on one image (0 for layers without weights to multiply)."""
    if isinstance(layer, keras.Model):
        return count_flops(layer)
    if isinstance(layer, keras.layers.SeparableConv2D):
        positions = _spatial_size(layer.output.shape, layer.data_format)
        weights = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
        return 2 * positions * weights
    if isinstance(layer, _CONVOLUTIONS):
        # Every output position does one multiply-add per kernel weight (groups and depth
        # multipliers are already folded into the kernel's shape).
        positions = _spatial_size(layer.output.shape, layer.data_format)
        return 2 * positions * math.prod(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        # Dense on an N-D input applies the kernel at every leading position.
        positions = math.prod(layer.input.shape[1:-1])
        return 2 * positions * math.prod(layer.kernel.shape)
    return 0


def count_flops(model) -> int:
    """Forward FLOPs per image (2 per multiply-add) of the convolutions and Dense layers of `model`."""
    return sum(layer_flops(layer) for layer in model.layers)
