"""Preparing norm series for drawing (numpy only): hide what a log axis cannot show, smooth, downsample.

Everything here is a pure function of its arguments and raises no warnings: non-finite values are
handled with masks, not with ``np.nanmin`` and friends (whose all-NaN warnings would need the
process-global ``warnings`` filters to silence, which is not thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hidden:
    """How many values a figure leaves out: NaN/inf, and zeros or negatives on a log axis."""

    nonfinite: int = 0
    nonpositive: int = 0

    def __add__(self, other: Hidden) -> Hidden:
        return Hidden(self.nonfinite + other.nonfinite, self.nonpositive + other.nonpositive)

    def note(self) -> str:
        """``"3 NaN/inf and 1 zero values hidden"``, or empty when nothing was hidden."""
        parts = [f"{count} {what}" for count, what in ((self.nonfinite, "NaN/inf"), (self.nonpositive, "zero"))
                 if count]
        if not parts:
            return ""
        return f"{' and '.join(parts)} value{'s' if self.nonfinite + self.nonpositive > 1 else ''} hidden"


def mask_hidden(values: np.ndarray, *, log: bool) -> tuple[np.ndarray, Hidden]:
    """A float64 copy with NaN where a value cannot be drawn (non-finite; on a log axis also <= 0)."""
    out = np.array(values, dtype=np.float64)
    finite = np.isfinite(out)
    hidden = Hidden(nonfinite=int(out.size - finite.sum()))
    if log:
        nonpositive = finite & (out <= 0)
        hidden = Hidden(hidden.nonfinite, int(nonpositive.sum()))
        finite &= ~nonpositive
    out[~finite] = np.nan
    return out, hidden


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average along axis 0 over the non-NaN values in each window (shorter at the ends).

    NaN where a window holds no value at all; ``window`` <= 1 returns ``values`` unchanged.
    """
    if window <= 1 or len(values) == 0:
        return values
    present = ~np.isnan(values)
    zeros = np.zeros((1, *values.shape[1:]))
    sums = np.concatenate([zeros, np.cumsum(np.where(present, values, 0.0), axis=0)])
    counts = np.concatenate([zeros, np.cumsum(present, axis=0)])
    n = len(values)
    start = np.arange(n) - window // 2
    lo, hi = np.clip(start, 0, n), np.clip(start + window, 0, n)
    total, count = sums[hi] - sums[lo], counts[hi] - counts[lo]
    return np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)


def binned_log10(steps: np.ndarray, values: np.ndarray, bins: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``[L, bins]`` mean of log10(value) per layer over equal-width step bins, and the bins' step range.

    Bins are equal in steps, not in samples, so the image's x axis is true even when steps are uneven
    (a resumed run, sampled activation steps). A sample stands for the steps up to the next one: a bin that
    holds no sample takes the value of the sample whose interval covers it (activation norms sampled every
    10th step fill the image rather than one column in ten). A gap over twice the usual interval is a hole,
    left empty; NaN values stay NaN.
    """
    lo, hi = int(steps[0]), int(steps[-1]) + 1
    gaps = np.diff(steps.astype(np.int64))
    interval = int(np.median(gaps)) if len(gaps) else 1
    hi = max(hi, int(steps[-1]) + interval)  # the last sample covers its interval too
    bins = max(1, min(bins, hi - lo))
    index = ((steps.astype(np.int64) - lo) * bins) // (hi - lo)
    logs = np.log10(np.where(np.isnan(values), 1.0, values))
    present = ~np.isnan(values)
    layers = values.shape[1]
    flat = (index[:, None] * layers + np.arange(layers)[None, :]).reshape(-1)
    sums = np.bincount(flat, weights=np.where(present, logs, 0.0).reshape(-1), minlength=bins * layers)
    counts = np.bincount(flat, weights=present.reshape(-1).astype(np.float64), minlength=bins * layers)
    means = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0).reshape(bins, layers)
    empty = np.bincount(index, minlength=bins) == 0
    if empty.any():
        centres = lo + (np.flatnonzero(empty) + 0.5) * (hi - lo) / bins
        owner = np.searchsorted(steps, centres, side="right") - 1  # the last sample at or before the centre
        span = np.minimum(np.r_[gaps, interval], 2 * interval)  # how far each sample reaches
        covered = (owner >= 0) & (centres < steps[np.maximum(owner, 0)] + span[np.maximum(owner, 0)])
        fill = np.where(present[owner], logs[owner], np.nan)
        means[np.flatnonzero(empty)[covered]] = fill[covered]
    return means.T, (float(lo), float(hi))


def default_selected(layers: tuple[str, ...], roles: dict[str, str]) -> list[str]:
    """The original study's view: the 2nd, 5th, 8th and deepest main-path conv layer (those that exist).

    ``roles`` maps layer name -> role (``stem``, ``main``, ``reduce``, ``shortcut``, ``classifier``); a name
    it lacks counts as main path. A 1x1 shortcut or reducer is never "the 8th conv".
    """
    main = [name for name in layers if roles.get(name, "main") in ("stem", "main")] or list(layers)
    picked = [main[i] for i in (1, 4, 7) if i < len(main)] + [main[-1]]
    return list(dict.fromkeys(picked))
