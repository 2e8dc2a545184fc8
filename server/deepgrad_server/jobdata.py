"""A stored job as the figures and comparisons read it (``deepgrad_core.plots.JobData``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import JobData
from deepgrad_server import store
from deepgrad_server.db import Database
from deepgrad_server.models import Job


def job_data(db: Database, job: Job, kinds: tuple[str, ...],
             load: Callable[[Job, str], NormBlock | None]) -> JobData:
    """The figures' view of ``job`` with the norm ``kinds`` they draw, each from ``load(job, kind)``
    (the plot routes pass their cache of finished jobs' series)."""
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


def last_epoch_means(block: Any, steps_per_epoch: int) -> np.ndarray | None:
    """Mean of each column's finite values over the last epoch recorded in ``block``."""
    if block is None or not len(block):
        return None
    epochs = block.steps // max(steps_per_epoch, 1)
    rows = block.values[epochs == epochs.max()].astype(np.float64)
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    sums = np.where(finite, rows, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
