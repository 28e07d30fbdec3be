"""The statistics: paired tests over seeds, Holm, McNemar, Shapley (`stats`), applied to a ladder's runs (`evidence`),
and the verdicts' calibration by simulation (`simulation`). Plain numbers in and out: no store, no Keras.
"""
