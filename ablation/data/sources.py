"""Which images a run reads: the config's `data` (a dataset, "images" or a loader's import path) at --data PATH."""

import importlib
import os
from pathlib import Path

import numpy as np

from ablation.core.config import DATASETS
from ablation.data import cifar10, cifar100, mnist
from ablation.data.dataset import DataError, Dataset
from ablation.data.images import TREE, load_image_folder, resize_dataset

TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST",
          "images": "an image-folder tree"}


def resolve_data_path(path: str | os.PathLike | None) -> Path | None:
    """--data PATH, else $ABLATION_DATA, else None (meaning Keras download)."""
    if path is not None and str(path).strip():
        return Path(path).expanduser()
    env = os.environ.get("ABLATION_DATA", "").strip()
    return Path(env).expanduser() if env else None


def check_data_path(path: str | os.PathLike | None) -> Path | None:
    """The data source a command will read (None: Keras' download), or a DataError when it names nothing."""
    resolved = resolve_data_path(path)
    if resolved is not None and not resolved.exists():
        given = "--data" if path is not None and str(path).strip() else "$ABLATION_DATA"
        raise DataError(f"data not found at {resolved} (from {given}); for CIFAR-10, {cifar10.LAYOUTS}")
    return resolved


def title(data: str) -> str:
    """How a message names the data: CIFAR-10, MNIST, ..., or the loader's import path."""
    return TITLES.get(data, data)


def load_data(path: str | os.PathLike | None = None, data: str = "cifar10", image_size: int | None = None) -> Dataset:
    """The dataset `data` from PATH ($ABLATION_DATA, or Keras' download without either), resized to `image_size`."""
    if data not in DATASETS:
        dataset = _call_loader(data)
    else:
        resolved = check_data_path(path)
        dataset = _download_with_keras(data) if resolved is None else _read(resolved, data, image_size)
    return resize_dataset(dataset, image_size) if image_size else dataset


def load_cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """Load CIFAR-10 from PATH (archive, extracted folder, image tree), $ABLATION_DATA, or a Keras download."""
    return load_data(path, "cifar10")


def _read(path: Path, data: str, image_size: int | None) -> Dataset:
    if data == "cifar10":
        return cifar10.load(path, image_size)
    if data == "cifar100":
        return cifar100.load(path)
    if data == "images":
        return load_image_folder(path, image_size)
    return mnist.load(path, data)


def _download_with_keras(data: str) -> Dataset:
    """keras.datasets.<data>.load_data(), or a DataError saying how to get the data offline."""
    if data == "images":
        raise DataError(f"data = \"images\" reads {TREE}: pass --data ROOT or set ABLATION_DATA=ROOT")
    try:
        import keras  # lazily: it starts a backend (seconds), needed only when no local data is given

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, data).load_data()
    except Exception as error:  # Keras reports a failed download as a bare Exception
        raise DataError(f"could not download {title(data)} with Keras ({type(error).__name__}: {error}); without "
                        "internet, pass --data PATH (docs/studies.md#data lists the layouts)") from error

    def channels_last(x):
        return x[..., None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.shape[1] == 3 else x

    names = {"cifar10": cifar10.CLASS_NAMES, **mnist.CLASS_NAMES}.get(data, tuple(str(i) for i in range(100)))
    return Dataset(channels_last(x_train), y_train.reshape(-1).astype(np.int64),
                   channels_last(x_test), y_test.reshape(-1).astype(np.int64), names, "keras-download")


def _call_loader(spec: str) -> Dataset:
    """The arrays a user's `package.module:function` returns, checked, as a Dataset."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except ImportError as error:
        raise DataError(f"data = {spec!r}: cannot import {module_name} ({error}); the module must be importable "
                        "(installed, or on PYTHONPATH)") from error
    except AttributeError:
        raise DataError(f"data = {spec!r}: module {module_name} has no {function_name}") from None
    try:
        returned = function()
    except Exception as error:  # the user's code: whatever it raises is said in one line
        raise DataError(f"data = {spec!r}: the loader raised {type(error).__name__}: {error}") from error
    if not isinstance(returned, (tuple, list)) or len(returned) not in (4, 5):
        raise DataError(f"data = {spec!r} returned {type(returned).__name__}; a loader returns (x_train, y_train, "
                        "x_test, y_test) or those and the class names")
    x_train, x_test = (_images(returned[i], spec, name) for i, name in ((0, "x_train"), (2, "x_test")))
    y_train, y_test = (_labels(returned[i], spec, name) for i, name in ((1, "y_train"), (3, "y_test")))
    count = max(int(y_train.max(initial=0)), int(y_test.max(initial=0))) + 1
    names = tuple(str(n) for n in returned[4]) if len(returned) == 5 else tuple(str(i) for i in range(count))
    return Dataset(x_train, y_train, x_test, y_test, names, spec)


def _images(value, spec: str, name: str) -> np.ndarray:
    x = np.asarray(value)
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"data = {spec!r}: {name} is {x.dtype} {x.shape}; a loader returns uint8 images (0..255) "
                        "as (N, H, W) or (N, H, W, C)")
    return x[..., None] if x.ndim == 3 else x


def _labels(value, spec: str, name: str) -> np.ndarray:
    y = np.asarray(value)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != 1):
        raise DataError(f"data = {spec!r}: {name} is {y.dtype} {y.shape}; a loader returns integer labels as (N,) "
                        "or (N, 1)")
    return y.reshape(-1).astype(np.int64)
