"""What the report found in the stores, as plain records: the study, the ladder, the search, the confusion matrix's
run, and how the runs frame names a project tag. No store is read here (`gather` and `predictions` read).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ablation.core.study import SearchSpace
from ablation.tracking import Tag


def col(tag: str) -> str:
    """The runs frame's column of a project tag: its name without the prefix (`Tag.STEP` -> `step`)."""
    return tag[len(Tag.PREFIX):] if tag.startswith(Tag.PREFIX) else tag


KIND, STEP, STEP_INDEX, PROFILE, WORK_KEY, BASELINE, COMPARE_TO = (
    col(t) for t in (Tag.KIND, Tag.STEP, Tag.STEP_INDEX, Tag.PROFILE, Tag.WORK_KEY, Tag.BASELINE, Tag.COMPARE_TO))
COUNT_METRICS = ("epochs_run", "num_params", "flops")  # whole numbers that MLflow stores as floats
# Tags holding numbers; other tags stay text (a hex digest such as '12e4...' must not become a float).
NUMERIC_TAGS = tuple(col(t) for t in (Tag.STEP_INDEX, Tag.REPORTED_TEST_ACCURACY, Tag.OPTUNA_TRIAL,
                                      Tag.PRUNED_AT_EPOCH))


@dataclass(frozen=True)
class StudyInfo:
    """What the report needs of a study: its name (the MLflow experiment), title and file."""

    name: str
    title: str
    source: str = ""
    path: Path | None = None
    search: SearchSpace | None = None


@dataclass
class Ladder:
    """The latest ladder: its parent run, its steps, their replicates over seeds and the curves drawn."""

    parent: pd.Series
    runs: pd.DataFrame  # the parent's finished step runs (every training seed), by step then seed
    steps: pd.DataFrame  # one row per step, in order: its run at `curve_seed`
    replicates: pd.DataFrame  # the runs the evidence counts, one per step and seed (see `replicates`)
    pairs: list[tuple[str, str]]  # (step, the step it is compared with)
    seeds: list[int]  # the parent's training seeds
    curve_seed: int | None  # the training seed whose epochs are drawn
    histories: dict[str, pd.DataFrame]  # run id -> per-epoch metrics, indexed by epoch (from 1), for `steps`
    correct: dict[str, np.ndarray] = field(default_factory=dict)  # run id -> right/wrong per test image
    unfinished: pd.DataFrame = field(default_factory=pd.DataFrame)  # its step runs that failed, were killed or run


@dataclass
class Search:
    """The trials of the latest search's Optuna study, one row per trial number."""

    name: str  # the Optuna study
    parent: pd.Series  # the latest search parent run
    trials: pd.DataFrame  # number, state, value, test_accuracy, epochs_run, epochs, run_id, run_name, params
    params: list[str]
    log_params: set[str]
    monitor: str
    direction: str
    space: SearchSpace | None = None  # the study file's search space, when the report was given the file
    importances: dict | None = None
    importance_note: str = ""


@dataclass
class Confusion:
    """The best run's test predictions and labels; a note instead when they cannot be had."""

    run: pd.Series | None = None
    labels: np.ndarray | None = None
    predictions: list | None = None
    class_names: list | None = None
    note: str = ""


@dataclass
class Gathered:
    """Everything the report shows, as read from the store."""

    study: StudyInfo
    experiment: str
    uri: str
    runs: pd.DataFrame  # every run of the experiment, tidy
    config_columns: list[str]
    ladder: Ladder | None
    search: Search | None
    confusion: Confusion = field(default_factory=Confusion)
    log_run_id: str | None = None  # the study's latest parent run


def isna(value) -> bool:
    """None, NaN or pandas' NA: a value a run does not have."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
