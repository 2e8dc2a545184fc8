"""A stored job as the API reads it: norm series page by page, downsampled as they stream, and the figures'
view of a job (``deepgrad_core.plots.JobData``) with memory bounded by what is drawn, not by the series.

A series can be 2,000,000 steps x 17 layers (136 MB). No reader here holds it whole: pages of
``PAGE_STEPS`` steps come out of the store in short read transactions of their own, and each is reduced
(``deepgrad_core.series.MinMax``), written out (CSV) or averaged before the next is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import JobData
from deepgrad_core.series import EpochMeans, MinMax, csv_header, csv_rows
from deepgrad_core.study import label
from deepgrad_server import store
from deepgrad_server.cache import JobCache
from deepgrad_server.db import Database
from deepgrad_server.models import TERMINAL, Job, StudyJob
from deepgrad_server.schemas import StudyRow

CSV_ROWS = 2048  # rows per piece of CSV text sent
PAGE_STEPS = 32_768  # steps per page: ~2.2 MB of a 17-layer weight series, ~10 MB of work while reduced
# Figures draw at most ~2,000 points per line. Up to this many values (rows x layers: 4 MB of float32) a
# figure gets the series as recorded (moving averages and heatmap bins over every record); beyond, the
# min/max rows of as many buckets, still 5-10 times what a line can show.
PLOT_FULL_VALUES = 1_000_000
PLOT_MIN_POINTS = 4000


def norm_pages(db: Database, job_id: str, kind: str, *, start: int | None = None, end: int | None = None,
               extent: store.Extent | None = None, session: Session | None = None,
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(steps, values)`` pages of a series in ``[start, end)``, in step order: each read in a transaction of
    its own (a CSV download may take minutes), or all in ``session`` (one request's read: a consistent view)."""
    if extent is None:
        with db.reading() as s:
            extent = store.series_extent(s, job_id=job_id, kind=kind, start=start, end=end)
    at = extent.first_chunk
    while at <= extent.last_chunk:
        with nullcontext(session) if session is not None else db.reading() as s:
            page = store.norm_page(s, job_id=job_id, kind=kind, first_from=at, first_to=at + PAGE_STEPS,
                                   start=start, end=end)
        if page is not None:
            yield page
        at += PAGE_STEPS


def csv_text(db: Database, job_id: str, kind: str, layers: tuple[str, ...]) -> Iterator[str]:
    """A whole series as CSV text, a page at a time: ``step,<layer>,...`` then one row per recorded step."""
    yield csv_header(layers)
    for steps, values in norm_pages(db, job_id, kind):
        for i in range(0, len(steps), CSV_ROWS):
            yield csv_rows(steps[i:i + CSV_ROWS], values[i:i + CSV_ROWS])


def downsampled(db: Database, job_id: str, kind: str, cols: list[int], *, start: int | None, end: int | None,
                max_points: int, nonfinite: str = "show") -> tuple[int, np.ndarray, np.ndarray]:
    """(rows in range, steps, values of ``cols``) of a series, min/max downsampled while it streams."""
    with db.reading() as s:
        extent = store.series_extent(s, job_id=job_id, kind=kind, start=start, end=end)
        reducer = MinMax(extent.rows, max_points, nonfinite=nonfinite)  # type: ignore[arg-type]
        every = cols == list(range(len(cols))) and len(cols) == (store.norm_layers(s, job_id=job_id, kind=kind)
                                                                  or ())
        for steps, values in norm_pages(db, job_id, kind, start=start, end=end, extent=extent, session=s):
            reducer.add(steps, values if every else values[:, cols])
    steps, values = reducer.result()
    if not len(steps):
        values = np.zeros((0, len(cols)))
    return extent.rows, steps, values


def read_block(db: Database, job: Job, kind: str) -> NormBlock | None:
    """A whole series in memory (None: never recorded): for series known to be short."""
    with db.reading() as s:
        layers = store.norm_layers(s, job_id=job.id, kind=kind)
    if layers is None:
        return None
    parts = list(norm_pages(db, job.id, kind))
    if not parts:
        return NormBlock(kind, np.zeros(0, np.int64), layers, np.zeros((0, len(layers)), np.float32))
    return NormBlock(kind, np.concatenate([p[0] for p in parts]), layers, np.concatenate([p[1] for p in parts]))


def plot_series(db: Database, cache: JobCache, job: Job, kind: str) -> tuple[NormBlock, int] | None:
    """The ``kind`` series a figure of ``job`` draws over steps, and the records stored: as recorded when it is
    short, else its min/max rows (``PLOT_FULL_VALUES``). Finished jobs' are cached (bounded by bytes)."""
    key = ("plot-series", job.id, kind)
    if job.state in TERMINAL and (hit := cache.get(key)) is not None:
        return hit
    with db.reading() as s:
        layers = store.norm_layers(s, job_id=job.id, kind=kind)
        rows = store.series_extent(s, job_id=job.id, kind=kind).rows if layers else 0
    if layers is None:
        return None
    if rows * len(layers) <= PLOT_FULL_VALUES:
        block = (read_block(db, job, kind), rows)
    else:
        points = max(PLOT_MIN_POINTS, PLOT_FULL_VALUES // len(layers))
        _, steps, values = downsampled(db, job.id, kind, list(range(len(layers))), start=None, end=None,
                                       max_points=points)
        block = NormBlock(kind, steps, layers, values.astype(np.float32))
        block = (block, rows)
    if job.state in TERMINAL:
        cache.put(key, frozenset([job.id]), block)
    return block


def depth_series(db: Database, cache: JobCache, job: Job, kind: str) -> tuple[NormBlock, tuple] | None:
    """What depth figures draw: per-epoch means of every layer, streamed (memory: epochs x layers), as
    ``JobData.epoch_means`` wants them, with a block of one mean row per epoch for the layer names."""
    key = ("depth-series", job.id, kind)
    if job.state in TERMINAL and (hit := cache.get(key)) is not None:
        return hit
    with db.reading() as s:
        layers = store.norm_layers(s, job_id=job.id, kind=kind)
    if layers is None:
        return None
    spe = job.steps_per_epoch or 1
    acc = EpochMeans(spe)
    for steps, values in norm_pages(db, job.id, kind):
        acc.add(steps, values)
    epochs, means = acc.result()
    if not epochs:
        means = np.zeros((0, len(layers)))
    block = NormBlock(kind, np.asarray(epochs, np.int64) * spe, layers, means.astype(np.float32))
    out = (block, (epochs, means, acc.nonfinite_steps))
    if job.state in TERMINAL:
        cache.put(key, frozenset([job.id]), out)
    return out


def job_data(db: Database, cache: JobCache, job: Job, kinds: tuple[str, ...], *, depth: bool = False,
             histograms: str | None = None) -> JobData:
    """The figures' view of ``job`` with the norm ``kinds`` they draw: over steps (``plot_series``), or their
    per-epoch means (``depth``: ``depth_series``); ``histograms``: ``"ends"`` (the first and last recorded step)
    or ``"last"``."""
    series, means, recorded = {}, {}, {}
    for kind in (k for k in (job.norm_layers or {}) if k in kinds):
        found = depth_series(db, cache, job, kind) if depth else plot_series(db, cache, job, kind)
        if found is None:
            continue
        if depth:
            series[kind], means[kind] = found
        else:
            series[kind], recorded[kind] = found
    hist = None
    with db.reading() as s:
        history = store.epochs(s, job_id=job.id)
        filters_init = store.get_array(s, job_id=job.id, name="filters_init")
        if histograms is not None:
            steps = store.histogram_steps(s, job_id=job.id)
            wanted = [] if not len(steps) else [int(steps[-1])] if histograms == "last" else \
                sorted({int(steps[0]), int(steps[-1])})
            hist = store.load_histograms(s, job_id=job.id, steps=wanted)
    spec = job.spec or {}
    return JobData(name=job.name, layers=job.layers or [], steps_per_epoch=job.steps_per_epoch or 1,
                   series=series, history=history, cost=job.cost, filters=store.decode_array(job.filters),
                   state=job.state, epoch_means=means, recorded=recorded, filters_init=filters_init,
                   num_classes=(spec.get("model") or {}).get("num_classes", 10),
                   vanishing_fraction=(spec.get("tracking") or {}).get("vanishing_fraction", 1e-3),
                   histograms=hist)


def layer_info(job: Job, names: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """Name, module path, role, depth and relative depth (0 first tracked layer, 1 last) of each named layer."""
    known = {la["name"]: la for la in job.layers or []}
    count = len(known)
    out = []
    for i, name in enumerate(names):
        la = known.get(name, {})
        depth = int(la.get("depth", i))
        role = la.get("role") or ("classifier" if la.get("kind") == "linear" else "main")
        out.append({"name": name, "path": la.get("path"), "role": role, "depth": depth,
                    "relative_depth": depth / (count - 1) if count > 1 else 0.0})
    return out


def last_epoch_means(db: Database, job: Job, kind: str = "weight") -> tuple[tuple[str, ...], np.ndarray] | None:
    """(layers, mean of each column's finite values) over the last epoch a series has, streamed; None without."""
    with db.reading() as s:
        layers = store.norm_layers(s, job_id=job.id, kind=kind)
        extent = store.series_extent(s, job_id=job.id, kind=kind)
    if layers is None or not extent.rows:
        return None
    spe = job.steps_per_epoch or 1
    acc = EpochMeans(spe)
    for steps, values in norm_pages(db, job.id, kind, start=extent.last_step // spe * spe):
        acc.add(steps, values)
    _, means = acc.result()
    return layers, means[-1]


def study_row(link: StudyJob, job: Job) -> StudyRow:
    """A study's job as a summary row: what it varies, its results and cost, its verdict (None until known)."""
    final, cost, summary = job.final or {}, job.cost or {}, job.summary or {}
    kind = summary.get("vanishing_source")
    verdict = summary.get(kind) if kind else None
    return StudyRow(position=link.position, job_id=job.id, label=label(link.overrides), overrides=link.overrides,
                    state=job.state, train_acc=final.get("train_acc"), test_acc=final.get("test_acc"),
                    train_loss=final.get("train_loss"), test_loss=final.get("test_loss"),
                    seconds=final.get("seconds"), params=cost.get("total_params"),
                    flops_per_image=cost.get("flops_per_image"),
                    first_last_ratio=verdict.get("first_last_ratio") if verdict else None, ratio_kind=kind,
                    vanishing=summary.get("vanishing"))
