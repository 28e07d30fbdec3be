"""ablation: replay, search and report ablation studies of deep networks (Keras 3, MLflow, Optuna)."""

import os

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) hides the progress a user wants; its
# ERROR level too: a machine without a GPU logs "failed call to cuInit" as one. `--verbose` shows all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow takes all the memory of every visible GPU when it starts using one, so a second process
# (another queue worker, a search worker) could not train beside it; with growth on it takes what it
# uses. Read when TensorFlow sets up a GPU, so it must be set before that; a user's own value stays.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

__version__ = "0.1.0"

# The Python API (ablation/api.py), imported on first use: `import ablation` and the commands' --help stay light.
API = ("load_study", "run_ladder", "run_search", "run_attribution", "results", "Results")


def __getattr__(name):
    if name in API:
        from ablation import api

        return getattr(api, name)
    raise AttributeError(f"module 'ablation' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
