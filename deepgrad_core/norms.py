"""Blocks of per-layer gradient norms as they leave the device (numpy only, no torch)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

KINDS = ("weight", "activation", "global")


@dataclass(frozen=True)
class NormBlock:
    """``values[i, j]`` is the L2 gradient norm of ``layers[j]`` at global step ``steps[i]``.

    kind: ``weight`` (gradient of each layer's weight, every step), ``activation`` (gradient of
    each layer's output, on sampled steps) or ``global`` (the whole model's gradient norm before
    clipping, one column named ``global``). Non-finite values are kept as they were recorded.
    """

    kind: str
    steps: np.ndarray  # int64 [n]
    layers: tuple[str, ...]
    values: np.ndarray  # float32 [n, len(layers)]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.values.shape != (len(self.steps), len(self.layers)):
            raise ValueError(f"values has shape {self.values.shape}, expected "
                             f"({len(self.steps)}, {len(self.layers)})")

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def nonfinite_steps(self) -> np.ndarray:
        """Steps at which any layer's norm is NaN or infinite."""
        return self.steps[~np.isfinite(self.values).all(axis=1)]


def concat_blocks(blocks: Iterable[NormBlock]) -> NormBlock | None:
    """Join consecutive blocks of one kind into one (None when there are none)."""
    blocks = [b for b in blocks if len(b)]
    if not blocks:
        return None
    kinds = {b.kind for b in blocks}
    layers = {b.layers for b in blocks}
    if len(kinds) != 1 or len(layers) != 1:
        raise ValueError("concat_blocks needs blocks of one kind over the same layers")
    return NormBlock(kind=blocks[0].kind, steps=np.concatenate([b.steps for b in blocks]),
                     layers=blocks[0].layers, values=np.concatenate([b.values for b in blocks]))
