"""Layers shared by the model builders."""

import keras

# Placeholder: replaced by a fused-kernel drop-in on the TensorFlow backend (performance issue).
BatchNormalization = keras.layers.BatchNormalization
