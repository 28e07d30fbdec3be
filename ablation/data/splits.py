"""Seeded, stratified train/validation/test splits of a Dataset, and their fingerprint (what identifies them)."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ablation.core.config import DATASETS
from ablation.data.dataset import DataError, Dataset, Splits, cache_root
from ablation.data.sources import check_data_path, load_data, resolve_data_path, title

DATA_DEFAULTS = {"data": "cifar10", "image_size": None}  # the split arguments that choose the dataset


def make_splits(dataset: Dataset, *, data: str = "cifar10", image_size: int | None = None,
                validation_split: float = 0.2, seed: int = 0, train_subset: int | None = None,
                test_subset: int | None = None) -> Splits:
    """Seeded, class-stratified train/validation split (and optional subsets); deterministic per seed.

    `data` and `image_size` say what `dataset` was loaded as (`load_data`): the fingerprint records them.
    """
    if image_size and dataset.x_train.shape[1:3] != (image_size, image_size):
        raise DataError(f"image_size={image_size} but the images are {dataset.x_train.shape[2]}x"
                        f"{dataset.x_train.shape[1]}: load them with load_data(path, data, image_size)")
    if not 0 <= validation_split < 1:
        raise DataError(f"validation_split={validation_split} must be in [0, 1)")
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    # Every prefix of a stratified order is class-balanced, so the subset is, and (like Keras'
    # validation_split after shuffling) the last fraction of it is a balanced validation set.
    order = _stratified_order(dataset.y_train, train_rng)[: _subset_size(train_subset, len(dataset.y_train), "train")]
    n_val = int(round(len(order) * validation_split))
    if n_val == len(order):
        raise DataError(f"validation_split={validation_split} leaves no training images out of {len(order)}")
    train = train_rng.permutation(order[: len(order) - n_val])  # shuffle away the interleaved class pattern
    val = train_rng.permutation(order[len(order) - n_val:])
    x_test, y_test = dataset.x_test, dataset.y_test
    if test_subset is not None:
        test = np.sort(_stratified_order(y_test, test_rng)[: _subset_size(test_subset, len(y_test), "test")])
        x_test, y_test = x_test[test], y_test[test]
    x_train, y_train = dataset.x_train[train], dataset.y_train[train]
    arrays = (x_train, y_train, dataset.x_train[val], dataset.y_train[val], x_test, y_test)
    fingerprint = {  # plain ints and floats, so that it logs as MLflow params and dumps as JSON
        "dataset": data, "image_size": image_size,  # which data, as the config named it (tags data.dataset, ...)
        "source": dataset.source, "train_size": len(train), "val_size": len(val), "test_size": len(y_test),
        "subset_train": None if train_subset is None else int(train_subset),
        "subset_test": None if test_subset is None else int(test_subset),
        "seed": int(seed), "validation_split": float(validation_split), "digest": _digest(arrays),
        "image_shape": list(x_train.shape[1:]), "classes": len(dataset.class_names),
    }
    return Splits(*arrays, class_names=dataset.class_names, fingerprint=fingerprint)


class LazySplits:
    """Splits of one data source, made on demand and kept per split arguments (`Config.split_args`).

    `fingerprint()` answers from a small on-disk cache when the source is an archive file whose
    path, size and modification time are unchanged since the fingerprint was computed; the data
    is read only when a run needs the arrays. So re-running a finished study skips reading it.
    The cache is `$ABLATION_CACHE/fingerprints.json` (default `~/.cache/ablation/`); the archive's decoded
    arrays are kept beside it (`cifar10-<key>.npz`), so the next process reads them instead of the archive.
    The split arguments `data` and `image_size` choose the dataset (`load_data`); the rest go to `make_splits`.
    """

    def __init__(self, path: str | os.PathLike | None = None, out=print):
        check_data_path(path)  # a wrong path fails now, before any run starts
        self.path, self.out = path, out
        self._datasets: dict[tuple, Dataset] = {}
        self._splits: dict[tuple, Splits] = {}

    def fingerprint(self, **split_args) -> dict:
        split_args = {**DATA_DEFAULTS, **split_args}
        made = self._splits.get(tuple(sorted(split_args.items())))
        if made is not None:
            return made.fingerprint
        key = self._cache_key(split_args)
        cached = _read_cache().get(key) if key else None
        return cached if cached is not None else self.splits(**split_args).fingerprint

    def splits(self, **split_args) -> Splits:
        split_args = {**DATA_DEFAULTS, **split_args}
        arguments = tuple(sorted(split_args.items()))
        if arguments not in self._splits:
            data, image_size = split_args["data"], split_args["image_size"]
            if (data, image_size) not in self._datasets:
                self.out(f"loading {title(data)} ...")
                self._datasets[data, image_size] = load_data(self.path, data, image_size)
            self._splits[arguments] = make_splits(self._datasets[data, image_size], **split_args)
            key = self._cache_key(dict(arguments))
            if key:
                _write_cache(key, self._splits[arguments].fingerprint)
        return self._splits[arguments]

    def _cache_key(self, split_args: dict) -> str | None:
        path = resolve_data_path(self.path)
        if split_args["data"] not in DATASETS or path is None or not path.is_file():
            return None  # a loader's arrays, or a folder (its contents change, its mtime need not): never cached
        stat = path.stat()
        return json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, sorted(split_args.items())])


def _cache_file() -> Path:
    return cache_root() / "fingerprints.json"


def _read_cache() -> dict:
    try:
        cache = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: recompute
    return cache if isinstance(cache, dict) else {}


def _write_cache(key: str, fingerprint: dict) -> None:
    """Add one entry; a write that fails (read-only home, a race) costs only a recomputation later."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps({**_read_cache(), key: fingerprint}, indent=1))
        os.replace(partial, path)
    except OSError:
        pass


def _subset_size(subset: int | None, available: int, split: str) -> int:
    """The number of images to keep; a subset outside 1..available is a DataError."""
    if subset is None:
        return available
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or not 1 <= subset <= available:
        raise DataError(f"{split}_subset={subset!r} must be a whole number in 1..{available} (the {split} images)")
    return int(subset)


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of indices in which every prefix holds each class in proportion (within one)."""
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        # The k-th of a class's n members (in random rank) gets a key in [k/n, (k+1)/n).
        keys[members] = (rng.permutation(len(members)) + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def _digest(arrays: tuple[np.ndarray, ...], images_per_split: int = 64) -> str:
    """Short sha256 over the labels and a sample of images of the splits."""
    digest = hashlib.sha256()
    for x, y in zip(arrays[::2], arrays[1::2]):
        digest.update(repr(x.shape).encode())
        digest.update(y.astype("<i8").tobytes())
        # A spread sample of images: hashing every pixel (180 MB) would cost ~0.3 s per run.
        sample = np.unique(np.linspace(0, len(x) - 1, num=min(len(x), images_per_split)).astype(np.int64))
        digest.update(np.ascontiguousarray(x[sample]).tobytes())
    return digest.hexdigest()[:16]
