"""When a run has diverged, decided one flushed block of gradient norms at a time."""

from __future__ import annotations

import numpy as np

from deepgrad_core.norms import NormBlock

# A GradScaler skips a step whose scaled gradients overflow and halves its scale, so under fp16
# an overflowed step is routine. A run of them is not: 32 halvings in a row take any usable
# scale (65536 at the start) below 2**-16, where scaling cannot be what overflows, so the
# gradients themselves are non-finite. Shorter runs happen after a scale has grown too far.
MAX_OVERFLOW_RUN = 32


class DivergenceWatch:
    """Watch a run's gradient norms (and its first non-finite loss) for divergence.

    Without a GradScaler any non-finite norm means divergence. With one (``scaled``), a
    non-finite norm is an overflowed step the scaler skipped, and only ``max_overflow_run``
    consecutive ones, counted across blocks, mean divergence. A non-finite loss always does:
    the forward pass itself has blown up. Blocks must come in step order with no step missing
    (what the tracker gives for the kind it records every step).
    """

    def __init__(self, *, scaled: bool, max_overflow_run: int = MAX_OVERFLOW_RUN) -> None:
        self.scaled = scaled
        self.max_overflow_run = max_overflow_run
        self._run_start: int | None = None  # first step of the current run of overflowed steps
        self._run_length = 0

    def check(self, block: NormBlock, first_bad_loss: int | None = None) -> tuple[int, str] | None:
        """``(step at which the run diverged, why)``, or None while it is healthy."""
        found = [] if first_bad_loss is None else [(first_bad_loss, "non-finite loss")]
        bad = ~np.isfinite(block.values).all(axis=1)
        if not self.scaled and bad.any():
            found.append((int(block.steps[bad][0]), "non-finite gradient norms"))
        elif self.scaled:
            for step, overflowed in zip(block.steps.tolist(), bad.tolist(), strict=True):
                if not overflowed:
                    self._run_length = 0
                    continue
                if self._run_length == 0:
                    self._run_start = step
                self._run_length += 1
                if self._run_length >= self.max_overflow_run:
                    found.append((self._run_start, f"{self._run_length} overflowed steps in a row"))
                    break
        return min(found) if found else None
