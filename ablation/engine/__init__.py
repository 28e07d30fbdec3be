"""How work is run: units reused or trained in a run (`units`), the Optuna search (`trials`), the attribution
designs (`designs`), the shared queue (`queue`) and every use of Optuna's private API (`optuna_internals`).

Callers import the modules (`from ablation.engine import units`); this package imports nothing itself.
"""
