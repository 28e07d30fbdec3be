"""Layers shared by the model builders."""

import keras
from keras import ops

if keras.backend.backend() == "tensorflow":
    # The only TensorFlow import in `ablation`: Keras 3 has no op for the fused kernel (nor a switch
    # for op determinism). Guarded so that other backends run without TensorFlow installed.
    import tensorflow as tf

# cuDNN's floor on epsilon (CUDNN_BN_MIN_EPSILON); Keras 2 also left the fused kernel below it.
_MIN_FUSED_EPSILON = 1.001e-5
# The input types FusedBatchNormV3 has kernels for (CPU, GPU and XLA), each with float32 statistics.
_FUSED_DTYPES = ("float32", "float16", "bfloat16")


@keras.saving.register_keras_serializable(package="ablation")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs TensorFlow's fused kernel where it can.

    Why: on the TensorFlow backend Keras 3 normalizes with unfused `tf.nn.batch_normalization`;
    on a 2-core CPU the template ResNet then costs ~17-18 CPU-ms per training image against ~10
    with the fused kernel that Keras 2 used (docs/stack.md#batchnormalization-on-tensorflow).

    Same weights, config and numbers as the Keras layer (moving statistics included); any
    input or setting the fused kernel does not cover (another backend, not a 4D channels-last
    input, a mask, renorm, synchronized, a tiny epsilon) runs the Keras layer's own code.

    Mixed precision: the kernel takes float16 and bfloat16 inputs itself and keeps its statistics,
    scale and offset in float32, which is what Keras' layer does by casting the inputs to float32
    and the outputs back (docs/stack.md#mixed-precision).
    """

    def uses_fused_kernel(self, inputs, mask=None) -> bool:
        """Whether `call` on these inputs runs the fused kernel."""
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and not self.renorm
            and not self.synchronized
            and self.epsilon >= _MIN_FUSED_EPSILON
            and keras.backend.standardize_dtype(inputs.dtype) == self.compute_dtype
            and self.compute_dtype in _FUSED_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self.uses_fused_kernel(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        # As in Keras: a frozen layer (trainable=False) always normalizes with its moving statistics.
        return self._fused_call(inputs, training=bool(training and self.trainable))

    def _fused_call(self, inputs, training):
        """Normalize with `FusedBatchNormV3`, updating the moving statistics as Keras does.

        The outputs have the inputs' type; the statistics (and so the moving ones) are float32.
        """
        channels = inputs.shape[-1]
        # Reading the variables through `ops.cast`, as Keras does, honours a StatelessScope.
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros((channels,), "float32")
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")

        if not training:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=moving_mean, variance=moving_variance,
                epsilon=self.epsilon, data_format="NHWC", is_training=False,
            )
            return outputs

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        # The kernel returns the Bessel-corrected batch variance; Keras' moving variance averages
        # the biased one (the one both paths normalize with), so undo the n / (n - 1).
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return outputs


def classifier(features, num_classes: int, dropout_rate: float = 0.0):
    """The builders' head on pooled, flat features: Dropout (none at rate 0), then a softmax Dense layer."""
    if dropout_rate:
        features = keras.layers.Dropout(dropout_rate)(features)
    return keras.layers.Dense(num_classes, activation="softmax")(features)


def enable_op_determinism():
    """Bit-identical repeats of a seed on TensorFlow (slower kernels); other backends: nothing to do."""
    if keras.backend.backend() == "tensorflow":
        tf.config.experimental.enable_op_determinism()


def portable(network: keras.Model) -> keras.Model:
    """The network with Keras' own BatchNormalization in place of this module's: same weights, same numbers.

    What is saved for others (an MLflow model) must load where only Keras is installed; the fused
    layer is a class of this package, which a plain `keras.models.load_model` cannot find.
    """

    def plain(layer):
        if isinstance(layer, keras.Model):
            return portable(layer)  # a nested network, weights included
        if isinstance(layer, BatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=plain)
    copy.set_weights(network.get_weights())
    return copy


def training_forward(network: keras.Model):
    """`images -> outputs` of the network in training mode, as one compiled graph where the backend has one.

    On TensorFlow an eager forward pass of a few hundred images keeps several GB of host memory (a
    template ResNet: 7 GB for 500 images, 1.5 GB as a graph); the graph is built once per network, at
    its first call, and reads the layers' Python settings (BatchNormalization's momentum, dropout's
    rate) as they are then. Other backends run it as it is.
    """
    if keras.backend.backend() != "tensorflow":
        return lambda images: network(images, training=True)
    if getattr(network, "_ablation_training_forward", None) is None:
        network._ablation_training_forward = tf.function(lambda images: network(images, training=True))
    return network._ablation_training_forward
