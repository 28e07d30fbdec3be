"""MNIST and Fashion-MNIST as keras.datasets ships them: the four idx gz files, or (MNIST) mnist.npz.

An idx file is a header (two zero bytes, the type byte 0x08 for unsigned bytes, the number of
dimensions, then each dimension as a big-endian int32) followed by the values; the images are
N x 28 x 28 grey, read as N x 28 x 28 x 1.
"""

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ablation.data.dataset import DataError, Dataset

FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
         "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
NPZ = "mnist.npz"
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}


def layouts(name: str) -> str:
    npz = f" or Keras' {NPZ} (the file or its folder)" if name == "mnist" else ""
    return f"accepted layouts for data = \"{name}\": a folder holding {', '.join(FILES.values())}{npz}"


def load(path: Path, name: str) -> Dataset:
    """MNIST or Fashion-MNIST (`name`) from an existing PATH: the folder of idx gz files, or mnist.npz."""
    npz = path if path.is_file() else path / NPZ
    if name == "mnist" and npz.is_file() and npz.suffix == ".npz":
        return _load_npz(npz)
    if path.is_file():
        raise DataError(f"{path} is a file; {layouts(name)}")
    missing = [file for file in FILES.values() if not (path / file).is_file()]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; {layouts(name)}")
    arrays = {key: _read_idx(path / file, 3 if key.startswith("x") else 1) for key, file in FILES.items()}
    return _dataset(arrays, name, f"folder:{path.name}", path)


def _read_idx(path: Path, dimensions: int) -> np.ndarray:
    """The unsigned bytes of one gzipped idx file with `dimensions` dimensions, or a DataError saying what is wrong."""
    try:
        with gzip.open(path, "rb") as file:
            content = file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path} ({type(error).__name__}: {error}): not a complete gzip file") from error
    header = 4 + 4 * dimensions
    if len(content) < header or content[:4] != bytes((0, 0, 0x08, dimensions)):
        raise DataError(f"{path} is not an idx file of {dimensions}-dimensional unsigned bytes (its header is "
                        f"{content[:4].hex() or 'empty'}, expected 000008{dimensions:02x})")
    shape = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions))
    if len(content) - header != int(np.prod(shape)):
        raise DataError(f"{path} holds {len(content) - header} values after its header, {shape} needs "
                        f"{int(np.prod(shape))}: truncated or corrupt")
    return np.frombuffer(content, np.uint8, offset=header).reshape(shape)


def _load_npz(path: Path) -> Dataset:
    """Keras' mnist.npz: x_train, y_train, x_test, y_test (read without pickles)."""
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {key: content[key] for key in FILES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read {path} as Keras' {NPZ} ({type(error).__name__}: {error}); it needs the arrays "
                        f"{', '.join(FILES)}") from error
    return _dataset(arrays, "mnist", path.name, path)


def _dataset(arrays: dict, name: str, source: str, path: Path) -> Dataset:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{path}: x_{split} is {x.dtype} {x.shape} and y_{split} {y.dtype} {y.shape}; expected "
                            f"uint8 (N, H, W) images and N labels")
    return Dataset(arrays["x_train"][..., None], arrays["y_train"].astype(np.int64), arrays["x_test"][..., None],
                   arrays["y_test"].astype(np.int64), CLASS_NAMES[name], source)
