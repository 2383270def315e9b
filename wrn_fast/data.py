"""Datasets from local files, held in memory as uint8, augmented on the device.

Every loader returns a :class:`Split`: ``images`` uint8 [N, C, H, W] and
``labels`` int64 [N] on the CPU. Training moves the whole split to the device
once; batches are then gathered, augmented (random crop with reflect padding,
horizontal flip) and normalised there with batched tensor ops, so the input
pipeline costs a few elementwise kernels per step and never limits a fast model.

Formats (never downloaded: files must be on disk)
  cifar10      DIR/cifar-10-batches-py/{data_batch_1..5, test_batch}   (python pickles)
  cifar100     DIR/cifar-100-python/{train, test}                      (fine labels)
  svhn         DIR/{train_32x32.mat, test_32x32.mat}                   (label 10 means digit 0)
  imagefolder  DIR/train/CLASS/*.png|jpg, DIR/{val|test}/CLASS/...     (resized to --image-size)
  digits       scikit-learn's bundled 8x8 digits, upscaled; no files needed
"""
import math
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "InputError",
    "Split",
    "DatasetInfo",
    "DATASETS",
    "load_dataset",
    "load_cifar10",
    "load_cifar100",
    "load_svhn",
    "load_imagefolder",
    "load_digits",
    "augment_batch",
    "draw_augmentation",
    "apply_augmentation",
    "normalize_batch",
]


class InputError(ValueError):
    """Bad user input (a file, a directory, an argument): the message says what was expected and what was found."""


@dataclass
class Split:
    """One split of a dataset: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"Split.images: expected uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"Split.labels: expected shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DatasetInfo:
    """What a model and the augmentation need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_padding: int  # random-crop reflect padding in pixels (0: no crop)
    flip: bool  # random horizontal flip
    classes: List[str] = field(default_factory=list)


# Per-channel mean / std of the training sets on [0, 1] (the values the WRN
# code bases use), so normalisation does not depend on which files are present.
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder")


# --------------------------------------------------------------------------- helpers
def _listing(directory: str, limit: int = 12) -> str:
    """What is actually in a directory, for error messages."""
    if not os.path.exists(directory):
        return f"{directory!r} does not exist"
    if not os.path.isdir(directory):
        return f"{directory!r} is not a directory"
    names = sorted(os.listdir(directory))
    if not names:
        return f"{directory!r} is empty"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return f"{directory!r} contains: {shown}"


def _require_files(dataset: str, directory: str, names: Sequence[str], where: str) -> List[str]:
    paths = [os.path.join(directory, n) for n in names]
    missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
    if missing:
        found = _listing(directory)
        if not os.path.isdir(directory):  # the expected sub-folder is absent: show what its parent holds
            found += f"; {_listing(os.path.dirname(os.path.abspath(directory)))}"
        raise InputError(
            f"{dataset}: missing file(s) {', '.join(missing)} in {directory!r}. "
            f"Expected {where} (the dataset's standard format; wrn_fast never downloads). "
            f"Found: {found}."
        )
    return paths


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # truncated / not a pickle / wrong protocol
        raise InputError(f"{path}: could not be read as a CIFAR python pickle ({type(e).__name__}: {e}); "
                         "re-extract the dataset archive") from e
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a pickled dict with b'data' and labels, found {type(obj).__name__}")
    return obj


def _cifar_arrays(path: str, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    for key in (b"data", label_key):
        if key not in obj:
            raise InputError(f"{path}: expected keys b'data' and {label_key!r}, found {sorted(obj)}")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: expected b'data' uint8 of shape [N, 3072], found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise InputError(f"{path}: expected {data.shape[0]} labels in {label_key!r}, found shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _check_labels(where: str, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"{where}: expected labels in [0, {num_classes - 1}], "
                         f"found range [{labels.min()}, {labels.max()}]")


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------- loaders
def load_cifar10(data_dir: str) -> Tuple[Split, Split, DatasetInfo]:
    """CIFAR-10 from the python pickles in DATA_DIR/cifar-10-batches-py (or DATA_DIR itself)."""
    root = _find_subdir(data_dir, "cifar-10-batches-py", "data_batch_1")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    paths = _require_files("cifar10", root, names,
                           "cifar-10-batches-py/data_batch_1..5 and test_batch from "
                           "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    parts = [_cifar_arrays(p, b"labels") for p in paths[:5]]
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    test_x, test_y = _cifar_arrays(paths[5], b"labels")
    for path, y in ((root, train_y), (paths[5], test_y)):
        _check_labels(path, y, 10)
    info = DatasetInfo("cifar10", 10, 3, 32, *_CIFAR10_STATS, crop_padding=4, flip=True)
    return _split(train_x, train_y), _split(test_x, test_y), info


def load_cifar100(data_dir: str) -> Tuple[Split, Split, DatasetInfo]:
    """CIFAR-100 (fine labels) from DATA_DIR/cifar-100-python/{train,test} (or DATA_DIR itself)."""
    root = _find_subdir(data_dir, "cifar-100-python", "train")
    paths = _require_files("cifar100", root, ["train", "test"],
                           "cifar-100-python/train and test from "
                           "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
    train_x, train_y = _cifar_arrays(paths[0], b"fine_labels")
    test_x, test_y = _cifar_arrays(paths[1], b"fine_labels")
    for path, y in zip(paths, (train_y, test_y)):
        _check_labels(path, y, 100)
    info = DatasetInfo("cifar100", 100, 3, 32, *_CIFAR100_STATS, crop_padding=4, flip=True)
    return _split(train_x, train_y), _split(test_x, test_y), info


def _load_svhn_mat(path: str) -> Tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise InputError(f"{path}: could not be read as a MATLAB .mat file ({type(e).__name__}: {e})") from e
    if "X" not in mat or "y" not in mat:
        raise InputError(f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise InputError(f"{path}: expected X uint8 [32, 32, 3, N] and y [N, 1], found X {x.dtype} {x.shape}, "
                         f"y {np.asarray(mat['y']).shape}")
    y = np.where(y == 10, 0, y)  # SVHN stores the digit 0 as label 10
    _check_labels(path, y, 10)
    return x.transpose(3, 2, 0, 1), y  # [H, W, C, N] -> [N, C, H, W]


def load_svhn(data_dir: str) -> Tuple[Split, Split, DatasetInfo]:
    """SVHN (cropped digits) from DATA_DIR/{train_32x32.mat, test_32x32.mat}."""
    paths = _require_files("svhn", data_dir, ["train_32x32.mat", "test_32x32.mat"],
                           "train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/")
    train_x, train_y = _load_svhn_mat(paths[0])
    test_x, test_y = _load_svhn_mat(paths[1])
    # The WRN paper trains SVHN without augmentation.
    info = DatasetInfo("svhn", 10, 3, 32, *_SVHN_STATS, crop_padding=0, flip=False)
    return _split(train_x, train_y), _split(test_x, test_y), info


_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _scan_folder(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise InputError(f"imagefolder: expected one sub-directory per class in {root!r}, found none. "
                         f"Found: {_listing(root)}.")
    samples = []
    for idx, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
            for name in sorted(files):
                if name.lower().endswith(_IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, name), idx))
    if not samples:
        raise InputError(f"imagefolder: no image files ({', '.join(_IMAGE_EXTENSIONS)}) under {root!r}")
    return classes, samples


def _load_image(path: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as e:
        raise InputError(f"{path}: could not be decoded as an image ({type(e).__name__}: {e})") from e


def _load_folder(root: str, classes: List[str], size: int, workers: int) -> Split:
    found, samples = _scan_folder(root)
    if found != classes:
        raise InputError(f"imagefolder: class directories of {root!r} ({found}) differ from the training "
                         f"split's ({classes})")
    paths = [p for p, _ in samples]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decoding releases the GIL
        images = list(pool.map(lambda p: _load_image(p, size), paths))
    labels = np.array([y for _, y in samples], dtype=np.int64)
    return _split(np.stack(images), labels)


def load_imagefolder(data_dir: str, image_size: int = 32, workers: int = 2) -> Tuple[Split, Split, DatasetInfo]:
    """DATA_DIR/train/CLASS/* and DATA_DIR/val/CLASS/* (or test/), resized to image_size, RGB.

    Images are decoded once into memory (uint8), so this suits small and
    medium datasets; mean/std are measured on the training split.
    """
    train_root = os.path.join(data_dir, "train")
    test_root = next((os.path.join(data_dir, d) for d in ("val", "test")
                      if os.path.isdir(os.path.join(data_dir, d))), None)
    if not os.path.isdir(train_root) or test_root is None:
        raise InputError(
            f"imagefolder: expected {data_dir!r} to contain train/ and val/ (or test/), each with one "
            f"sub-directory of images per class. Found: {_listing(data_dir)}."
        )
    if image_size < 8:
        raise InputError(f"--image-size: expected at least 8 pixels, got {image_size}")
    classes, _ = _scan_folder(train_root)
    train = _load_folder(train_root, classes, image_size, workers)
    test = _load_folder(test_root, classes, image_size, workers)
    mean, std = _channel_stats(train.images)
    pad = max(1, image_size // 8)  # 4 pixels at 32x32, as for CIFAR
    info = DatasetInfo("imagefolder", len(classes), 3, image_size, mean, std, crop_padding=pad, flip=True,
                       classes=classes)
    return train, test, info


def load_digits(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> Tuple[Split, Split, DatasetInfo]:
    """scikit-learn's bundled handwritten digits (1797 8x8 grey images, 10 classes), upscaled.

    A fixed stratified split (``seed``) so every run sees the same train and
    test images. Pixel values 0..16 become 0..255; upscaling is bilinear.
    No horizontal flip: digits are not mirror-symmetric.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError("dataset 'digits' needs scikit-learn (it ships the images): "
                          "pip install scikit-learn, or pip install 'wrn_fast[train]'") from e

    digits = sk_load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    y = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=y)
    train = Split(x[idx_train].contiguous(), torch.from_numpy(y[idx_train]))
    test = Split(x[idx_test].contiguous(), torch.from_numpy(y[idx_test]))
    mean, std = _channel_stats(train.images)
    info = DatasetInfo("digits", 10, 1, image_size, mean, std, crop_padding=max(1, image_size // 8), flip=False,
                       classes=[str(i) for i in range(10)])
    return train, test, info


def _channel_stats(images: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _find_subdir(data_dir: Optional[str], sub: str, marker: str) -> str:
    # Accept both DATA_DIR (containing the extracted folder) and the folder itself.
    if data_dir is None:
        raise InputError("--data-dir: required for this dataset (the directory holding its files)")
    if os.path.isfile(os.path.join(data_dir, marker)):
        return data_dir
    return os.path.join(data_dir, sub)


def load_dataset(name: str, data_dir: Optional[str] = None, image_size: Optional[int] = None,
                 workers: int = 2) -> Tuple[Split, Split, DatasetInfo]:
    """(train, test, info) for a dataset name in :data:`DATASETS`."""
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0):
        raise InputError(f"--image-size: expected a positive int, got {image_size!r}")
    if name == "digits":
        return load_digits(16 if image_size is None else image_size)
    if name not in DATASETS:
        raise InputError(f"--dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise InputError(f"--data-dir: dataset {name!r} is read from local files; pass --data-dir DIR "
                         "(see `python -m wrn_fast train --help` for the expected layout)")
    if not os.path.isdir(data_dir):
        raise InputError(f"--data-dir: expected a directory, found {_listing(data_dir)}")
    if name == "cifar10":
        out = load_cifar10(data_dir)
    elif name == "cifar100":
        out = load_cifar100(data_dir)
    elif name == "svhn":
        out = load_svhn(data_dir)
    else:
        return load_imagefolder(data_dir, 32 if image_size is None else image_size, workers)
    if image_size not in (None, 32):
        raise InputError(f"--image-size: {name} images are 32x32; got --image-size {image_size}")
    return out


# --------------------------------------------------------------------------- augmentation
def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad index mapping ('reflect' mode: the edge pixel is not repeated)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def draw_augmentation(n: int, generator: torch.Generator, crop_padding: int = 4,
                      flip: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets dy, dx in [0, 2 * crop_padding] and flip flags for n images (CPU tensors).

    Drawn on the CPU from ``generator`` so the same seed gives the same
    augmentation on every device, and a data-parallel rank can draw the whole
    global batch and keep its own slice.
    """
    p = int(crop_padding)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    flips = torch.rand((n,), generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flips


def apply_augmentation(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor,
                       crop_padding: int) -> torch.Tensor:
    """Crop at (dy, dx) from the reflect-padded images, then flip the width where ``flips``: one gather.

    Per image this equals ``F.pad(x, [p] * 4, mode='reflect')[:, dy:dy + H, dx:dx + W]``
    followed by ``flip(-1)`` where drawn; no padded copy is built.
    """
    if images.dim() != 4:
        raise ValueError(f"images: expected [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    p = int(crop_padding)
    if p < 0:
        raise ValueError(f"crop_padding: expected >= 0, got {crop_padding}")
    if p >= min(h, w) and p > 0:
        raise ValueError(f"crop_padding: reflect padding needs crop_padding < image size, got {p} for {h}x{w}")
    if dy.shape != (n,) or dx.shape != (n,) or flips.shape != (n,):
        raise ValueError(f"dy, dx, flips: expected shape ({n},) each, got {tuple(dy.shape)}, {tuple(dx.shape)}, "
                         f"{tuple(flips.shape)}")
    rows = _reflect(dy[:, None] - p + torch.arange(h)[None, :], h)  # [N, H]
    cols_in = torch.arange(w)[None, :].expand(n, w)
    cols_in = torch.where(flips[:, None], (w - 1) - cols_in, cols_in)  # flip after the crop
    cols = _reflect(dx[:, None] - p + cols_in, w)  # [N, W]
    dev = images.device
    rows, cols = rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)
    batch = torch.arange(n, device=dev)[:, None, None]
    # out[b, i, j, :] = images[b, :, rows[b, i], cols[b, j]]
    out = images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(images: torch.Tensor, generator: torch.Generator, crop_padding: int = 4,
                  flip: bool = True) -> torch.Tensor:
    """Random crop (reflect padding ``crop_padding``) and random horizontal flip of a batch.

    ``images``: uint8 (or any dtype) [N, C, H, W] on any device; batched tensor
    ops only (no per-image Python). Randomness from ``generator`` (a CPU
    generator), see :func:`draw_augmentation`.
    """
    if crop_padding == 0 and not flip:
        return images
    dy, dx, flips = draw_augmentation(images.shape[0], generator, crop_padding, flip)
    return apply_augmentation(images, dy, dx, flips, crop_padding)


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    channels_last: bool = False) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 (x / 255 - mean) / std, per channel, on the images' device."""
    x = images.float().div_(255.0)
    x = x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def batch_count(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)
