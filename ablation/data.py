"""CIFAR-10 from a local archive, an extracted folder, an image-folder tree or a Keras download; seeded splits.

Loading never runs code from the data: the batch pickles go through an unpickler that resolves only
the three numpy globals a genuine CIFAR-10 batch references, and archive members are read in memory
with `extractfile`, never unpacked to disk (see docs/stack.md, "CIFAR-10 archives and pickles").
"""

import hashlib
import json
import os
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct  # NumPy 2: `numpy.core` is only a deprecated alias
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
ROWS_PER_BATCH = 10000
ROW_BYTES = 3 * 32 * 32  # one image: the red, green and blue planes, each 32x32 row-major
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = (
    "accepted layouts: the official cifar-10-python.tar.gz (or a folder holding it); an extracted "
    f"{BATCH_DIR}/ folder (or its parent); an image-folder tree ROOT/train/<class>/*.png and "
    f"ROOT/test/<class>/*.png (.jpg too). Get the archive from {ARCHIVE_URL}"
)
HOW_TO_GET = f"download {ARCHIVE_URL} and pass --data PATH or set ABLATION_DATA=PATH"

# The only globals in a genuine CIFAR-10 batch; the pickles name `numpy.core`, which NumPy 2 renamed.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# What a truncated or garbled pickle, gzip stream or tar raises on the way.
_CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, OSError, zlib.error, tarfile.TarError, ValueError, TypeError,
                   AttributeError, IndexError, KeyError)


class DataError(Exception):
    """A problem with the data the user can fix; the message says what and how."""


@dataclass(frozen=True)
class Dataset:
    """CIFAR-10-like images (uint8, N x H x W x 3, channels last) with int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self):
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise DataError(f"{self.source}: x_{split} is {x.dtype} {x.shape}, expected uint8 (N, H, W, 3)")
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


def resolve_data_path(path: str | os.PathLike | None) -> Path | None:
    """--data PATH, else $ABLATION_DATA, else None (meaning Keras download)."""
    if path is not None and str(path).strip():
        return Path(path).expanduser()
    env = os.environ.get("ABLATION_DATA", "").strip()
    return Path(env).expanduser() if env else None


def load_cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """Load CIFAR-10 from PATH (archive, extracted folder, image tree), $ABLATION_DATA, or a Keras download."""
    resolved = _existing_data_path(path)
    if resolved is None:
        return _download_with_keras()
    if resolved.is_file():
        return _load_archive(resolved)
    return _load_folder(resolved)


def check_data_path(path: str | os.PathLike | None) -> Path | None:
    """The data source a command will read (None: Keras' download), or a DataError when it names nothing."""
    return _existing_data_path(path)


def _existing_data_path(path) -> Path | None:
    """resolve_data_path's answer, or a DataError when it names nothing."""
    resolved = resolve_data_path(path)
    if resolved is not None and not resolved.exists():
        given = "--data" if path is not None and str(path).strip() else "$ABLATION_DATA"
        raise DataError(f"CIFAR-10 data not found at {resolved} (from {given}); {LAYOUTS}")
    return resolved


# --- the official python batches -------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals of a CIFAR-10 batch and refuses all else."""

    def __init__(self, file, member: str):
        super().__init__(file, encoding="bytes")  # Python 2 pickles: keys and image bytes stay bytes
        self.member = member

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} in {self.member}: a CIFAR-10 batch references only "
                f"numpy arrays, so this file is not genuine CIFAR-10 (it could run code); {HOW_TO_GET}"
            ) from None


def _unpickle(file, member: str):
    """Unpickle one batch file safely; a truncated or garbled one is a DataError naming it."""
    try:
        return _NumpyOnlyUnpickler(file, member).load()
    except DataError:
        raise
    except _CORRUPT_ERRORS as error:
        raise DataError(f"{member} is corrupt or truncated ({type(error).__name__}: {error}); {HOW_TO_GET}") from error


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


def _is_unsafe(name: str) -> bool:
    """Whether a member name is absolute or climbs out of the extraction root."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _wanted_members(tar: tarfile.TarFile, label: str) -> list[tuple[str, tarfile.TarInfo]]:
    """Check every member name, then return the CIFAR-10 members to read, in archive order."""
    members = tar.getmembers()
    for member in members:  # all names first: refuse a hostile archive before reading any of it
        if _is_unsafe(member.name):
            raise DataError(f"refusing archive member {member.name!r} in {label}: absolute or '..' paths are not "
                            f"allowed in a CIFAR-10 archive; {HOW_TO_GET}")
    wanted: dict[str, tarfile.TarInfo] = {}
    for member in members:
        folder, _, name = member.name.removeprefix("./").partition("/")
        if folder != BATCH_DIR or name not in (*TRAIN_BATCHES, TEST_BATCH, META):
            continue
        if not member.isreg() or name in wanted:
            raise DataError(f"{label}: member {member.name!r} is a link, not a file, or appears twice; {HOW_TO_GET}")
        wanted[name] = member
    _require(wanted, label, f"{BATCH_DIR}/")
    # Archive order, because seeking back in a gzip stream decompresses it again from the start.
    return sorted(wanted.items(), key=lambda item: item[1].offset_data)


def _require(found, where: str, prefix: str = ""):
    """Raise a DataError naming the required batches that are not in `found`."""
    missing = [prefix + name for name in (*TRAIN_BATCHES, TEST_BATCH) if name not in found]
    if missing:
        raise DataError(f"{where} is incomplete: it lacks {', '.join(missing)}; {LAYOUTS}")


def _load_archive(path: Path) -> Dataset:
    """Read the batches of a cifar-10-python.tar.gz in memory, or their decoded copy in the cache."""
    decoded = _read_decoded(path)
    if decoded is not None:
        return decoded
    try:
        with tarfile.open(path, "r:*") as tar:
            members = _wanted_members(tar, path.name)
            batches = ((name, _unpickle(tar.extractfile(m), f"{path.name}:{m.name}"), f"{path.name}:{m.name}")
                       for name, m in members)
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
    return _cache_root() / f"cifar10-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


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
    _require({p.name for p in folder.iterdir() if p.is_file()}, str(folder))

    def batches():
        for name in (META, *TRAIN_BATCHES, TEST_BATCH):
            if (folder / name).is_file():
                with open(folder / name, "rb") as file:
                    yield name, _unpickle(file, str(folder / name)), str(folder / name)

    return _assemble(batches(), f"folder:{folder.name}")


# --- other layouts ----------------------------------------------------------------------------------


def _load_folder(root: Path) -> Dataset:
    """Dispatch a folder to the layout it holds."""
    if (root / "data_batch_1").is_file() or (root / TEST_BATCH).is_file():
        return _load_batch_folder(root)
    if (root / BATCH_DIR).is_dir():
        return _load_batch_folder(root / BATCH_DIR)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _load_image_folder(root)
    if (root / "cifar-10-python.tar.gz").is_file():
        return _load_archive(root / "cifar-10-python.tar.gz")
    raise DataError(f"{root} holds none of the CIFAR-10 layouts; {LAYOUTS}")


def _load_image_folder(root: Path) -> Dataset:
    """Read ROOT/train/<class>/* and ROOT/test/<class>/* images."""
    # CIFAR-10's label order is alphabetical, so sorted folder names reproduce its official labels.
    class_names = tuple(sorted(d.name for d in (root / "train").iterdir() if d.is_dir()))
    if not class_names:
        raise DataError(f"{root / 'train'} has no class subfolders; {LAYOUTS}")
    x_train, y_train = _read_images(root / "train", class_names)
    x_test, y_test = _read_images(root / "test", class_names)
    return Dataset(x_train, y_train, x_test, y_test, class_names, f"images:{root.name}")


def _read_images(split_dir: Path, class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The 32x32 RGB images under split_dir/<class>/ and their labels."""
    from PIL import Image  # lazily: pillow (a matplotlib dependency) is needed only for this layout

    unknown = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in class_names)
    if unknown:
        raise DataError(f"{split_dir} has classes {unknown} that train/ lacks; both splits need the same classes")
    files = [(path, label) for label, name in enumerate(class_names) if (split_dir / name).is_dir()
             for path in sorted((split_dir / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{split_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images under <class>/ folders; {LAYOUTS}")
    # A class without images in one split would train or score on fewer classes without a word.
    lacking = sorted(set(class_names) - {class_names[label] for _, label in files})
    if lacking:
        raise DataError(f"{split_dir} has no images of class(es) {lacking}; every class of train/ needs "
                        f"{'/'.join(IMAGE_SUFFIXES)} images in both train/ and test/")
    x = np.empty((len(files), 32, 32, 3), np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as error:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"cannot read image {path}: {error}") from error
        if pixels.shape != (32, 32, 3):
            raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}; CIFAR-10 images are 32x32: resize it")
        x[i] = pixels
    return x, np.array([label for _, label in files], np.int64)


def _download_with_keras() -> Dataset:
    """keras.datasets.cifar10.load_data(), or a DataError saying how to get the data offline."""
    try:
        import keras  # lazily: it starts a backend (seconds), needed only when no local data is given

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # Keras reports a failed download as a bare Exception
        raise DataError(f"could not download CIFAR-10 with Keras ({type(error).__name__}: {error}); "
                        f"without internet, {HOW_TO_GET}") from error

    def channels_last(x):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.shape[1] == 3 else x

    return Dataset(channels_last(x_train), y_train.reshape(-1).astype(np.int64),
                   channels_last(x_test), y_test.reshape(-1).astype(np.int64), CLASS_NAMES, "keras-download")


# --- splits -----------------------------------------------------------------------------------------


def make_splits(dataset: Dataset, *, validation_split: float = 0.2, seed: int = 0,
                train_subset: int | None = None, test_subset: int | None = None) -> Splits:
    """Seeded, class-stratified train/validation split (and optional subsets); deterministic per seed."""
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
        "source": dataset.source, "train_size": len(train), "val_size": len(val), "test_size": len(y_test),
        "subset_train": None if train_subset is None else int(train_subset),
        "subset_test": None if test_subset is None else int(test_subset),
        "seed": int(seed), "validation_split": float(validation_split), "digest": _digest(arrays),
    }
    return Splits(*arrays, class_names=dataset.class_names, fingerprint=fingerprint)


class LazySplits:
    """Splits of one data source, made on demand and kept per split arguments.

    `fingerprint()` answers from a small on-disk cache when the source is an archive file whose
    path, size and modification time are unchanged since the fingerprint was computed; the data
    is read only when a run needs the arrays. So re-running a finished study skips reading it.
    The cache is `$ABLATION_CACHE/fingerprints.json` (default `~/.cache/ablation/`); the archive's decoded
    arrays are kept beside it (`cifar10-<key>.npz`), so the next process reads them instead of the archive.
    """

    def __init__(self, path: str | os.PathLike | None = None, out=print):
        _existing_data_path(path)  # a wrong path fails now, before any run starts
        self.path, self.out = path, out
        self._dataset: Dataset | None = None
        self._splits: dict[tuple, Splits] = {}

    def fingerprint(self, **split_args) -> dict:
        made = self._splits.get(tuple(sorted(split_args.items())))
        if made is not None:
            return made.fingerprint
        key = self._cache_key(split_args)
        cached = _read_cache().get(key) if key else None
        return cached if cached is not None else self.splits(**split_args).fingerprint

    def splits(self, **split_args) -> Splits:
        arguments = tuple(sorted(split_args.items()))
        if arguments not in self._splits:
            if self._dataset is None:
                self.out("loading CIFAR-10 ...")
                self._dataset = load_cifar10(self.path)
            self._splits[arguments] = make_splits(self._dataset, **split_args)
            key = self._cache_key(split_args)
            if key:
                _write_cache(key, self._splits[arguments].fingerprint)
        return self._splits[arguments]

    def _cache_key(self, split_args: dict) -> str | None:
        path = resolve_data_path(self.path)
        if path is None or not path.is_file():
            return None  # folders can change inside without their own mtime changing: never cached
        stat = path.stat()
        return json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, sorted(split_args.items())])


def _cache_root() -> Path:
    root = os.environ.get("ABLATION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "ablation"
    return Path(root).expanduser()


def _cache_file() -> Path:
    return _cache_root() / "fingerprints.json"


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
