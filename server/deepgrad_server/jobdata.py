"""A stored job as the API reads it: norm series page by page, downsampled as they stream, and the figures'
view of a job (``deepgrad_core.plots.JobData``) with memory bounded by what is drawn, not by the series.

A series can be 2,000,000 steps x 17 layers (136 MB). No reader here holds it whole: pages of
``PAGE_STEPS`` steps come out of the store in short read transactions of their own, and each is reduced
(``deepgrad_core.series.MinMax``), written out (CSV) or averaged before the next is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import JobData
from deepgrad_core.series import MinMax
from deepgrad_server import store
from deepgrad_server.cache import JobCache
from deepgrad_server.db import Database
from deepgrad_server.models import TERMINAL, Job

PAGE_STEPS = 20_000  # steps per page: ~1.4 MB of a 17-layer weight series
# Figures draw at most ~2,000 points per line; up to this many rows a figure gets the series as recorded
# (moving averages and heatmap bins over every record), beyond it min/max rows of PLOT_BUCKETS buckets.
PLOT_FULL_ROWS = 200_000
PLOT_REDUCED_POINTS = 100_000


def norm_pages(db: Database, job_id: str, kind: str, *, start: int | None = None, end: int | None = None,
               extent: tuple[int, int, int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(steps, values)`` pages of a series in ``[start, end)``, in step order, each read on its own."""
    if extent is None:
        with db.reading() as s:
            extent = store.series_extent(s, job_id=job_id, kind=kind, start=start, end=end)
    at = extent.first_chunk
    while at <= extent.last_chunk:
        with db.reading() as s:
            page = store.norm_page(s, job_id=job_id, kind=kind, first_from=at, first_to=at + PAGE_STEPS,
                                   start=start, end=end)
        if page is not None:
            yield page
        at += PAGE_STEPS


def downsampled(db: Database, job_id: str, kind: str, cols: list[int], *, start: int | None, end: int | None,
                max_points: int, nonfinite: str = "show") -> tuple[int, np.ndarray, np.ndarray]:
    """(rows in range, steps, values of ``cols``) of a series, min/max downsampled while it streams."""
    with db.reading() as s:
        extent = store.series_extent(s, job_id=job_id, kind=kind, start=start, end=end)
    reducer = MinMax(extent.rows, max_points, nonfinite=nonfinite)  # type: ignore[arg-type]
    for steps, values in norm_pages(db, job_id, kind, start=start, end=end, extent=extent):
        reducer.add(steps, values[:, cols])
    steps, values = reducer.result()
    if not len(steps):
        values = np.zeros((0, len(cols)))
    return extent.rows, steps, values


def epoch_range(job: Job, epochs: list[int]) -> list[tuple[int, int]]:
    """Step ranges ``[start, end)`` of 0-based ``epochs``."""
    spe = job.steps_per_epoch or 1
    return [(e * spe, (e + 1) * spe) for e in epochs]


def recorded_epochs(db: Database, job: Job, kind: str) -> list[int]:
    """0-based epochs from the first to the last that a series has steps in."""
    with db.reading() as s:
        extent = store.series_extent(s, job_id=job.id, kind=kind)
    if not extent.rows:
        return []
    spe = job.steps_per_epoch or 1
    return list(range(extent.first_chunk // spe, extent.last_step // spe + 1))


def read_block(db: Database, job: Job, kind: str, ranges: list[tuple[int, int]] | None = None) -> NormBlock | None:
    """A series in memory: whole, or the rows of some step ranges (None: never recorded)."""
    with db.reading() as s:
        layers = store.norm_layers(s, job_id=job.id, kind=kind)
    if layers is None:
        return None
    parts = [p for a, b in (ranges or [(None, None)]) for p in norm_pages(db, job.id, kind, start=a, end=b)]
    if not parts:
        return NormBlock(kind, np.zeros(0, np.int64), layers, np.zeros((0, len(layers)), np.float32))
    return NormBlock(kind, np.concatenate([p[0] for p in parts]), layers, np.concatenate([p[1] for p in parts]))


def plot_series(db: Database, cache: JobCache, job: Job, kind: str, *, epochs: list[int] | None = None) -> Any:
    """The ``kind`` series a figure of ``job`` draws: as recorded when it is short, else min/max rows, or with
    ``epochs`` (0-based) only those epochs' rows. Finished jobs' are cached (by bytes)."""
    key = ("plot-series", job.id, kind, tuple(epochs) if epochs is not None else None)
    if job.state in TERMINAL and (hit := cache.get(key)) is not None:
        return hit
    with db.reading() as s:
        layers = store.norm_layers(s, job_id=job.id, kind=kind)
        rows = store.series_extent(s, job_id=job.id, kind=kind).rows if layers else 0
    if layers is None:
        block = None
    elif epochs is not None:
        block = read_block(db, job, kind, epoch_range(job, epochs))
    elif rows <= PLOT_FULL_ROWS:
        block = read_block(db, job, kind)
    else:
        total, steps, values = downsampled(db, job.id, kind, list(range(len(layers))), start=None, end=None,
                                           max_points=PLOT_REDUCED_POINTS)
        block = NormBlock(kind, steps, layers, values.astype(np.float32))
    if job.state in TERMINAL and block is not None:
        cache.put(key, frozenset([job.id]), block)
    return block


def job_data(db: Database, job: Job, kinds: tuple[str, ...],
             load: Callable[[Job, str], NormBlock | None]) -> JobData:
    """The figures' view of ``job`` with the norm ``kinds`` they draw, each from ``load(job, kind)``."""
    series = {k: load(job, k) for k in (job.norm_layers or {}) if k in kinds}
    with db.reading() as s:
        history = store.epochs(s, job_id=job.id)
    return JobData(name=job.name, layers=job.layers or [], steps_per_epoch=job.steps_per_epoch or 1,
                   series=series, history=history, cost=job.cost, filters=store.decode_array(job.filters),
                   state=job.state)


def layer_info(job: Job, names: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """Name, module path, depth and relative depth (0 first tracked layer, 1 last) of each named layer."""
    known = {la["name"]: la for la in job.layers or []}
    count = len(known)
    out = []
    for i, name in enumerate(names):
        la = known.get(name, {})
        depth = int(la.get("depth", i))
        out.append({"name": name, "path": la.get("path"), "depth": depth,
                    "relative_depth": depth / (count - 1) if count > 1 else 0.0})
    return out


def last_epoch_means(db: Database, job: Job, kind: str = "weight") -> tuple[tuple[str, ...], np.ndarray] | None:
    """(layers, mean of each column's finite values) over the last epoch a series has; None without one."""
    epochs = recorded_epochs(db, job, kind)
    if not epochs:
        return None
    block = read_block(db, job, kind, epoch_range(job, epochs[-1:]))
    if block is None or not len(block):
        return None
    rows = block.values.astype(np.float64)
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    sums = np.where(finite, rows, 0.0).sum(axis=0)
    return block.layers, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
