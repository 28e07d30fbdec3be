"""ablation: replay, search and report ablation studies of deep networks (Keras 3, MLflow, Optuna)."""

import os

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) hides the progress a user wants.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
