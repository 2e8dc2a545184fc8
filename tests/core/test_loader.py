"""deepgrad_core.loader: batches made on the device, deterministic per (seed, epoch), augmented there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deepgrad_core.data import ImageSplit, load_split
from deepgrad_core.loader import DeviceLoader, epoch_seed
from deepgrad_core.spec import DataSpec

CIFAR = DataSpec(name="cifar10")
SYNTH = DataSpec(name="synthetic", subset=20, test_subset=5, image_size=16)  # 200 train, 50 test


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small tensors: on a busy 2-core machine two intra-op threads make each op ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def to_uint8(x: torch.Tensor, split: ImageSplit) -> torch.Tensor:
    """Undo the loader's normalization."""
    mean = torch.tensor(split.mean).view(1, -1, 1, 1)
    std = torch.tensor(split.std).view(1, -1, 1, 1)
    return (x * std * 255 + mean * 255).round().to(torch.uint8)


def test_device_loader_deterministic_per_seed_and_epoch() -> None:
    split = load_split(SYNTH, "train")
    loader = DeviceLoader(split, 64, device="cpu", train=True, seed=3)
    fresh = DeviceLoader(split, 64, device="cpu", train=True, seed=3)
    list(loader.epoch(0))  # a resumed run starts at epoch 5 without having seen epochs 0-4
    a, b = list(loader.epoch(5)), list(fresh.epoch(5))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    other_epoch = next(fresh.epoch(6))
    other_seed = next(DeviceLoader(split, 64, device="cpu", train=True, seed=4).epoch(5))
    assert not torch.equal(other_epoch[0], a[0][0]) and not torch.equal(other_seed[0], a[0][0])


def test_device_loader_train_drops_last_partial_batch() -> None:
    split = load_split(SYNTH, "train")
    loader = DeviceLoader(split, 64, device="cpu", train=True, augment=False)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 3
    for x, y in batches:
        assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32
        assert y.shape == (64,) and y.dtype == torch.int64
    seen = torch.cat([x for x, _ in batches]).flatten(1)
    assert len(torch.unique(seen, dim=0)) == 192  # a permutation: no image twice
    whole = DeviceLoader(split, 500, device="cpu", train=True)
    assert len(whole) == 1 and [len(y) for _, y in whole.epoch(0)] == [200]  # N <= batch: one batch of all


def test_device_loader_test_sequential_keeps_last_batch() -> None:
    split = load_split(SYNTH, "test")
    loader = DeviceLoader(split, 16, device="cpu", train=False)
    batches = list(loader.epoch(0))
    assert len(loader) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), split.labels)
    assert torch.equal(to_uint8(torch.cat([x for x, _ in batches]), split), split.images)  # no augmentation
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(batches, loader.epoch(9), strict=True))


def test_device_loader_normalizes_to_zero_mean(cifar10_root: Path) -> None:
    split = load_split(CIFAR, "train", root=cifar10_root)
    x = torch.cat([x for x, _ in DeviceLoader(split, 256, device="cpu", train=False).epoch(0)])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.15
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.15


def test_device_loader_augment_crops_and_flips() -> None:
    split = load_split(SYNTH, "train")
    plain = next(DeviceLoader(split, 200, device="cpu", train=True, augment=False, seed=1).epoch(0))
    augmented = next(DeviceLoader(split, 200, device="cpu", train=True, augment=True, seed=1).epoch(0))
    assert torch.equal(plain[1], augmented[1])  # same order: only the pixels differ
    original, result = to_uint8(plain[0], split), to_uint8(augmented[0], split)
    padded = F.pad(original, (4, 4, 4, 4))  # zero padding in pixel space
    matched = torch.zeros(200, dtype=torch.bool)
    identity = torch.zeros(200, dtype=torch.bool)
    flipped_only = torch.ones(200, dtype=torch.bool)
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, :, dy:dy + 16, dx:dx + 16]
            straight = (crop == result).flatten(1).all(1)
            mirrored = (crop.flip(-1) == result).flatten(1).all(1)
            matched |= straight | mirrored
            flipped_only &= ~straight
            if (dy, dx) == (4, 4):
                identity = straight
    assert matched.all()  # every image is a padded crop, maybe flipped, of its original
    assert identity.float().mean() < 0.2 and flipped_only.float().mean() > 0.3


def test_epoch_seed_is_a_python_int_in_range() -> None:
    """``manual_seed`` needs a Python int; NumPy 1.x cannot even shift its uint64 by an int."""
    seeds = {epoch_seed(seed, epoch) for seed in (0, 7, 2**31 - 1) for epoch in range(20)}
    assert all(type(s) is int and 0 <= s < 2**63 for s in seeds)
    assert len(seeds) == 60 and epoch_seed(3, 5) == epoch_seed(3, 5)
