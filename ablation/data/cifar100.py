"""CIFAR-100 (the 100 fine classes) from the official cifar-100-python.tar.gz or its extracted folder."""

import tarfile
import zlib
from pathlib import Path

import numpy as np

from ablation.data.dataset import DataError, Dataset, label_array, require, tar_members, unpickle

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
SPLITS = ("train", "test")
META = "meta"
CLASSES = 100
ROW_BYTES = 3 * 32 * 32  # the red, green and blue planes, each 32x32 row-major, as in CIFAR-10
URL = f"https://www.cs.toronto.edu/~kriz/{ARCHIVE}"
LAYOUTS = (f"accepted layouts for data = \"cifar100\": the official {ARCHIVE} (or a folder holding it); an "
           f"extracted {FOLDER}/ folder with the train, test and meta pickles (or its parent). Get it from {URL}")
HOW_TO_GET = f"download {URL} and pass --data PATH"


def load(path: Path) -> Dataset:
    """CIFAR-100 with its fine labels from an existing PATH (archive, extracted folder or its parent)."""
    if path.is_file():
        return _load_archive(path)
    for folder in (path, path / FOLDER):
        if (folder / "train").is_file() or (folder / "test").is_file():
            require({p.name for p in folder.iterdir()}, SPLITS, str(folder), "", LAYOUTS)
            return _assemble(_read_folder(folder), f"folder:{folder.name}")
    if (path / ARCHIVE).is_file():
        return _load_archive(path / ARCHIVE)
    raise DataError(f"{path} holds none of the CIFAR-100 layouts; {LAYOUTS}")


def _read_folder(folder: Path):
    for name in (META, *SPLITS):
        if (folder / name).is_file():
            with open(folder / name, "rb") as file:
                yield name, unpickle(file, str(folder / name), HOW_TO_GET), str(folder / name)


def _load_archive(path: Path) -> Dataset:
    """Read the pickles of a cifar-100-python.tar.gz in memory."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar_members(tar, path.name, FOLDER, (*SPLITS, META), HOW_TO_GET)
            require(members, SPLITS, path.name, f"{FOLDER}/", LAYOUTS)
            return _assemble(((name, unpickle(tar.extractfile(m), f"{path.name}:{m.name}", HOW_TO_GET),
                               f"{path.name}:{m.name}") for name, m in members.items()), path.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read {path} as a CIFAR-100 archive ({type(error).__name__}: {error}): it is "
                        f"corrupt, truncated or not a tar file; {LAYOUTS}") from error


def _assemble(pickles, source: str) -> Dataset:
    """A Dataset from (file name, unpickled object, member label) triples; class names from meta, if present."""
    arrays, class_names = {}, tuple(str(i) for i in range(CLASSES))
    for name, content, member in pickles:
        if name == META:
            class_names = _meta_names(content, member)
        else:
            arrays[name] = _check_split(content, member)
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    return Dataset(x_train, y_train, x_test, y_test, class_names, source)


def _check_split(content, member: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 32, 32, 3) and fine labels of the train or test pickle, or a DataError saying what is wrong."""
    if not isinstance(content, dict) or b"data" not in content or b"fine_labels" not in content:
        raise DataError(f"{member} is not a CIFAR-100 pickle (expected a dict with b'data' and b'fine_labels'); "
                        f"{HOW_TO_GET}")
    data = content[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{member} holds {found} data, expected uint8 (N, {ROW_BYTES}): corrupt or not CIFAR-100; "
                        f"{HOW_TO_GET}")
    labels = label_array(content[b"fine_labels"], member, len(data), HOW_TO_GET)
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _meta_names(meta, member: str) -> tuple[str, ...]:
    """The 100 fine class names in meta."""
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CLASSES or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{member} has no list of {CLASSES} b'fine_label_names'; {HOW_TO_GET}")
    return tuple(n.decode("ascii", "replace") if isinstance(n, bytes) else n for n in names)
