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


class NormBuffer:
    """Blocks of one kind joined as they arrive, in arrays that grow by doubling: appending costs amortized
    O(rows appended), and ``block()`` is a view of everything so far, not a copy."""

    def __init__(self) -> None:
        self._steps: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._kind: str | None = None
        self._layers: tuple[str, ...] = ()
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, block: NormBlock) -> None:
        if not len(block):
            return
        if self._steps is None:
            self._kind, self._layers = block.kind, block.layers
            self._steps = np.empty(max(len(block), 1024), dtype=block.steps.dtype)
            self._values = np.empty((len(self._steps), len(block.layers)), dtype=block.values.dtype)
        elif (block.kind, block.layers) != (self._kind, self._layers):
            raise ValueError("a NormBuffer holds blocks of one kind over the same layers")
        end = self._n + len(block)
        if end > len(self._steps):
            capacity = max(2 * len(self._steps), end)
            self._steps = np.concatenate([self._steps[:self._n], np.empty(capacity - self._n, self._steps.dtype)])
            self._values = np.concatenate([self._values[:self._n],
                                           np.empty((capacity - self._n, len(self._layers)), self._values.dtype)])
        self._steps[self._n:end] = block.steps
        self._values[self._n:end] = block.values
        self._n = end

    def block(self) -> NormBlock | None:
        """Everything appended so far as one block (None when nothing was)."""
        if not self._n:
            return None
        return NormBlock(kind=self._kind, steps=self._steps[:self._n], layers=self._layers,
                         values=self._values[:self._n])


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
