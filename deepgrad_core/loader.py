"""``DeviceLoader``: batches of an ``ImageSplit`` made on the training device.

Shuffling, augmentation and normalization happen there, per batch, with no host synchronisation:
a vanishing-gradient study runs many small models, and a DataLoader with worker processes would be
the bottleneck.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from deepgrad_core.data import ImageSplit
from deepgrad_core.spec import batches_per_epoch

__all__ = ["DeviceLoader", "batches_per_epoch", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch)``, as a Python int (what ``manual_seed`` takes)."""
    # int() first: NumPy 1.x refuses ``np.uint64 >> int`` (no common type for uint64 and int64).
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]) >> 1


class DeviceLoader:
    """Batches of a split kept on the training device; shuffling and augmentation happen there too.

    The uint8 images move to ``device`` once. Each batch is gathered, augmented (train only: random
    crop with 4-pixel zero padding and horizontal flip, vectorised over the batch), converted to
    float and normalized. Order and augmentation depend on ``(seed, epoch)`` only, so a run resumed
    at epoch k sees exactly the batches of an uninterrupted run. Nothing here syncs with the host.
    """

    def __init__(self, split: ImageSplit, batch_size: int, *, device: torch.device | str, train: bool,
                 augment: bool = True, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.batch_size, self.train, self.augment, self.seed = batch_size, train, augment, seed
        std = torch.tensor(split.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean = torch.tensor(split.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std  # (x / 255 - mean) / std

    def __len__(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, train=self.train)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images float32 [B, C, H, W], labels int64 [B])`` on the device for one epoch."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(self.seed, epoch))
        n, bs = len(self.split), self.batch_size
        order = torch.randperm(n, generator=gen, device=self.device) if self.train else None
        for b in range(len(self)):
            idx = slice(b * bs, (b + 1) * bs) if order is None else order[b * bs:(b + 1) * bs]
            images, labels = self.split.images[idx], self.split.labels[idx]
            if self.train and self.augment:
                images = self._crop_flip(images, gen)
            yield images.float().mul_(self._scale).add_(self._shift), labels

    @staticmethod
    def _crop_flip(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
        """Random crop of the zero-padded batch and random flip, as one gather with per-image offsets."""
        b, c, h, w = images.shape
        dev = images.device
        padded = F.pad(images, (pad, pad, pad, pad))  # zero = black, as torchvision's RandomCrop(padding=4)
        dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=dev)
        dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=dev)
        flip = torch.rand((b, 1), generator=gen, device=dev) < 0.5
        rows = dy + torch.arange(h, device=dev)
        cols = dx + torch.arange(w, device=dev)
        cols = torch.where(flip, cols.flip(1), cols)
        batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
        chans = torch.arange(c, device=dev).view(1, c, 1, 1)
        return padded[batch, chans, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
