"""The first conv layer's filters as images: what the network learned to look for in raw pixels."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn


def first_layer_filters(model: nn.Module) -> np.ndarray:
    """The first main-path conv layer's weights (the stem: it sees the raw pixels, never a 1x1 reducer) as
    float32 images ``[N, kh, kw, C]`` in [0, 1].

    ``C`` is 3 for RGB input and 1 for grayscale; any other channel count is averaged down to
    one channel. Each filter is min-max scaled on its own (a constant filter becomes 0.5), so
    the images show each filter's pattern, not its magnitude: ready for ``plt.imshow``.
    """
    from torch import nn  # here, not at the top: filter_grid (plots, the server) must not import torch

    from deepgrad_core.models.tracked import tracked_layers

    convs = [la for la in tracked_layers(model, ("conv",)) if la.role in ("stem", "main")] or \
        tracked_layers(model, ("conv",))
    if not convs:
        raise ValueError(f"{type(model).__name__} has no trainable conv layer, so it has no first-layer "
                         "filters to show")
    module = convs[0].module
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"first conv layer {convs[0].path!r} is a {type(module).__name__}; "
                         "filters can be drawn for nn.Conv2d only")
    weights = module.weight.detach().float().cpu().numpy()  # [N, C, kh, kw]
    if weights.shape[1] not in (1, 3):
        weights = weights.mean(axis=1, keepdims=True)
    images = weights.transpose(0, 2, 3, 1).astype(np.float32)  # [N, kh, kw, C]
    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = images.max(axis=(1, 2, 3), keepdims=True) - low
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (images - low) / np.where(span > 0, span, 1.0), 0.5)
    return scaled.astype(np.float32)


def filter_grid(filters: np.ndarray, *, pad: int = 1, ncols: int | None = None,
                background: float = 1.0) -> np.ndarray:
    """Tile ``[N, kh, kw, C]`` filters into one ``[H, W, C]`` image, ``pad`` pixels around each.

    ``ncols`` defaults to ``ceil(sqrt(N))`` (a square-ish grid); the grid has
    ``ceil(N / ncols)`` rows, so ``H = rows * (kh + pad) + pad`` and ``W = ncols * (kw + pad) + pad``.
    Empty cells and padding are ``background`` (1.0: white, 0.0: black).
    """
    filters = np.asarray(filters, dtype=np.float32)
    if filters.ndim != 4 or len(filters) == 0:
        raise ValueError(f"filters must be a non-empty [N, kh, kw, C] array, got shape {filters.shape}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, kh, kw, channels = filters.shape
    ncols = ncols if ncols is not None else math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (kh + pad) + pad, ncols * (kw + pad) + pad, channels), background, np.float32)
    for i, image in enumerate(filters):
        top = pad + (i // ncols) * (kh + pad)
        left = pad + (i % ncols) * (kw + pad)
        grid[top:top + kh, left:left + kw] = image
    return grid
