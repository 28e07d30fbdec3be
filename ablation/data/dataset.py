"""What every data layout shares: the Dataset it yields, the DataError it raises, safe pickles and tar members.

Loading never runs code from the data: pickles go through an unpickler that resolves only the three
numpy globals a genuine CIFAR batch references, and archive members are read in memory with
`extractfile`, never unpacked to disk (see docs/stack.md, "CIFAR-10 archives and pickles").
"""

import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct  # NumPy 2: `numpy.core` is only a deprecated alias
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct

# The only globals in a genuine CIFAR batch; the pickles name `numpy.core`, which NumPy 2 renamed.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# What a truncated or garbled pickle, gzip stream or tar raises on the way.
CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, OSError, zlib.error, tarfile.TarError, ValueError, TypeError,
                  AttributeError, IndexError, KeyError)


class DataError(Exception):
    """A problem with the data the user can fix; the message says what and how."""


@dataclass(frozen=True)
class Dataset:
    """Images (uint8, N x H x W x C, channels last) with int64 labels in 0..len(class_names) - 1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self):
        shape = self.x_train.shape[1:]
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != shape or min(x.shape[1:], default=0) < 1:
                raise DataError(f"{self.source}: x_{split} is {x.dtype} {x.shape}, expected uint8 (N, H, W, C) "
                                f"with the same H, W, C in both splits")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise DataError(f"{self.source}: y_{split} is {y.dtype} {y.shape}, expected int64 ({len(x)},)")
            if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise DataError(f"{self.source}: y_{split} has labels outside 0..{len(self.class_names) - 1}")


@dataclass(frozen=True)
class Splits:
    """Train/validation/test arrays for one run, with a fingerprint that identifies them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: dict


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals of a CIFAR batch and refuses all else."""

    def __init__(self, file, member: str, hint: str):
        super().__init__(file, encoding="bytes")  # Python 2 pickles: keys and image bytes stay bytes
        self.member, self.hint = member, hint

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} in {self.member}: a CIFAR batch references only "
                f"numpy arrays, so this file is not genuine CIFAR data (it could run code); {self.hint}"
            ) from None


def unpickle(file, member: str, hint: str):
    """Unpickle one batch file safely; a truncated or garbled one is a DataError naming it (`hint`: how to get it)."""
    try:
        return _NumpyOnlyUnpickler(file, member, hint).load()
    except DataError:
        raise
    except CORRUPT_ERRORS as error:
        raise DataError(f"{member} is corrupt or truncated ({type(error).__name__}: {error}); {hint}") from error


def is_unsafe(name: str) -> bool:
    """Whether a member name is absolute or climbs out of the extraction root."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def tar_members(tar: tarfile.TarFile, label: str, folder: str, names, hint: str) -> dict[str, tarfile.TarInfo]:
    """Check every member name, then the members `folder/<name>` for `names`, in archive order (name -> member)."""
    members = tar.getmembers()
    for member in members:  # all names first: refuse a hostile archive before reading any of it
        if is_unsafe(member.name):
            raise DataError(f"refusing archive member {member.name!r} in {label}: absolute or '..' paths are not "
                            f"allowed in a data archive; {hint}")
    wanted: dict[str, tarfile.TarInfo] = {}
    for member in members:
        parent, _, name = member.name.removeprefix("./").partition("/")
        if parent != folder or name not in names:
            continue
        if not member.isreg() or name in wanted:
            raise DataError(f"{label}: member {member.name!r} is a link, not a file, or appears twice; {hint}")
        wanted[name] = member
    # Archive order, because seeking back in a gzip stream decompresses it again from the start.
    return dict(sorted(wanted.items(), key=lambda item: item[1].offset_data))


def require(found, names, where: str, prefix: str, layouts: str):
    """Raise a DataError naming the required files of `names` that are not in `found`."""
    missing = [prefix + name for name in names if name not in found]
    if missing:
        raise DataError(f"{where} is incomplete: it lacks {', '.join(missing)}; {layouts}")


def label_array(values, member: str, count: int, hint: str) -> np.ndarray:
    """Labels as int64 of shape (count,), or a DataError naming the file."""
    try:
        labels = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DataError(f"{member} has unreadable labels ({error}); {hint}") from error
    if labels.shape != (count,):
        raise DataError(f"{member} has labels of shape {labels.shape}, expected ({count},); {hint}")
    return labels


def cache_root() -> Path:
    """$ABLATION_CACHE, else ~/.cache/ablation (or $XDG_CACHE_HOME/ablation): fingerprints and decoded archives."""
    root = os.environ.get("ABLATION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "ablation"
    return Path(root).expanduser()
