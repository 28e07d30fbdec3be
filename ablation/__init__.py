"""ablation: replay, search and report ablation studies of deep networks (Keras 3, MLflow, Optuna)."""

import os

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) hides the progress a user wants; its
# ERROR level too: a machine without a GPU logs "failed call to cuInit" as one. `--verbose` shows all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
