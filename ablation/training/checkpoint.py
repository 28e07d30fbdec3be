"""A training run's state on disk after each epoch, so that a killed run goes on from its last finished epoch.

Layout of a checkpoint folder (one per unit of work, see `tracking.checkpoint_folder`):

    latest                       the name of the newest complete save (replaced atomically)
    epoch-00003-<pid>/           one save: written completely before `latest` names it
        model.weights.h5         the weights with the optimizer's state (Keras' weights file)
        best_weights.npz         early stopping's best weights, when it keeps any
        state.json               epoch, history, callbacks' counters, random states, time so far

A kill at any moment (SIGKILL included) leaves `latest` naming a complete save; a save is never
written in place. The process id in a save's name keeps two processes that train the same unit
from writing into one folder. No Keras here: training passes in what saves and loads its weights.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

LATEST, WEIGHTS, BEST, STATE = "latest", "model.weights.h5", "best_weights.npz", "state.json"


@dataclass(frozen=True)
class Saved:
    """One complete save: the epochs it holds (from 1) and what training needs to go on."""

    folder: Path
    epoch: int
    history: dict  # metric -> one value per finished epoch
    state: dict  # everything else written by `write`

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS

    def best_weights(self) -> list | None:
        """Early stopping's best weights, or None when it kept none."""
        path = self.folder / BEST
        if not path.is_file():
            return None
        with np.load(path) as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def read(root: Path) -> Saved | None:
    """The newest complete save under `root`, or None (none yet, or unreadable: training starts over)."""
    try:
        folder = root / (root / LATEST).read_text().strip()
        state = json.loads((folder / STATE).read_text())
        epoch, history = int(state["epoch"]), dict(state["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (folder / WEIGHTS).is_file():
        return None
    return Saved(folder, epoch, history, state)


def write(root: Path, epoch: int, history: dict, state: dict, save_weights: Callable[[Path], None],
          best_weights: list | None) -> Saved:
    """Save epoch `epoch`: a new folder made complete, then `latest` pointed at it, then this process's older saves removed."""
    folder = root / f"epoch-{epoch:05d}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # a half-written save of this epoch by a process of the same id
    folder.mkdir(parents=True)
    save_weights(folder / WEIGHTS)
    if best_weights is not None:
        np.savez(folder / BEST, *best_weights)
    (folder / STATE).write_text(json.dumps({**state, "epoch": epoch, "history": history}))
    pointer = root / f"{LATEST}.{os.getpid()}"
    pointer.write_text(folder.name)
    os.replace(pointer, root / LATEST)  # atomic: `latest` names the old save or the new one, never half of one
    for older in root.glob(f"epoch-*-{os.getpid()}"):
        if older != folder:
            shutil.rmtree(older, ignore_errors=True)
    return Saved(folder, epoch, history, state)


def remove(root: Path):
    """Delete a unit's checkpoints (its work finished); a folder already gone is fine."""
    shutil.rmtree(root, ignore_errors=True)
