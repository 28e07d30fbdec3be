"""Image-folder trees (ROOT/train/<class>/*.png, ROOT/test/<class>/*.png) of any size and class count, and resizing.

Grayscale images stay one channel; a tree with any colour image is read as RGB throughout (a grey
image then repeats its one channel). Without `image_size` every image must have the first one's size;
with it, each image is resized to image_size x image_size as it is read (bilinear).
"""

from pathlib import Path

import numpy as np

from ablation.data.dataset import DataError, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TREE = "an image-folder tree ROOT/train/<class>/*.png and ROOT/test/<class>/*.png (.jpg too)"
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes with one colour channel


def load_image_folder(root: Path, image_size: int | None = None) -> Dataset:
    """Read ROOT/train/<class>/* and ROOT/test/<class>/* images; labels follow the sorted class folder names."""
    # CIFAR-10's label order is alphabetical, so sorted folder names reproduce its official labels.
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"{root} is not {TREE}: it lacks train/ or test/")
    class_names = tuple(sorted(d.name for d in (root / "train").iterdir() if d.is_dir()))
    if not class_names:
        raise DataError(f"{root / 'train'} has no class subfolders; expected {TREE}")
    train, y_train = _read_images(root / "train", class_names, image_size)
    test, y_test = _read_images(root / "test", class_names, image_size)
    if test[0].shape[:2] != train[0].shape[:2]:
        raise DataError(f"{root / 'test'} holds {_size(test[0])} images, train/ {_size(train[0])}: set image_size")
    channels = 3 if any(p.ndim == 3 for p in (*train, *test)) else 1
    return Dataset(_stack(train, channels), y_train, _stack(test, channels), y_test, class_names, f"images:{root.name}")


def _files(split_dir: Path, class_names: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(image file, label) under split_dir/<class>/, or a DataError when a class or the images are missing."""
    unknown = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in class_names)
    if unknown:
        raise DataError(f"{split_dir} has classes {unknown} that train/ lacks; both splits need the same classes")
    files = [(path, label) for label, name in enumerate(class_names) if (split_dir / name).is_dir()
             for path in sorted((split_dir / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{split_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images under <class>/ folders; "
                        f"expected {TREE}")
    # A class without images in one split would train or score on fewer classes without a word.
    lacking = sorted(set(class_names) - {class_names[label] for _, label in files})
    if lacking:
        raise DataError(f"{split_dir} has no images of class(es) {lacking}; every class of train/ needs "
                        f"{'/'.join(IMAGE_SUFFIXES)} images in both train/ and test/")
    return files


def _read_images(split_dir: Path, class_names, image_size: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    """The images under split_dir/<class>/ (H x W grey or H x W x 3 RGB, one size) and their labels."""
    from PIL import Image  # lazily: pillow (a matplotlib dependency) is needed only for this layout

    files, images = _files(split_dir, class_names), []
    for path, _ in files:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if image.mode in GRAY_MODES else "RGB")
                if image_size and image.size != (image_size, image_size):
                    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
                pixels = np.asarray(image)
        except OSError as error:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"cannot read image {path}: {error}") from error
        if images and pixels.shape[:2] != images[0].shape[:2]:
            raise DataError(f"{path} is {_size(pixels)} where {files[0][0]} is {_size(images[0])}: images of one "
                            "tree need one size; set image_size (e.g. image_size = 32) to resize them all")
        images.append(pixels)
    return images, np.array([label for _, label in files], np.int64)


def _size(pixels: np.ndarray) -> str:
    return f"{pixels.shape[1]}x{pixels.shape[0]}"


def _stack(images: list[np.ndarray], channels: int) -> np.ndarray:
    """N x H x W x channels uint8: grey images repeated into RGB where the tree has colour."""
    x = np.empty((len(images), *images[0].shape[:2], channels), np.uint8)
    for i, pixels in enumerate(images):
        x[i] = pixels[..., None] if pixels.ndim == 2 else pixels
    return x


def resize_dataset(dataset: Dataset, image_size: int) -> Dataset:
    """Every image resized to image_size x image_size (bilinear, per channel); the dataset itself when it is already."""
    if dataset.x_train.shape[1:3] == (image_size, image_size):
        return dataset
    from PIL import Image

    def resized(x):
        out = np.empty((len(x), image_size, image_size, x.shape[3]), np.uint8)
        for i in range(len(x)):
            for c in range(x.shape[3]):
                plane = Image.fromarray(x[i, :, :, c])
                out[i, :, :, c] = np.asarray(plane.resize((image_size, image_size), Image.Resampling.BILINEAR))
        return out

    return Dataset(resized(dataset.x_train), dataset.y_train, resized(dataset.x_test), dataset.y_test,
                   dataset.class_names, dataset.source)
