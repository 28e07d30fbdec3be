"""One training run: a config and data in, a result out (`fit`), with its augmentation, BatchNorm check and saves.

Keras lives here and in `ablation.models`; nothing here knows about MLflow or Optuna.
"""
