"""Dataset loaders on small files in the real formats, and the device-side augmentation."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wrn_fast.data import (
    InputError,
    apply_augmentation,
    augment_batch,
    draw_augmentation,
    load_dataset,
    load_digits,
    normalize_batch,
)

from _checks import needs_sklearn


# --------------------------------------------------------------------------- fake files
def _write_cifar10(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()  # CIFAR-10 stores a python list
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * n_per_batch}, f)
        batches[name] = (data, labels)
    return batches


def test_cifar10_loader_reads_the_python_pickles(tmp_path):
    batches = _write_cifar10(str(tmp_path))
    train, test, info = load_dataset("cifar10", str(tmp_path))
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (4, 3, 32, 32)
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    data, labels = batches["data_batch_2"]
    img = train.images[4 + 1]
    assert torch.equal(img[1, 3], torch.from_numpy(data[1, 1024 + 3 * 32:1024 + 4 * 32]))
    assert train.labels[4:8].tolist() == labels
    assert test.labels.tolist() == batches["test_batch"][1]
    assert (info.num_classes, info.in_channels, info.crop_padding, info.flip) == (10, 3, 4, True)
    # the extracted folder itself is accepted too
    train2, _, _ = load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"))
    assert torch.equal(train2.images, train.images)


def test_cifar100_loader_uses_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [99, 0, 42, 7, 8, 9][:n], b"coarse_labels": [1] * n}, f)
    train, test, info = load_dataset("cifar100", str(tmp_path))
    assert train.labels.tolist() == [99, 0, 42, 7, 8, 9]
    assert test.labels.tolist() == [99, 0, 42]
    assert info.num_classes == 100


def test_svhn_loader_reads_mat_and_maps_label_10_to_0(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy_io.savemat(str(tmp_path / "train_32x32.mat"), {"X": x, "y": y})
    scipy_io.savemat(str(tmp_path / "test_32x32.mat"), {"X": x[..., :2], "y": y[:2]})
    train, test, info = load_dataset("svhn", str(tmp_path))
    assert train.labels.tolist() == [0, 1, 2, 0, 9]
    assert train.images.shape == (5, 3, 32, 32)
    # X[h, w, c, n] -> images[n, c, h, w]
    assert train.images[3, 2, 5, 7] == x[5, 7, 2, 3]
    assert (info.crop_padding, info.flip) == (0, False)  # the paper trains SVHN without augmentation
    assert len(test) == 2


def test_imagefolder_loader_resizes_and_sorts_classes(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, n in (("train", 3), ("val", 1)):
        for cls, color in colors.items():
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 12), color).save(d / f"{i}.png")
    train, test, info = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert train.images.shape == (6, 3, 8, 8)
    assert info.classes == ["cat", "dog"] and info.num_classes == 2
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images[0, 0].min() == 255 and train.images[0, 2].max() == 0  # red cat
    assert train.images[5, 2].min() == 255  # blue dog
    assert test.labels.tolist() == [0, 1]


@needs_sklearn
def test_digits_split_is_fixed_and_upscaled():
    train, test, info = load_digits(image_size=16)
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 16, 16) and info.in_channels == 1
    assert info.flip is False  # digits are not mirror symmetric
    train2, test2, _ = load_digits(image_size=16)
    assert torch.equal(train.labels, train2.labels) and torch.equal(test.images, test2.images)
    assert sorted(set(test.labels.tolist())) == list(range(10))


# --------------------------------------------------------------------------- errors
def test_missing_files_say_where_and_what_was_found(tmp_path):
    (tmp_path / "something_else.txt").write_text("x")
    with pytest.raises(InputError) as e:
        load_dataset("cifar10", str(tmp_path))
    msg = str(e.value)
    assert "data_batch_1" in msg and "never downloads" in msg
    with pytest.raises(InputError, match="something_else.txt"):
        load_dataset("svhn", str(tmp_path))
    with pytest.raises(InputError, match="--data-dir"):
        load_dataset("cifar100", None)
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="train/ and val/"):
        load_dataset("imagefolder", str(tmp_path))


def test_corrupt_pickle_names_the_file(tmp_path):
    _write_cifar10(str(tmp_path))
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated download
    with pytest.raises(InputError, match="data_batch_3.*could not be read"):
        load_dataset("cifar10", str(tmp_path))


def test_wrong_shape_in_pickle_is_reported(tmp_path):
    _write_cifar10(str(tmp_path))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(InputError, match=r"test_batch.*\[N, 3072\].*\(2, 100\)"):
        load_dataset("cifar10", str(tmp_path))


def test_corrupt_mat_file(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all")
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    with pytest.raises(InputError, match="train_32x32.mat"):
        load_dataset("svhn", str(tmp_path))


# --------------------------------------------------------------------------- augmentation
def _manual(images, dy, dx, flips, p):
    out = []
    for img, y0, x0, f in zip(images, dy.tolist(), dx.tolist(), flips.tolist()):
        padded = F.pad(img[None].float(), [p] * 4, mode="reflect")[0]
        crop = padded[:, y0:y0 + img.shape[1], x0:x0 + img.shape[2]]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out).to(images.dtype)


@pytest.mark.parametrize("shape,p", [((16, 3, 32, 32), 4), ((9, 1, 8, 8), 2), ((5, 2, 6, 10), 3)])
def test_augmentation_matches_pad_crop_flip(shape, p):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    gen = torch.Generator().manual_seed(11)
    out = augment_batch(images, gen, crop_padding=p, flip=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    dy, dx, flips = draw_augmentation(shape[0], torch.Generator().manual_seed(11), p, True)
    assert torch.equal(out, _manual(images, dy, dx, flips, p))


def test_augmentation_really_changes_images_and_covers_all_offsets():
    images = torch.arange(64 * 3 * 8 * 8, dtype=torch.int64).reshape(64, 3, 8, 8).to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    dy, dx, flips = draw_augmentation(400, g, 2, True)
    assert set(dy.tolist()) == set(range(5)) and set(dx.tolist()) == set(range(5))
    assert 0.35 < flips.float().mean() < 0.65
    # identity parameters (centre crop, no flip) give the images back; a flip mirrors them
    n = images.shape[0]
    centre = torch.full((n,), 2)
    same = apply_augmentation(images, centre, centre, torch.zeros(n, dtype=torch.bool), 2)
    assert torch.equal(same, images)
    mirrored = apply_augmentation(images, centre, centre, torch.ones(n, dtype=torch.bool), 2)
    assert torch.equal(mirrored, images.flip(-1))
    shifted = apply_augmentation(images, centre, centre + 1, torch.zeros(n, dtype=torch.bool), 2)
    assert torch.equal(shifted[..., :-1], images[..., 1:])  # crop one pixel to the right
    out = augment_batch(images, torch.Generator().manual_seed(1), 2, True)
    assert not torch.equal(out, images)


def test_augmentation_is_deterministic_under_a_generator():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    a = augment_batch(images, torch.Generator().manual_seed(5), 4, True)
    b = augment_batch(images, torch.Generator().manual_seed(5), 4, True)
    c = augment_batch(images, torch.Generator().manual_seed(6), 4, True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_flip_and_no_crop():
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    assert augment_batch(images, torch.Generator(), crop_padding=0, flip=False) is images
    dy, dx, flips = draw_augmentation(100, torch.Generator().manual_seed(0), 2, flip=False)
    assert not flips.any()


def test_augmentation_rejects_bad_padding():
    with pytest.raises(ValueError, match="crop_padding"):
        augment_batch(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.Generator(), crop_padding=4)


def test_normalize_batch():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # [1, 2, 1, 2]
    mean, std = torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.1])
    out = normalize_batch(images, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]))
    assert normalize_batch(images, mean, std, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    import sys

    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):  # imported by earlier tests
        monkeypatch.setitem(sys.modules, name, None)  # `import ...` raises ImportError
    with pytest.raises(ImportError, match="dataset 'digits' needs scikit-learn"):
        load_digits(image_size=8)
