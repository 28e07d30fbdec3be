"""Tests for ablation.data on the real CIFAR-10 archive: layouts, safety against hostile files, splits."""

import io
import json
import os
import pickle
import shlex
import shutil
import tarfile

import numpy as np
import pytest

from ablation.data import (
    CLASS_NAMES,
    DataError,
    Dataset,
    LazySplits,
    load_cifar10,
    make_splits,
    resolve_data_path,
)

BATCH_BYTES = 10000 * 3072


@pytest.fixture(scope="module")
def cifar(cifar_path):
    """The real archive, loaded once for the module."""
    return load_cifar10(cifar_path)


@pytest.fixture(scope="module")
def extracted(cifar_path, tmp_path_factory):
    """Parent folder of a cifar-10-batches-py/ extracted from the real archive."""
    parent = tmp_path_factory.mktemp("extracted")
    with tarfile.open(cifar_path) as tar:
        tar.extractall(parent, filter="data")
    return parent


def _tar(path, members):
    """Write a tar.gz with (name, bytes) members, in order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cifar_archive(path, data_batch_1: bytes):
    """A tar.gz with the official member names, `data_batch_1` first and the rest filler."""
    others = [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]
    members = [("cifar-10-batches-py/data_batch_1", data_batch_1)]
    return _tar(path, members + [(f"cifar-10-batches-py/{name}", b"filler") for name in others])


class _RunsCommand:
    """Pickles as a call of os.system, as a hostile batch would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _hostile_pickles(marker):
    """Pickles that would create `marker` if they were loaded with plain pickle."""
    touch = f"touch {shlex.quote(str(marker))}"
    return {
        "os.system": f"cos\nsystem\n(S'{touch}'\ntR.".encode(),  # protocol 0, global named os.system
        "batch-dict": pickle.dumps({b"data": _RunsCommand(touch), b"labels": [0]}, protocol=3),  # 2 adds _codecs
        "builtins.exec": b"cbuiltins\nexec\n(Vopen(%r, 'w').close()\ntR." % str(marker).encode(),
    }


# --- the real archive and the other layouts --------------------------------------------------------


def test_class_names_are_cifar_order():
    assert CLASS_NAMES[0] == "airplane" and CLASS_NAMES[-1] == "truck" and len(CLASS_NAMES) == 10
    assert tuple(sorted(CLASS_NAMES)) == CLASS_NAMES  # why image-folder trees get the official labels


def test_loads_real_archive(cifar):
    assert cifar.x_train.shape == (50000, 32, 32, 3) and cifar.x_test.shape == (10000, 32, 32, 3)
    assert cifar.x_train.dtype == np.uint8 and cifar.y_train.dtype == np.int64
    assert cifar.y_train.shape == (50000,) and cifar.y_test.shape == (10000,)
    assert cifar.x_train.flags.c_contiguous
    assert set(np.unique(cifar.y_train)) == set(range(10)) == set(np.unique(cifar.y_test))
    assert np.bincount(cifar.y_train).tolist() == [5000] * 10
    # Sum over whole images first: a (N*1024, 3) reduction along axis 0 is 10x slower.
    sums = cifar.x_train.reshape(50000, -1).sum(axis=0, dtype=np.int64).reshape(1024, 3).sum(axis=0)
    means = sums / (50000 * 1024 * 255)
    np.testing.assert_allclose(means, [0.4914, 0.4822, 0.4465], atol=1e-3)
    assert cifar.class_names == CLASS_NAMES
    assert cifar.source == "cifar-10-python.tar.gz"


def test_loads_extracted_folder_and_its_parent(cifar, extracted):
    folder = extracted / "cifar-10-batches-py"
    for path in (folder, extracted):
        loaded = load_cifar10(path)
        assert loaded.source == "folder:cifar-10-batches-py"
        assert np.array_equal(loaded.x_train, cifar.x_train) and np.array_equal(loaded.y_train, cifar.y_train)
        assert np.array_equal(loaded.x_test, cifar.x_test) and np.array_equal(loaded.y_test, cifar.y_test)


def test_pixels_follow_the_official_row_layout(cifar, extracted):
    # A row is the red, green, blue planes, each 32x32 row-major; read it raw from the pickle's bytes.
    raw = (extracted / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    start = raw.index(b"T" + BATCH_BYTES.to_bytes(4, "little")) + 5  # BINSTRING opcode, 4-byte length
    rows = np.frombuffer(raw, np.uint8, BATCH_BYTES, start).reshape(10000, 3072)
    for image, row, col, channel in [(0, 0, 1, 0), (7, 31, 0, 2), (9999, 5, 17, 1)]:
        assert cifar.x_train[image, row, col, channel] == rows[image, channel * 1024 + row * 32 + col]


def test_loads_image_folder_tree(cifar, tmp_path):
    from PIL import Image

    picks = {"airplane": 0, "cat": 3, "ship": 8}
    for split, x, y, count in (("train", cifar.x_train, cifar.y_train, 3), ("test", cifar.x_test, cifar.y_test, 2)):
        for name, label in picks.items():
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(y == label)[:count]):
                Image.fromarray(x[index]).save(tmp_path / "tree" / split / name / f"{i:02d}.png")
    loaded = load_cifar10(tmp_path / "tree")
    assert loaded.class_names == ("airplane", "cat", "ship")
    assert loaded.source == "images:tree"
    assert loaded.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and loaded.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    expected = np.concatenate([cifar.x_train[np.flatnonzero(cifar.y_train == label)[:3]] for label in picks.values()])
    assert loaded.x_train.dtype == np.uint8 and np.array_equal(loaded.x_train, expected)


def test_images_of_two_sizes_are_refused_without_image_size(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / split / "cat" / "a.png")
        Image.new("RGB", (64, 48)).save(tmp_path / split / "cat" / "big.png")
    with pytest.raises(DataError, match=r"big\.png is 64x48 where \S*a\.png is 32x32.*set image_size"):
        load_cifar10(tmp_path)


# --- hostile and broken files -----------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["os.system", "batch-dict", "builtins.exec"])
@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_refuses_malicious_pickle(tmp_path, payload, layout):
    marker = tmp_path / "pwned"
    hostile = _hostile_pickles(marker)[payload]
    if layout == "archive":
        path = _cifar_archive(tmp_path / "cifar-10-python.tar.gz", hostile)
    else:
        path = tmp_path / "cifar-10-batches-py"
        path.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (path / name).write_bytes(hostile if name == "data_batch_1" else b"filler")
    with pytest.raises(DataError, match=r"refusing to unpickle \S*(system|exec) in \S*data_batch_1"):
        load_cifar10(path)
    assert not marker.exists()


@pytest.mark.parametrize("bad_name", ["../evil", "cifar-10-batches-py/../../x", "ABSOLUTE"])
def test_refuses_unsafe_member_before_reading_any(tmp_path, monkeypatch, bad_name):
    bad_name = str(tmp_path / "abs_evil") if bad_name == "ABSOLUTE" else bad_name
    marker = tmp_path / "pwned"
    hostile = _hostile_pickles(marker)["os.system"]
    # The hostile batch comes first: only a check of every name before any read refuses by name.
    archive = _tar(tmp_path / "cifar-10-python.tar.gz",
                   [("cifar-10-batches-py/data_batch_1", hostile), (bad_name, b"evil")])
    workdir = tmp_path / "work" / "cifar-10-batches-py"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)  # where a naive extraction of "../" names would land inside tmp_path
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match="refusing archive member") as error:
        load_cifar10(archive)
    assert repr(bad_name) in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before
    assert not marker.exists() and not (tmp_path.parent / "evil").exists()


def test_truncated_archive_is_a_data_error(cifar_path, tmp_path):
    with open(cifar_path, "rb") as file:
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(file.read(2_000_000))
    with pytest.raises(DataError, match="corrupt, truncated"):
        load_cifar10(tmp_path / "cifar-10-python.tar.gz")


def test_truncated_batch_is_a_data_error(tmp_path):
    batch = pickle.dumps({b"data": np.zeros((10000, 3072), np.uint8), b"labels": [0] * 10000}, protocol=3)
    archive = _cifar_archive(tmp_path / "c.tar.gz", batch[: len(batch) // 2])
    with pytest.raises(DataError, match=r"data_batch_1 is corrupt or truncated"):
        load_cifar10(archive)


def test_batch_of_wrong_shape_is_a_data_error(tmp_path):
    batch = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10}, protocol=3)
    with pytest.raises(DataError, match=r"data_batch_1 holds uint8 \(10, 3072\) data, expected uint8 \(10000, 3072\)"):
        load_cifar10(_cifar_archive(tmp_path / "c.tar.gz", batch))


def test_missing_member_is_named(tmp_path):
    archive = _tar(tmp_path / "c.tar.gz", [("cifar-10-batches-py/data_batch_1", b"x")])
    with pytest.raises(DataError, match="data_batch_2.*test_batch"):
        load_cifar10(archive)


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="not found") as error:
        load_cifar10(missing)
    assert str(missing) in str(error.value) and "cifar-10-batches-py" in str(error.value)


def test_unrecognised_folder_lists_layouts(tmp_path):
    with pytest.raises(DataError, match=r"none of the CIFAR-10 layouts.*train/<class>"):
        load_cifar10(tmp_path)


def test_resolve_data_path_prefers_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_DATA", str(tmp_path / "env"))
    assert resolve_data_path(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_path(None) == tmp_path / "env"
    monkeypatch.delenv("ABLATION_DATA")
    assert resolve_data_path(None) is None


# --- splits -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagged(cifar):
    """3000 real training images whose first pixel encodes their index, to trace them through splits."""
    x = cifar.x_train[:3000].copy()
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(3000) // 256, np.arange(3000) % 256
    return Dataset(x, cifar.y_train[:3000], cifar.x_test[:100], cifar.y_test[:100], CLASS_NAMES, "tagged")


def _indices(x):
    return x[:, 0, 0, 0].astype(int) * 256 + x[:, 0, 0, 1]


def test_split_sizes(cifar):
    splits = make_splits(cifar, validation_split=0.2, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (40000, 10000, 10000)
    assert len(splits.y_train) == 40000 and len(splits.y_val) == 10000
    assert splits.x_train.dtype == np.uint8 and splits.y_val.dtype == np.int64
    assert splits.fingerprint["train_size"] == 40000 and splits.fingerprint["val_size"] == 10000
    assert np.bincount(splits.y_val).tolist() == [1000] * 10  # the validation set is class-balanced


@pytest.mark.parametrize("train_subset", [None, 1000])
def test_train_and_val_do_not_overlap(tagged, train_subset):
    splits = make_splits(tagged, seed=5, train_subset=train_subset)
    train, val = _indices(splits.x_train), _indices(splits.x_val)
    assert not set(train) & set(val)
    assert len(set(train) | set(val)) == len(train) + len(val) == (train_subset or 3000)
    assert np.array_equal(tagged.y_train[train], splits.y_train)


def test_splits_are_deterministic_per_seed(cifar):
    first = make_splits(cifar, seed=1, train_subset=2000, test_subset=500)
    again = make_splits(cifar, seed=1, train_subset=2000, test_subset=500)
    other = make_splits(cifar, seed=2, train_subset=2000, test_subset=500)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert first.fingerprint == again.fingerprint
    assert not np.array_equal(first.y_train, other.y_train)
    assert first.fingerprint["digest"] != other.fingerprint["digest"]


def test_subsets_are_stratified_and_nested(cifar, tagged):
    splits = make_splits(cifar, seed=3, train_subset=1000, test_subset=500)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (800, 200, 500)
    assert np.abs(np.bincount(np.concatenate([splits.y_train, splits.y_val])) - 100).max() <= 1
    assert np.abs(np.bincount(splits.y_val) - 20).max() <= 2
    assert np.abs(np.bincount(splits.y_test, minlength=10) - 50).max() <= 1
    small, large = (make_splits(tagged, seed=3, train_subset=n) for n in (500, 1000))
    picked = lambda s: set(_indices(s.x_train)) | set(_indices(s.x_val))  # noqa: E731
    assert picked(small) < picked(large)  # a bigger subset adds images, as a learning curve needs


def test_fingerprint_tracks_subset_and_seed(cifar):
    base = make_splits(cifar, seed=0, train_subset=1000)
    variants = [
        make_splits(cifar, seed=1, train_subset=1000),
        make_splits(cifar, seed=0, train_subset=2000),
        make_splits(cifar, seed=0, train_subset=1000, test_subset=500),
        make_splits(cifar, seed=0, train_subset=1000, validation_split=0.1),
    ]
    assert len({base.fingerprint["digest"], *(v.fingerprint["digest"] for v in variants)}) == 5
    assert base.fingerprint["source"] == "cifar-10-python.tar.gz"
    fields = ("seed", "subset_train", "subset_test", "validation_split")
    assert [base.fingerprint[field] for field in fields] == [0, 1000, None, 0.2]
    assert json.loads(json.dumps(base.fingerprint)) == base.fingerprint
    assert variants[2].fingerprint["subset_test"] == 500 and variants[2].fingerprint["test_size"] == 500


@pytest.mark.parametrize("arguments", [{"validation_split": 1.0}, {"train_subset": 0}, {"train_subset": 3001},
                                       {"test_subset": 101}])
def test_bad_split_arguments_are_data_errors(tagged, arguments):
    with pytest.raises(DataError, match="must be"):
        make_splits(tagged, **arguments)


def test_fingerprint_comes_from_the_cache_until_the_archive_changes(cifar, cifar_path, tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / cifar_path.name
    shutil.copyfile(cifar_path, archive)
    arguments = {"validation_split": 0.2, "seed": 0, "train_subset": 500, "test_subset": 100}
    expected = make_splits(cifar, **arguments).fingerprint
    said = []
    assert LazySplits(archive, said.append).fingerprint(**arguments) == expected
    assert said == ["loading CIFAR-10 ..."]

    said.clear()
    again = LazySplits(archive, said.append)
    assert again.fingerprint(**arguments) == expected
    assert said == []  # nothing read
    assert again.fingerprint(**{**arguments, "seed": 1}) == make_splits(cifar, **{**arguments, "seed": 1}).fingerprint
    assert said == ["loading CIFAR-10 ..."]  # other splits: computed

    said.clear()
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the archive was replaced
    assert LazySplits(archive, said.append).fingerprint(**arguments) == expected
    assert said == ["loading CIFAR-10 ..."]


def test_a_decoded_archive_is_read_from_the_cache_and_a_damaged_copy_is_decoded_again(cifar, cifar_path, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / cifar_path.name
    shutil.copyfile(cifar_path, archive)
    first = load_cifar10(archive)
    [copy] = (tmp_path / "cache").glob("cifar10-*.npz")
    stamp = copy.stat().st_mtime_ns
    second = load_cifar10(archive)
    assert copy.stat().st_mtime_ns == stamp  # read, not written again
    for loaded in (first, second):
        for name in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(loaded, name), getattr(cifar, name))
        assert loaded.class_names == cifar.class_names and loaded.source == cifar_path.name
    copy.write_bytes(copy.read_bytes()[:1000])  # a copy cut short (a full disk, a killed writer)
    third = load_cifar10(archive)
    assert np.array_equal(third.x_train, cifar.x_train) and copy.stat().st_size > 1000  # decoded and rewritten
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the archive was replaced
    load_cifar10(archive)
    assert [p.name for p in (tmp_path / "cache").glob("cifar10-*.npz")] != [copy.name]  # a new key, the old copy gone
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 1
