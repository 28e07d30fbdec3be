"""The runs' test predictions the report needs: right or wrong per image for the one-seed McNemar test, and the
best run's predictions and labels for the confusion matrix. Each run's file is downloaded at most once.
"""

import numpy as np
import pandas as pd

from ablation import tracking
from ablation.data import DataError, load_data, make_splits, resolve_data_path
from ablation.report.found import STEP, Confusion, Ladder, Search, isna
from ablation.tracking import Tag


class Predictions:
    """The test_predictions.json of runs, each downloaded at most once."""

    def __init__(self):
        self.payloads = {}

    def __call__(self, run_id: str) -> dict | None:
        if run_id not in self.payloads:
            self.payloads[run_id] = tracking.load_json_artifact(run_id, "test_predictions.json")
        return self.payloads[run_id]


def read_correct(ladder: Ladder, predictions: Predictions) -> dict[str, np.ndarray]:
    """Right or wrong per test image, for the runs of the changes whose steps share exactly one seed.

    Only runs that logged their labels, and only those scored on the same test images as the first
    such run: McNemar's test pairs the two runs image by image.
    """
    run_of = {(r[STEP], int(r["seed"])): r["run_id"] for _, r in ladder.replicates.iterrows()}
    seeds_of = {}
    for step, seed in run_of:
        seeds_of.setdefault(step, set()).add(seed)
    needed = []
    for step, against in ladder.pairs:
        common = seeds_of.get(step, set()) & seeds_of.get(against, set())
        if len(common) == 1:
            needed += [run_of[(step, *common)], run_of[(against, *common)]]
    out, reference = {}, None
    for run_id in dict.fromkeys(needed):
        payload = predictions(run_id) or {}
        if "labels" not in payload or len(payload["labels"]) != len(payload.get("predictions", ())):
            continue
        labels = np.asarray(payload["labels"])
        reference = labels if reference is None else reference
        if np.array_equal(labels, reference):
            out[run_id] = np.asarray(payload["predictions"]) == labels
    return out


def confusion_candidates(runs: pd.DataFrame, ladder: Ladder | None, search: Search | None) -> pd.DataFrame:
    """The report's runs that may be shown as the best: the latest ladder's runs and the complete trials."""
    ids = list(ladder.runs["run_id"]) if ladder is not None else []
    if search is not None:
        ids += list(search.trials[search.trials["state"].eq("complete")]["run_id"])
    return runs[runs["run_id"].isin(ids)]


def read_confusion(candidates: pd.DataFrame, data, predictions: Predictions, tries: int = 3) -> Confusion:
    """The best run by best validation accuracy (the test set never chooses) that logged its predictions."""
    column = "best_val_accuracy" if "best_val_accuracy" in candidates.columns else "test_accuracy"
    ranked = candidates.sort_values(column, ascending=False, na_position="last")
    for _, run in ranked.head(tries).iterrows():
        payload = predictions(run["run_id"])
        if payload is not None:
            break
    else:
        return Confusion(note="none of the best runs of this report (by best validation accuracy) logged "
                              "test_predictions.json; nothing to draw")
    labels, note = test_labels(run, payload, data)
    if labels is not None and len(labels) != len(payload["predictions"]):
        labels, note = None, (f"no confusion matrix: {len(labels)} test labels for {len(payload['predictions'])} "
                              f"predictions of run {run['run_name']}")
    if labels is None:
        return Confusion(note=note)
    return Confusion(run, labels, payload["predictions"], payload["class_names"])


def test_labels(run: pd.Series, payload: dict, data) -> tuple[np.ndarray | None, str]:
    """The run's true test labels: logged beside its predictions, else re-drawn from the data it recorded."""
    if "labels" in payload:
        return np.asarray(payload["labels"]), ""
    path = resolve_data_path(data)
    if path is None:
        return None, ("the run did not log its test labels and no data was given: pass --data PATH "
                      "(or set ABLATION_DATA) to draw the confusion matrix")
    whole = lambda value: None if isna(value) else int(value)  # noqa: E731
    try:
        data, size = run.get("data"), run.get("image_size")  # params of runs that predate them: absent
        data = data if isinstance(data, str) else "cifar10"
        size = None if isna(size) or isinstance(size, str) else int(size)
        splits = make_splits(load_data(path, data, size), data=data, image_size=size,
                             validation_split=float(run["validation_split"]), seed=int(run["split_seed"]),
                             train_subset=whole(run["train_subset"]), test_subset=whole(run["test_subset"]))
    except DataError as error:
        return None, f"no confusion matrix: {error}"
    recorded = run.get(Tag.DATA_PREFIX + "digest")
    if splits.fingerprint["digest"] != recorded:
        return None, (f"no confusion matrix: the data at {path} is not the data run {run['run_name']} used "
                      f"(digest {splits.fingerprint['digest']}, the run recorded {recorded})")
    return splits.y_test, ""
