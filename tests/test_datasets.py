"""Data beyond CIFAR-10: CIFAR-100, (Fashion-)MNIST, image folders of any size, a user's loader; shapes flow on.

Every archive here is built in tmp_path in its real layout with a few images per class (no internet);
two image folders train through the ladder command at smoke size on a real MLflow store.
"""

import gzip
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ablation.core.config import Config, StudyError, check_field
from ablation.data import DataError, LazySplits, load_data
from conftest import run_command

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
       "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}


# --- small copies of the real layouts ----------------------------------------------------------------


def _cifar100_pickles(per_class=(2, 1), seed=0):
    """train, test and meta as the official cifar-100-python pickles hold them (rows of 3072 bytes, fine labels)."""
    rng, parts = np.random.default_rng(seed), {}
    for name, count in zip(("train", "test"), per_class):
        labels = np.repeat(np.arange(100), count)
        rng.shuffle(labels)
        rows = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        parts[name] = {b"data": rows, b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
                       b"filenames": [b"x.png"] * len(labels), b"batch_label": name.encode()}
    parts["meta"] = {b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
    return parts


def _tar(path, members: dict):
    """A tar.gz with `name: bytes` members, in order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cifar100_archive(path, parts):
    # Protocol 3 keeps bytes as bytes (2 would pickle them through _codecs, which the safe unpickler refuses).
    members = {f"cifar-100-python/{name}": pickle.dumps(content, protocol=3) for name, content in parts.items()}
    return _tar(path, members)


def _idx(values: np.ndarray) -> bytes:
    """An idx file's bytes: zero, zero, 0x08 (unsigned bytes), the dimension count, each dimension big-endian."""
    header = bytes((0, 0, 8, values.ndim)) + b"".join(int(n).to_bytes(4, "big") for n in values.shape)
    return gzip.compress(header + values.astype(np.uint8).tobytes())


def _mnist_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), "y_train": np.arange(20) % 10,
            "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), "y_test": np.arange(10)[::-1].copy()}


def _idx_folder(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX.items():
        (folder / name).write_bytes(_idx(arrays[key]))
    return folder


def _image_tree(root, classes: int, size: int, mode: str, per_class=(2, 1)):
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png: each class its own mean brightness, plus noise."""
    from PIL import Image

    rng, channels = np.random.default_rng(1), 3 if mode == "RGB" else 1
    for split, count in zip(("train", "test"), per_class):
        for label in range(classes):
            (root / split / f"c{label:03d}").mkdir(parents=True)
            for i in range(count):
                level = 255 * label // max(1, classes - 1)
                pixels = np.clip(level + rng.integers(-20, 20, (size, size, channels)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(
                    root / split / f"c{label:03d}" / f"{i}.png")
    return root


# --- the ladder command on image folders of other sizes, channels and class counts -----------------

STUDY = """
[study]
name = "{name}"
title = "a dataset that is not CIFAR-10"
source = "tests"

[base]
{base}
epochs = 1
batch_size = 32
width_shift_range = 0.1
height_shift_range = 0.1
horizontal_flip = true

[[steps]]
name = "only"
description = "one step"
"""


def _ladder_run(tmp_path, name: str, base: str, data=None):
    (tmp_path / "study.toml").write_text(STUDY.format(name=name, base=base))
    done = run_command("ladder", ["--study", str(tmp_path / "study.toml"), "--profile", "smoke", "--no-report",
                                  *(["--data", str(data)] if data else [])], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    [run] = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["mlflow.runName"] == "only"]
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["test_accuracy"] <= 1
    local = client.download_artifacts(run.info.run_id, "test_predictions.json", str(tmp_path))
    with open(local) as file:
        return run, json.load(file), done.stdout


def test_a_100_class_48px_rgb_image_folder_trains_through_the_ladder(tmp_path):
    tree = _image_tree(tmp_path / "tree", classes=100, size=48, mode="RGB")
    base = ('data = "images"\nmodel = "vgg_like"\n'
            'model_args = { filters = [4, 8], convs_per_group = 1, dense_units = 8 }')
    run, predictions, out = _ladder_run(tmp_path, "hundred", base, tree)
    tags, params = run.data.tags, run.data.params
    assert (tags["data.dataset"], tags["data.image_shape"], tags["data.classes"]) == ("images", "[48, 48, 3]", "100")
    assert params["data"] == "images" and "loading an image-folder tree" in out
    assert predictions["class_names"] == [f"c{i:03d}" for i in range(100)] and len(predictions["labels"]) == 100
    assert set(predictions["labels"]) == set(range(100))  # smoke's 100 test images: one of each class


def test_a_study_judges_its_changes_on_the_metric_it_names(tmp_path):
    """[study] metric = "test_top5_accuracy": the ladder's summary (and its printed notes) compare top-5 accuracy."""
    tree = _image_tree(tmp_path / "tree", classes=100, size=32, mode="RGB")
    study = STUDY.format(name="topfive", base='data = "images"\nmodel = "vgg_like"\n'
                         'model_args = { filters = [4, 8], convs_per_group = 1, dense_units = 8 }')
    study = study.replace('source = "tests"', 'source = "tests"\nmetric = "test_top5_accuracy"')
    (tmp_path / "study.toml").write_text(study + '[[steps]]\nname = "faster"\nlearning_rate = 0.01\n')
    done = run_command("ladder", ["--study", str(tmp_path / "study.toml"), "--profile", "smoke", "--no-report",
                                  "--data", str(tree)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("topfive").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("ablation.kind") == "ladder"]
    top5 = {r.data.tags["mlflow.runName"]: r.data.metrics["test_top5_accuracy"] for r in runs if r is not parent}
    summary = json.loads(open(client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path))).read())
    [change] = summary["changes"]
    assert parent.data.tags["ablation.metric"] == summary["metric"] == "test_top5_accuracy"
    assert change["change"]["mean"] == pytest.approx(top5["faster"] - top5["only"])
    assert change["mcnemar"] is None  # McNemar pairs top-1 right/wrong per image: not this metric's test
    assert "change (test top5 accuracy)" in done.stdout


def test_a_verdict_metric_that_is_not_a_logged_test_fraction_is_refused_in_one_line(tmp_path):
    from ablation.core.study import load_study

    study = STUDY.format(name="bad", base="").replace('source = "tests"', 'source = "tests"\nmetric = "val_loss"')
    (tmp_path / "study.toml").write_text(study)
    with pytest.raises(StudyError, match=r"study.toml: \[study\].*metric.*test_accuracy or test_top5_accuracy"):
        load_study(tmp_path / "study.toml")


def test_a_28px_grayscale_image_folder_trains_through_the_ladder_on_one_channel(tmp_path):
    tree = _image_tree(tmp_path / "tree", classes=10, size=28, mode="L", per_class=(16, 10))
    base = 'data = "images"\nmodel = "resnet_v1"\nmodel_args = { depth = 8 }'
    run, predictions, _ = _ladder_run(tmp_path, "gray", base, tree)
    assert run.data.tags["data.image_shape"] == "[28, 28, 1]" and run.data.tags["data.classes"] == "10"
    assert len(predictions["class_names"]) == 10 and len(predictions["predictions"]) == 100



def test_augmentation_shifts_are_fractions_of_the_image_size():
    import keras

    from ablation.training.augment import draw

    config = Config(width_shift_range=0.1, height_shift_range=0.1)
    params = draw(512, config, keras.random.SeedGenerator(0), height=20, width=100)
    shift_x, shift_y = (np.abs(keras.ops.convert_to_numpy(params[key])) for key in ("shift_x", "shift_y"))
    assert 3.2 < shift_x.max() <= 10.0 and shift_y.max() <= 2.0  # 10% of 100 and of 20 pixels, not of 32



def test_the_report_confusion_matrix_stays_readable_with_many_classes(monkeypatch):
    from ablation.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_png", lambda fig: drawn.append(fig) or b"")  # keep the figure, skip the PNG
    for classes, names_shown, numbers in ((10, 10, 100), (100, 20, 0)):  # CIFAR-10 as before; CIFAR-100
        labels = np.arange(classes).repeat(2)
        figures.confusion_chart(labels, labels[::-1], [f"class {i}" for i in range(classes)], "only")
        [axes, _] = drawn[-1].axes  # the matrix and its colour bar
        assert len(axes.get_xticklabels()) == len(axes.get_yticklabels()) == names_shown
        assert len(axes.texts) == numbers  # a number in every cell only where they fit


# --- the keras.datasets layouts ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["archive", "folder", "parent"])
def test_cifar100_loads_fine_labels_names_and_pixels(tmp_path, layout):
    parts = _cifar100_pickles()
    archive = _cifar100_archive(tmp_path / "cifar-100-python.tar.gz", parts)
    if layout != "archive":
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "x", filter="data")
    path = {"archive": archive, "folder": tmp_path / "x" / "cifar-100-python", "parent": tmp_path / "x"}[layout]
    dataset = load_data(path, "cifar100")
    assert dataset.x_train.shape == (200, 32, 32, 3) and dataset.x_test.shape == (100, 32, 32, 3)
    assert dataset.class_names == tuple(f"class_{i:02d}" for i in range(100))
    assert dataset.y_train.tolist() == parts["train"][b"fine_labels"]  # fine, not coarse
    assert dataset.y_test.tolist() == parts["test"][b"fine_labels"]
    rows = parts["train"][b"data"]  # a row is the red, green, blue planes, each 32x32 row-major
    for image, row, col, channel in [(0, 0, 1, 0), (7, 31, 0, 2), (199, 5, 17, 1)]:
        assert dataset.x_train[image, row, col, channel] == rows[image, channel * 1024 + row * 32 + col]


def test_fashion_mnist_loads_from_its_idx_files_as_one_channel(tmp_path):
    arrays = _mnist_arrays()
    dataset = load_data(_idx_folder(tmp_path / "fashion", arrays), "fashion_mnist")
    assert dataset.x_train.shape == (20, 28, 28, 1) and dataset.x_test.shape == (10, 28, 28, 1)
    assert np.array_equal(dataset.x_train[..., 0], arrays["x_train"]) and np.array_equal(dataset.x_test[..., 0],
                                                                                         arrays["x_test"])
    assert dataset.y_train.tolist() == arrays["y_train"].tolist()
    assert dataset.y_test.tolist() == arrays["y_test"].tolist()
    assert dataset.class_names == FASHION


def test_mnist_loads_from_keras_npz_and_from_idx_files(tmp_path):
    arrays = _mnist_arrays(seed=3)
    np.savez(tmp_path / "mnist.npz", **arrays)
    for path in (tmp_path / "mnist.npz", tmp_path, _idx_folder(tmp_path / "idx", arrays)):
        dataset = load_data(path, "mnist")
        assert dataset.class_names == tuple("0123456789") and dataset.x_train.shape == (20, 28, 28, 1)
        assert np.array_equal(dataset.x_test[..., 0], arrays["x_test"])
        assert dataset.y_test.tolist() == list(range(9, -1, -1))


def test_image_size_resizes_any_dataset_and_keeps_grayscale_one_channel(tmp_path):
    from PIL import Image

    tree = _image_tree(tmp_path / "tree", classes=3, size=20, mode="L")
    Image.new("L", (40, 30)).save(tree / "train" / "c000" / "wide.png")  # another size: image_size makes it fit
    assert load_data(tree, "images", image_size=24).x_train.shape == (7, 24, 24, 1)
    fashion = load_data(_idx_folder(tmp_path / "fashion", _mnist_arrays()), "fashion_mnist", image_size=32)
    assert fashion.x_train.shape == (20, 32, 32, 1) and fashion.x_test.shape == (10, 32, 32, 1)


def test_the_dataset_is_recorded_and_tells_runs_apart(tmp_path):
    tree = _image_tree(tmp_path / "tree", classes=4, size=16, mode="RGB", per_class=(5, 2))
    data, split = LazySplits(tree, lambda line: None), {"validation_split": 0.2, "seed": 0}
    native = data.fingerprint(data="images", **split)
    resized = data.fingerprint(data="images", image_size=12, **split)
    assert (native["dataset"], native["image_size"], native["image_shape"], native["classes"]) == ("images", None,
                                                                                                     [16, 16, 3], 4)
    assert resized["image_shape"] == [12, 12, 3] and resized["digest"] != native["digest"]
    # The config hash keeps CIFAR-10's finished work (the defaults leave it as it was) and separates the rest.
    assert Config().hash() == Config(data="cifar10", image_size=None).hash()
    assert len({Config().hash(), Config(data="images").hash(), Config(data="images", image_size=12).hash()}) == 3
    assert Config(data="mnist", image_size=32).split_args()["data"] == "mnist"


def test_a_queue_worker_rebuilds_the_planners_dataset_from_the_fingerprint(tmp_path):
    from ablation.engine.queue import split_args_of

    tree = _image_tree(tmp_path / "tree", classes=4, size=16, mode="L", per_class=(5, 2))
    config = Config(data="images", image_size=12, train_subset=16)
    planned = LazySplits(tree, lambda line: None).fingerprint(**config.split_args())  # the planner's
    assert split_args_of(planned) == config.split_args()
    assert LazySplits(tree, lambda line: None).fingerprint(**split_args_of(planned)) == planned  # a worker's


# --- a user's loader by import path ------------------------------------------------------------------

LOADER = '''
import numpy as np

def load():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (12, 10, 14), dtype=np.uint8)
    x_test = rng.integers(0, 256, (6, 10, 14), dtype=np.uint8)
    return x_train, (np.arange(12) % 3).reshape(-1, 1), x_test, np.arange(6) % 3, ["red", "green", "blue"]

def more():
    rng = np.random.default_rng(1)
    return (rng.integers(0, 256, (40, 12, 16, 3), dtype=np.uint8), np.arange(40) % 4,
            rng.integers(0, 256, (20, 12, 16, 3), dtype=np.uint8), np.arange(20) % 4)

def floats():
    return np.zeros((4, 8, 8)), np.zeros(4, int), np.zeros((2, 8, 8)), np.zeros(2, int)
'''


@pytest.fixture
def loader_module(tmp_path, monkeypatch):
    (tmp_path / "user_loader.py").write_text(LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_loader"


def test_a_loader_function_by_import_path(loader_module):
    assert check_field("data", f"{loader_module}:load", "study.toml: [base]") == f"{loader_module}:load"
    dataset = load_data(None, f"{loader_module}:load")
    assert dataset.x_train.shape == (12, 10, 14, 1) and dataset.x_test.shape == (6, 10, 14, 1)
    assert dataset.y_train.tolist() == [0, 1, 2] * 4 and dataset.class_names == ("red", "green", "blue")
    splits = LazySplits(None, lambda line: None).splits(data=f"{loader_module}:load", validation_split=0.25, seed=0)
    assert splits.x_train.shape == (9, 10, 14, 1) and splits.fingerprint["dataset"] == f"{loader_module}:load"



def test_a_loader_function_trains_through_the_ladder_and_is_the_runs_recorded_source(tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "user_loader.py").write_text(LOADER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "code"))  # the command imports the loader from there
    base = ('data = "user_loader:more"\ntrain_subset = 40\ntest_subset = 20\nmodel = "vgg_like"\n'
            'model_args = { filters = [4], convs_per_group = 1, dense_units = 8 }')
    run, predictions, _ = _ladder_run(tmp_path, "loader", base)
    assert run.data.tags["data.dataset"] == "user_loader:more" and run.data.tags["data.image_shape"] == "[12, 16, 3]"
    assert predictions["class_names"] == ["0", "1", "2", "3"] and len(predictions["labels"]) == 20
    sources = {json.loads(i.dataset.source)["tags"]["loader"] for i in run.inputs.dataset_inputs}
    assert sources == {"user_loader:more"} and {i.dataset.source_type for i in run.inputs.dataset_inputs} == {"code"}


# --- one-line errors for malformed inputs --------------------------------------------------------------


def _broken(tmp_path, case: str):
    """(path, data) of a malformed input."""
    parts = _cifar100_pickles()
    if case == "cifar100-no-test":
        train = pickle.dumps(parts["train"], protocol=3)
        return _tar(tmp_path / "c.tar.gz", {"cifar-100-python/train": train}), "cifar100"
    if case == "cifar100-rows":
        parts["train"][b"data"] = parts["train"][b"data"][:, :100]
        return _cifar100_archive(tmp_path / "c.tar.gz", parts), "cifar100"
    if case == "cifar100-pickle":
        hostile = b"cos\nsystem\n(S'touch pwned'\ntR."
        members = {"cifar-100-python/train": hostile, "cifar-100-python/test": b"x"}
        return _tar(tmp_path / "c.tar.gz", members), "cifar100"
    folder = _idx_folder(tmp_path / "fashion", _mnist_arrays())
    if case == "idx-header":
        (folder / IDX["y_test"]).write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)))
    elif case == "idx-truncated":
        (folder / IDX["x_train"]).write_bytes(_idx(_mnist_arrays()["x_train"])[:-40])
    elif case == "idx-short":
        (folder / IDX["x_train"]).write_bytes(gzip.compress(gzip.decompress(_idx(_mnist_arrays()["x_train"]))[:-28]))
    elif case == "idx-missing":
        (folder / IDX["x_test"]).unlink()
    return folder, "fashion_mnist"


BROKEN = {
    "cifar100-no-test": r"c\.tar\.gz is incomplete: it lacks cifar-100-python/test; accepted layouts",
    "cifar100-rows": r"c\.tar\.gz:cifar-100-python/train holds uint8 \(200, 100\) data, expected uint8 \(N, 3072\)",
    "cifar100-pickle": r"refusing to unpickle os\.system in c\.tar\.gz:cifar-100-python/train",
    "idx-header": r"t10k-labels-idx1-ubyte\.gz is not an idx file of 1-dimensional unsigned bytes",
    "idx-truncated": r"cannot read \S*train-images-idx3-ubyte\.gz \(EOFError: .*\): not a complete gzip file",
    "idx-short": r"images-idx3-ubyte\.gz holds 15652 values after its header, \(20, 28, 28\) needs 15680: truncated",
    "idx-missing": r"fashion lacks t10k-images-idx3-ubyte\.gz; accepted layouts for data = \"fashion_mnist\"",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_malformed_inputs_are_one_line_errors_naming_the_file(tmp_path, case):
    path, data = _broken(tmp_path, case)
    with pytest.raises(DataError, match=BROKEN[case]) as error:
        load_data(path, data)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("data", "expected"), [
    ("user_loader:floats", r"x_train is float64 \(4, 8, 8\); a loader returns uint8 images"),
    ("user_loader:absent", r"module user_loader has no absent"),
    ("no_such_module_here:load", r"cannot import no_such_module_here .*importable"),
])
def test_a_bad_loader_is_a_one_line_error(loader_module, data, expected):
    with pytest.raises(DataError, match=expected) as error:
        load_data(None, data)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["cifar1000", "my loader", 3])
def test_an_unknown_data_name_is_refused_with_the_allowed_ones(value):
    allowed = r"study\.toml: \[base\].*data.*cifar100.*fashion_mnist.*package\.module:function"
    with pytest.raises(StudyError, match=allowed):
        check_field("data", value, "study.toml: [base]")
