"""ablation: replay, search and report ablation studies of deep networks (Keras 3, MLflow, Optuna)."""

__version__ = "0.1.0"
