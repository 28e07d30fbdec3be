"""The bottom layer every other one stands on: configs and their rules, study files, stop requests, memory, console.

No TensorFlow, MLflow or Optuna here: the commands read and check a study with these alone.
"""
