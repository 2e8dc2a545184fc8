"""deepgrad_core.data on real CIFAR-10 JPEGs, idx files in Fashion-MNIST's layouts and synthetic data."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepgrad_core import data
from deepgrad_core.data import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    DataError,
    ImageSplit,
    default_data_root,
    load_split,
)
from deepgrad_core.loader import DeviceLoader
from deepgrad_core.spec import DataSpec

CIFAR = DataSpec(name="cifar10")
FASHION = DataSpec(name="fashion_mnist")
SYNTH = DataSpec(name="synthetic", subset=20, test_subset=5, image_size=16)  # 200 train, 50 test
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small tensors: on a busy 2-core machine two intra-op threads make each op ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cifar10_copy(cifar10_root: Path, tmp_path: Path) -> Path:
    """A private data root (no cache yet) that a test may change."""
    shutil.copytree(cifar10_root / "cifar10", tmp_path / "cifar10")
    return tmp_path


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file the JPEG decoder opens from now on."""
    calls: list[Path] = []
    real = data._decode_image

    def counting(path: Path) -> np.ndarray:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data, "_decode_image", counting)
    return calls


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte idx file (gzip-compressed when the name ends in .gz)."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_fashion_raw(root: Path, n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Path]:
    """Small train idx files in torchvision's ``FashionMNIST/raw`` layout (one gzipped, one plain)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    raw = root / "FashionMNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte.gz", images)
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    return images, labels, raw


# ------------------------------------------------------------------------------------------ CIFAR-10


def test_load_split_cifar10_imagefolder(cifar10_root: Path) -> None:
    train = load_split(CIFAR, "train", root=cifar10_root)
    assert train.images.shape == (1000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and torch.bincount(train.labels).tolist() == [100] * 10
    assert train.classes == CIFAR10_CLASSES and len(train) == 1000
    files = sorted((cifar10_root / "cifar10" / "train").glob("*/*.jpg"))  # class folder, then name
    for i in (0, 345, 999):
        expected = np.array(Image.open(files[i]).convert("RGB")).transpose(2, 0, 1)
        assert torch.equal(train.images[i], torch.from_numpy(expected))
        assert train.classes[train.labels[i]] == files[i].parent.name
    test = load_split(CIFAR, "test", root=cifar10_root)
    assert len(test) == 200 and (test.mean, test.std) == (train.mean, train.std)


def test_load_split_cifar10_cache_hit(cifar10_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cifar10_copy / "cache"
    first = load_split(CIFAR, "test", root=cifar10_copy, cache_dir=cache)
    assert len(list(cache.glob("cifar10-test-*.npz"))) == 1 and not (cifar10_copy / ".cache").exists()
    calls = count_decodes(monkeypatch)
    second = load_split(CIFAR, "test", root=cifar10_copy, cache_dir=cache)
    assert calls == []
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes


def test_load_split_cifar10_subset_decodes_only_its_images(cifar10_copy: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A job with data.subset=150 decoded all 50,000 training images (34 s) and wrote a 177 MB cache into the
    data root: a subset decodes its own images only, the same ones a whole decode would have picked."""
    cache = cifar10_copy / "cache"
    whole = load_split(CIFAR, "train", root=cifar10_copy, cache_dir=cache)
    calls = count_decodes(monkeypatch)
    subset = load_split(CIFAR.model_copy(update={"subset": 7}), "train", root=cifar10_copy, cache_dir=cache / "x",
                        seed=3)
    assert len(calls) == 70 and len(subset) == 70 and not (cache / "x").exists()
    keep = data.select_per_class(whole.labels.numpy(), 7, seed=3, salt="train")
    assert torch.equal(subset.images, whole.images[keep]) and torch.equal(subset.labels, whole.labels[keep])


def test_load_split_cache_is_bounded(cifar10_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cifar10_copy / "cache"
    (cache).mkdir()
    old = cache / "cifar10-train-0123456789ab.npz"
    old.write_bytes(b"x" * 600_000)
    os.utime(old, (1, 1))  # the least recently used
    monkeypatch.setenv("DEEPGRAD_CACHE_MAX_GIB", str(700_000 / 2**30))
    load_split(CIFAR, "test", root=cifar10_copy, cache_dir=cache)  # ~600 KB more: over the bound
    assert not old.exists() and len(list(cache.glob("cifar10-test-*.npz"))) == 1


def test_load_split_cifar10_cache_invalidated_when_files_change(cifar10_copy: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cache = cifar10_copy / "cifar10" / "test", cifar10_copy / "cache"
    load_split(CIFAR, "test", root=cifar10_copy, cache_dir=cache)
    calls = count_decodes(monkeypatch)
    shutil.copy(sorted((folder / "cat").iterdir())[0], folder / "cat" / "zz-extra.jpg")  # one file more
    grown = load_split(CIFAR, "test", root=cifar10_copy, cache_dir=cache)
    assert len(grown) == 201 and len(calls) == 201
    calls.clear()
    victim, ship = sorted((folder / "dog").iterdir())[0], sorted((folder / "ship").iterdir())[0]
    shutil.copy(ship, victim)  # same count, newer file
    later = time.time_ns() + 10**9  # newer than anything, even on a file system with coarse mtimes
    os.utime(victim, ns=(later, later))
    changed = load_split(CIFAR, "test", root=cifar10_copy, cache_dir=cache)
    assert len(calls) == 201
    files = sorted(folder.glob("*/*.jpg"))
    assert torch.equal(changed.images[files.index(victim)], changed.images[files.index(ship)])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_load_split_cifar10_corrupt_jpeg_raises(cifar10_copy: Path, damage: str) -> None:
    victim = sorted((cifar10_copy / "cifar10" / "test" / "frog").iterdir())[3]
    raw = victim.read_bytes()
    victim.write_bytes(b"not a jpeg" * 20 if damage == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(DataError, match=re.escape(str(victim))):
        load_split(CIFAR, "test", root=cifar10_copy)


def test_load_split_cifar10_missing_root_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_split(CIFAR, "train", root=missing)
    message = str(err.value)
    assert str(missing / "cifar10" / "train") in message and str(missing / "cifar-10-batches-py") in message
    assert "cifar10_jpeg.py imagefolder" in message


def test_load_split_cifar10_broken_torchvision_layout_raises(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_split(CIFAR, "train", root=tmp_path)


def test_load_split_subset_per_class(cifar10_root: Path) -> None:
    full = load_split(CIFAR, "train", root=cifar10_root)
    position = {img.tobytes(): i for i, img in enumerate(full.images.numpy())}
    spec = DataSpec(name="cifar10", subset=7, test_subset=3)
    part = load_split(spec, "train", root=cifar10_root, seed=0)
    assert torch.bincount(part.labels).tolist() == [7] * 10
    picked = np.array([position[img.tobytes()] for img in part.images.numpy()])
    assert (np.diff(picked) > 0).all() and torch.equal(full.labels[picked], part.labels)
    first_n = np.concatenate([np.arange(c * 100, c * 100 + 7) for c in range(10)])
    assert not np.array_equal(picked, first_n)
    assert torch.equal(load_split(spec, "train", root=cifar10_root, seed=0).images, part.images)
    assert not torch.equal(load_split(spec, "train", root=cifar10_root, seed=1).images, part.images)
    assert len(load_split(spec, "test", root=cifar10_root)) == 30
    everything = load_split(DataSpec(name="cifar10", subset=500), "train", root=cifar10_root)
    assert torch.equal(everything.images, full.images)  # more than available: all of them


@pytest.mark.parametrize(("name", "channels"), [("cifar10", 1), ("fashion_mnist", 3)])
def test_load_split_channel_mismatch_raises(tmp_path: Path, name: str, channels: int) -> None:
    with pytest.raises(ValueError, match="in_channels"):
        load_split(DataSpec(name=name), "train", root=tmp_path, in_channels=channels)


def test_default_data_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEEPGRAD_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("DEEPGRAD_DATA_ROOT")
    assert default_data_root() == Path.home() / ".deepgrad" / "data"


# ------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_load_split_fashion_mnist_debian(tmp_path: Path) -> None:
    split = load_split(FASHION, "test", root=tmp_path, in_channels=1)
    assert split.images.shape == (10000, 1, 32, 32) and split.images.dtype == torch.uint8
    assert torch.bincount(split.labels).tolist() == [1000] * 10 and split.classes == FASHION_MNIST_CLASSES
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert split.images[:, 0, border].max() == 0 and split.images[:, 0, 2:30, 2:30].max() > 0
    mean = split.images.double().mean().item() / 255
    assert abs(mean - split.mean[0]) < 0.01  # the padded statistics fit the test split too


def test_load_split_fashion_mnist_torchvision_raw(tmp_path: Path) -> None:
    images, labels, _ = write_fashion_raw(tmp_path)
    split = load_split(FASHION, "train", root=tmp_path, in_channels=1)
    assert split.images.shape == (30, 1, 32, 32)
    assert torch.equal(split.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
    assert split.images.sum() == int(images.sum(dtype=np.int64))  # the padding is zeros
    assert torch.equal(split.labels, torch.from_numpy(labels.astype(np.int64)))
    part = load_split(DataSpec(name="fashion_mnist", subset=2), "train", root=tmp_path, in_channels=1)
    assert torch.bincount(part.labels).tolist() == [2] * 10


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_load_split_fashion_mnist_bad_idx_raises(tmp_path: Path, damage: str) -> None:
    _, labels, raw = write_fashion_raw(tmp_path)
    victim = raw / "train-labels-idx1-ubyte"
    content = victim.read_bytes()
    victim.write_bytes(b"\x00\x00\x08\x03" + content[4:] if damage == "magic" else content[:-5])
    with pytest.raises(DataError, match=re.escape(str(victim))):
        load_split(FASHION, "train", root=tmp_path, in_channels=1)


def test_load_split_fashion_mnist_missing_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIRS", (tmp_path / "system",))
    with pytest.raises(DataError) as err:
        load_split(FASHION, "train", root=tmp_path, in_channels=1)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(tmp_path / "system") in message
    assert "apt-get install dataset-fashion-mnist" in message


# ----------------------------------------------------------------------------------------- synthetic


def test_load_split_synthetic_deterministic() -> None:
    train = load_split(SYNTH, "train", seed=1)
    assert train.images.shape == (200, 3, 16, 16) and torch.bincount(train.labels).tolist() == [20] * 10
    assert torch.equal(load_split(SYNTH, "train", seed=1).images, train.images)
    assert not torch.equal(load_split(SYNTH, "train", seed=2).images, train.images)
    test = load_split(SYNTH, "test", seed=1)
    assert test.images.shape == (50, 3, 16, 16) and (test.mean, test.std) == (train.mean, train.std)
    same = (test.images[:, None] == train.images[None]).flatten(2).all(dim=2)
    assert not same.any()  # no test image is a train image
    gray = load_split(DataSpec(name="synthetic"), "test", in_channels=1)
    assert gray.images.shape == (200, 1, 32, 32)


def test_load_split_synthetic_learnable() -> None:
    torch.manual_seed(0)
    spec = DataSpec(name="synthetic", subset=30, test_subset=10, image_size=16)
    train, test = load_split(spec, "train"), load_split(spec, "test")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = DeviceLoader(train, 30, device="cpu", train=True)
    for epoch in range(6):
        for x, y in loader.epoch(epoch):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    with torch.no_grad():
        x, y = next(DeviceLoader(test, 100, device="cpu", train=False).epoch(0))
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


# ------------------------------------------------------------------------------------------ ImageSplit


def test_image_split_to_and_validation() -> None:
    split = load_split(SYNTH, "test")
    moved = split.to("cpu")
    assert len(moved) == 50 and torch.equal(moved.images, split.images) and moved.classes == split.classes
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit(split.images.float(), split.labels, split.classes, split.mean, split.std)
