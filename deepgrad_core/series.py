"""Norm series as tables of steps x layers (numpy only): min/max downsampling that streams, CSV rows.

A series can be far larger than what is read from it: 40 epochs at batch 1 on CIFAR-10 are 2,000,000
steps x 17 layers (136 MB of float32). ``MinMax`` downsamples it block by block as the blocks come out
of a store, holding only one partial bucket and the answer, so a read costs memory bounded by what it
returns, not by the series.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

NonFinite = Literal["show", "hide"]
CSV_FLOAT = "%.9g"  # round-trips float32 exactly


def bucket_size(n: int, max_points: int) -> int:
    """Rows per bucket so that ``n`` rows give at most ``max_points // 2`` buckets (two rows each)."""
    buckets = max(max_points // 2, 1)
    return max(-(-n // buckets), 1)


class MinMax:
    """Downsample a ``[n x L]`` table, fed in consecutive blocks, to at most ``max_points`` rows.

    Rows are grouped in buckets of ``bucket_size(n, max_points)`` consecutive rows; each bucket gives two
    rows, at its first and its last step, holding per column the bucket's minimum and maximum, the one
    that comes first on the first row (a one-row bucket gives one row). ``nonfinite="show"``: a bucket
    holding a NaN or infinity shows the first one on its second row (divergence must not be smoothed
    away); ``"hide"``: non-finite values are ignored, and a column with none finite in a bucket is NaN.
    ``n`` must be the total row count (a store counts before it reads); with ``n <= max_points`` every
    row is kept as it is.
    """

    def __init__(self, n: int, max_points: int, *, nonfinite: NonFinite = "show") -> None:
        if nonfinite not in ("show", "hide"):
            raise ValueError(f"nonfinite must be 'show' or 'hide', got {nonfinite!r}")
        self.n, self.nonfinite = n, nonfinite
        self.size = 1 if n <= max_points else bucket_size(n, max_points)
        self.seen = 0
        self._open: dict[str, np.ndarray] | None = None  # the bucket still being filled
        self._steps: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []

    def add(self, steps: np.ndarray, values: np.ndarray) -> None:
        """The next rows of the table (any number, in order)."""
        n = len(steps)
        if not n:
            return
        if self.size == 1:
            self._steps.append(np.asarray(steps, np.int64))
            self._rows.append(np.asarray(values, np.float64))
            self.seen += n
            return
        steps = np.asarray(steps, np.int64)
        values = np.asarray(values)
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        # The rows split at bucket boundaries: a head that ends the current bucket, whole buckets (reduced
        # at once as a [buckets, size, L] array), and a tail that starts the next one.
        size, start = self.size, self.seen
        head = min(n, (start // size + 1) * size - start)
        whole = (n - head) // size * size
        parts = [_reduce(values[None, :head], steps[None, :head], start, start // size)]
        if whole:
            parts.append(_reduce(values[head:head + whole].reshape(whole // size, size, -1),
                                 steps[head:head + whole].reshape(whole // size, size), start + head,
                                 (start + head) // size))
        if head + whole < n:
            parts.append(_reduce(values[None, head + whole:], steps[None, head + whole:], start + head + whole,
                                 (start + head + whole) // size))
        part = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if self._open is not None:
            if part["bucket"][0] == self._open["bucket"][0]:
                part = _merge_first(self._open, part)
            else:
                self._emit(self._open)
        if len(part["bucket"]) > 1:
            self._emit({k: v[:-1] for k, v in part.items()})
        self._open = {k: v[-1:] for k, v in part.items()}
        self.seen += n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps int64 [m], values float64 [m, L])``, ``m <= max_points``."""
        if self._open is not None:
            self._emit(self._open)
            self._open = None
        if not self._steps:
            return np.zeros(0, np.int64), np.zeros((0, 0))
        return np.concatenate(self._steps), np.concatenate(self._rows).astype(np.float64)

    def _emit(self, part: dict[str, np.ndarray]) -> None:
        lo, hi, lo_at, hi_at = part["lo"], part["hi"], part["lo_at"], part["hi_at"]
        none_finite = np.isinf(lo) & (lo > 0)  # no finite value: min stayed +inf
        ordered = lo_at <= hi_at
        first = np.where(ordered, lo, hi)
        second = np.where(ordered, hi, lo)
        bad = part["bad_at"] < np.iinfo(np.int64).max
        if self.nonfinite == "show":
            first = np.where(none_finite, part["bad"], first)
            second = np.where(bad, part["bad"], second)
        else:
            first = np.where(none_finite, np.nan, first)
            second = np.where(none_finite, np.nan, second)
        steps = np.stack([part["first"], part["last"]], axis=1).reshape(-1)
        rows = np.stack([first, second], axis=1).reshape(2 * len(first), -1)
        single = part["rows"] == 1
        if single.any():
            keep = np.ones(len(steps), bool)
            keep[np.flatnonzero(single) * 2 + 1] = False
            steps, rows = steps[keep], rows[keep]
        self._steps.append(steps)
        self._rows.append(rows)


def _reduce(v: np.ndarray, steps: np.ndarray, first_index: int, first_bucket: int) -> dict[str, np.ndarray]:
    """Per bucket (axis 0 of ``v``, ``[buckets, rows, L]``) and column: min, max and their positions, the first
    non-finite value and its position, first and last step, rows. Positions count rows of the whole table."""
    k, rows, layers = v.shape
    t = np.ascontiguousarray(v.transpose(0, 2, 1))  # [buckets, L, rows]: every reduction runs along memory
    finite = np.isfinite(t)
    all_finite = bool(finite.all())
    low = t if all_finite else np.where(finite, t, np.inf)
    high = t if all_finite else np.where(finite, t, -np.inf)
    lo_i, hi_i = low.argmin(axis=2), high.argmax(axis=2)  # [buckets, L], the first of equal values
    base = first_index + np.arange(k)[:, None] * rows
    far = np.iinfo(np.int64).max
    if all_finite:
        bad, bad_at = np.zeros((k, layers), v.dtype), np.full((k, layers), far)
    else:
        bad_i = (~finite).argmax(axis=2)
        bad = np.take_along_axis(t, bad_i[..., None], axis=2)[..., 0]
        bad_at = np.where(finite.all(axis=2), far, base + bad_i)
    return {"lo": np.take_along_axis(low, lo_i[..., None], axis=2)[..., 0],
            "hi": np.take_along_axis(high, hi_i[..., None], axis=2)[..., 0],
            "lo_at": base + lo_i, "hi_at": base + hi_i, "bad": bad, "bad_at": bad_at,
            "first": steps[:, 0], "last": steps[:, -1], "rows": np.full(k, rows, np.int64),
            "bucket": first_bucket + np.arange(k)}


def _merge_first(open_: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``part`` with its first segment merged into the open bucket that it continues."""
    out = {k: v.copy() for k, v in part.items()}
    lower = open_["lo"][0] <= part["lo"][0]  # ties: the earlier position (the open bucket's) wins
    out["lo"][0] = np.where(lower, open_["lo"][0], part["lo"][0])
    out["lo_at"][0] = np.where(lower, open_["lo_at"][0], part["lo_at"][0])
    higher = open_["hi"][0] >= part["hi"][0]
    out["hi"][0] = np.where(higher, open_["hi"][0], part["hi"][0])
    out["hi_at"][0] = np.where(higher, open_["hi_at"][0], part["hi_at"][0])
    earlier_bad = open_["bad_at"][0] <= part["bad_at"][0]
    out["bad"][0] = np.where(earlier_bad, open_["bad"][0], part["bad"][0])
    out["bad_at"][0] = np.where(earlier_bad, open_["bad_at"][0], part["bad_at"][0])
    out["first"][0] = open_["first"][0]
    out["rows"][0] = open_["rows"][0] + part["rows"][0]
    return out


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int, *,
               nonfinite: NonFinite = "show") -> tuple[np.ndarray, np.ndarray]:
    """``MinMax`` over one in-memory table; the table itself when it already fits."""
    if len(steps) <= max_points:
        return steps, values
    reducer = MinMax(len(steps), max_points, nonfinite=nonfinite)
    reducer.add(steps, values)
    return reducer.result()


def csv_header(layers: Iterable[str]) -> str:
    return ",".join(("step", *layers)) + "\n"


def csv_rows(steps: np.ndarray, values: np.ndarray) -> str:
    """``step,v1,v2,...`` lines (nan/inf written as such; floats round-trip float32)."""
    import io

    buf = io.StringIO()
    table = np.column_stack([np.asarray(steps, np.float64), np.asarray(values, np.float64)])
    np.savetxt(buf, table, fmt=["%d"] + [CSV_FLOAT] * values.shape[1], delimiter=",")
    text = buf.getvalue()
    buf.close()  # savetxt's writer keeps the buffer in a reference cycle: free its text now, not at the next gc
    return text


class EpochMeans:
    """Per-epoch mean of each column's finite values, fed in consecutive blocks (memory: epochs x layers).

    Step ``s`` is in epoch ``s // steps_per_epoch``. Non-finite values are left out of the means; the steps
    holding any are counted (``nonfinite_steps``).
    """

    def __init__(self, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, np.ndarray] = {}
        self.nonfinite_steps = 0

    def add(self, steps: np.ndarray, values: np.ndarray) -> None:
        if not len(steps):
            return
        v = np.asarray(values, np.float64)
        finite = np.isfinite(v)
        self.nonfinite_steps += int((~finite.all(axis=1)).sum())
        epoch = np.asarray(steps, np.int64) // self.steps_per_epoch
        order = np.argsort(epoch, kind="stable")
        epoch, v, finite = epoch[order], v[order], finite[order]
        starts = np.flatnonzero(np.r_[True, epoch[1:] != epoch[:-1]])
        sums = np.add.reduceat(np.where(finite, v, 0.0), starts, axis=0)
        counts = np.add.reduceat(finite.astype(np.int64), starts, axis=0)
        for e, s, c in zip(epoch[starts].tolist(), sums, counts, strict=True):
            if e in self._sums:
                self._sums[e] += s
                self._counts[e] += c
            else:
                self._sums[e], self._counts[e] = s, c

    def result(self) -> tuple[list[int], np.ndarray]:
        """(0-based epochs present, ``[epochs, layers]`` means in float64, NaN where a column had no finite value)."""
        epochs = sorted(self._sums)
        if not epochs:
            return [], np.zeros((0, 0))
        sums = np.stack([self._sums[e] for e in epochs])
        counts = np.stack([self._counts[e] for e in epochs])
        return epochs, np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def epoch_means(steps: np.ndarray, values: np.ndarray, steps_per_epoch: int) -> tuple[list[int], np.ndarray, int]:
    """``EpochMeans`` of one in-memory table: (epochs, means, steps with a non-finite value)."""
    acc = EpochMeans(steps_per_epoch)
    acc.add(steps, values)
    epochs, means = acc.result()
    return epochs, means, acc.nonfinite_steps
