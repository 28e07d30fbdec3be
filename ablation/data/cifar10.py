"""CIFAR-10 from the official archive, its extracted folder, or an image-folder tree (read by `images`)."""

import hashlib
import json
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ablation.data.dataset import DataError, Dataset, cache_root, require, tar_members, unpickle
from ablation.data.images import load_image_folder

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
ROWS_PER_BATCH = 10000
ROW_BYTES = 3 * 32 * 32  # one image: the red, green and blue planes, each 32x32 row-major
LAYOUTS = (
    "accepted layouts: the official cifar-10-python.tar.gz (or a folder holding it); an extracted "
    f"{BATCH_DIR}/ folder (or its parent); an image-folder tree ROOT/train/<class>/*.png and "
    f"ROOT/test/<class>/*.png (.jpg too). Get the archive from {ARCHIVE_URL}"
)
HOW_TO_GET = f"download {ARCHIVE_URL} and pass --data PATH or set ABLATION_DATA=PATH"


def load(path: Path, image_size: int | None = None) -> Dataset:
    """CIFAR-10 from an existing PATH: the archive, an extracted folder (or its parent), or an image-folder tree."""
    return _load_archive(path) if path.is_file() else _load_folder(path, image_size)


def _check_batch(batch, member: str) -> tuple[np.ndarray, np.ndarray]:
    """The (10000, 3072) uint8 rows and int64 labels of one batch, or a DataError saying what is wrong."""
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{member} is not a CIFAR-10 batch (expected a dict with b'data' and b'labels'); {HOW_TO_GET}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (ROWS_PER_BATCH, ROW_BYTES):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{member} holds {found} data, expected uint8 {(ROWS_PER_BATCH, ROW_BYTES)}: corrupt or "
                        f"not CIFAR-10; {HOW_TO_GET}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DataError(f"{member} has unreadable labels ({error}); {HOW_TO_GET}") from error
    if labels.shape != (ROWS_PER_BATCH,):
        raise DataError(f"{member} has labels of shape {labels.shape}, expected ({ROWS_PER_BATCH},); {HOW_TO_GET}")
    return data, labels


def _meta_names(meta, member: str) -> tuple[str, ...]:
    """The class names in batches.meta."""
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES) or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{member} has no list of {len(CLASS_NAMES)} b'label_names'; {HOW_TO_GET}")
    return tuple(n.decode("ascii", "replace") for n in names)


def _assemble(batches, source: str) -> Dataset:
    """Build a Dataset from (file name, unpickled object, member label) triples, in any order."""
    # Preallocate and convert each batch once into place: no concatenate, one copy per image.
    x_train = np.empty((len(TRAIN_BATCHES) * ROWS_PER_BATCH, 32, 32, 3), np.uint8)
    y_train = np.empty(len(x_train), np.int64)
    x_test = np.empty((ROWS_PER_BATCH, 32, 32, 3), np.uint8)
    y_test = np.empty(ROWS_PER_BATCH, np.int64)
    class_names = CLASS_NAMES
    for name, batch, member in batches:
        if name == META:
            class_names = _meta_names(batch, member)
            continue
        data, labels = _check_batch(batch, member)
        slot = 0 if name == TEST_BATCH else TRAIN_BATCHES.index(name)
        x, y = (x_test, y_test) if name == TEST_BATCH else (x_train, y_train)
        rows = slice(slot * ROWS_PER_BATCH, (slot + 1) * ROWS_PER_BATCH)
        x[rows] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> channels last
        y[rows] = labels
    return Dataset(x_train, y_train, x_test, y_test, class_names, source)


def _load_archive(path: Path) -> Dataset:
    """Read the batches of a cifar-10-python.tar.gz in memory, or their decoded copy in the cache."""
    decoded = _read_decoded(path)
    if decoded is not None:
        return decoded
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar_members(tar, path.name, BATCH_DIR, (*TRAIN_BATCHES, TEST_BATCH, META), HOW_TO_GET)
            require(members, (*TRAIN_BATCHES, TEST_BATCH), path.name, f"{BATCH_DIR}/", LAYOUTS)
            batches = ((name, unpickle(tar.extractfile(m), f"{path.name}:{m.name}", HOW_TO_GET),
                        f"{path.name}:{m.name}") for name, m in members.items())
            dataset = _assemble(batches, path.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read {path} as a CIFAR-10 archive ({type(error).__name__}: {error}): it is corrupt, "
                        f"truncated or not a tar file; {LAYOUTS}") from error
    _write_decoded(path, dataset)
    return dataset


def _decoded_file(path: Path) -> Path:
    """The cache file of an archive's decoded arrays: named by its path, size and modification time."""
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return cache_root() / f"cifar10-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _read_decoded(path: Path) -> Dataset | None:
    """The archive's arrays as decoded last time (well under a CPU-second instead of about 4), or None: decode it."""
    try:
        with np.load(_decoded_file(path)) as arrays:
            return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                           tuple(str(name) for name in arrays["class_names"]), path.name)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError):
        return None  # none yet, or damaged: decode the archive again


def _write_decoded(path: Path, dataset: Dataset) -> None:
    """Keep the decoded arrays (184 MB, uncompressed) for the next process; a failed write only costs a decode."""
    target = _decoded_file(path)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            np.savez(file, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
                     y_test=dataset.y_test, class_names=np.array(dataset.class_names))
        os.replace(partial, target)  # whole or absent: a concurrent reader never sees half a file
        for older in target.parent.glob("cifar10-*.npz"):  # one archive's copy at a time, not one per path
            if older != target:
                older.unlink(missing_ok=True)
    except OSError:
        partial.unlink(missing_ok=True)


def _load_batch_folder(folder: Path) -> Dataset:
    """Read the batches of an extracted cifar-10-batches-py/ folder."""
    require({p.name for p in folder.iterdir() if p.is_file()}, (*TRAIN_BATCHES, TEST_BATCH), str(folder), "", LAYOUTS)

    def batches():
        for name in (META, *TRAIN_BATCHES, TEST_BATCH):
            if (folder / name).is_file():
                with open(folder / name, "rb") as file:
                    yield name, unpickle(file, str(folder / name), HOW_TO_GET), str(folder / name)

    return _assemble(batches(), f"folder:{folder.name}")


def _load_folder(root: Path, image_size: int | None) -> Dataset:
    """Dispatch a folder to the layout it holds."""
    if (root / "data_batch_1").is_file() or (root / TEST_BATCH).is_file():
        return _load_batch_folder(root)
    if (root / BATCH_DIR).is_dir():
        return _load_batch_folder(root / BATCH_DIR)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return load_image_folder(root, image_size)
    if (root / "cifar-10-python.tar.gz").is_file():
        return _load_archive(root / "cifar-10-python.tar.gz")
    raise DataError(f"{root} holds none of the CIFAR-10 layouts; {LAYOUTS}")
