"""Gradient distributions: per layer, a histogram of log10 |gradient| over fixed bins (numpy only, no torch).

Norms say how much gradient a layer gets; the classic figures (Glorot & Bengio 2010) show how its values spread.
Every histogram uses the same bins (``EDGES``), so layers, steps and jobs overlay: ``BINS`` bins of a quarter
decade from 10^``LOW`` to 10^``HIGH``; the first also holds everything smaller (exact zeros included), the last
everything larger and any NaN or infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOW, HIGH, PER_DECADE = -12.0, 2.0, 4
BINS = int((HIGH - LOW) * PER_DECADE)
EDGES = np.linspace(LOW, HIGH, BINS + 1)  # log10 |g| at the bin edges


@dataclass(frozen=True)
class HistBlock:
    """``counts[i, j, b]``: how many weight-gradient elements of ``layers[j]`` fell in bin ``b`` at ``steps[i]``."""

    steps: np.ndarray  # int64 [n]
    layers: tuple[str, ...]
    counts: np.ndarray  # float32 [n, len(layers), BINS]

    def __post_init__(self) -> None:
        if self.counts.shape != (len(self.steps), len(self.layers), BINS):
            raise ValueError(f"counts has shape {self.counts.shape}, expected "
                             f"({len(self.steps)}, {len(self.layers)}, {BINS})")

    def __len__(self) -> int:
        return len(self.steps)


def join(blocks: list[HistBlock]) -> HistBlock | None:
    """Consecutive blocks as one (None when there are none)."""
    blocks = [b for b in blocks if len(b)]
    if not blocks:
        return None
    if len({b.layers for b in blocks}) != 1:
        raise ValueError("histogram blocks of different layers cannot be joined")
    return HistBlock(np.concatenate([b.steps for b in blocks]), blocks[0].layers,
                     np.concatenate([b.counts for b in blocks]))


def density(counts: np.ndarray) -> np.ndarray:
    """Counts as fractions of their total along the last axis (a row of zeros stays zeros)."""
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts, dtype=np.float64), where=total > 0)
