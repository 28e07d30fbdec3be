"""The images a run reads: CIFAR-10, CIFAR-100, (Fashion-)MNIST, image-folder trees or a user's loader; seeded splits.

`load_data(path, data, image_size)` reads a dataset (docs/studies.md#data), `make_splits` splits it,
and `LazySplits` does both on demand for the runner, keyed by `Config.split_args()`.
"""

from ablation.data.cifar10 import CLASS_NAMES
from ablation.data.dataset import DataError, Dataset, Splits
from ablation.data.sources import check_data_path, load_cifar10, load_data, resolve_data_path
from ablation.data.splits import LazySplits, make_splits

__all__ = ["CLASS_NAMES", "DataError", "Dataset", "LazySplits", "Splits", "check_data_path", "load_cifar10",
           "load_data", "make_splits", "resolve_data_path"]
