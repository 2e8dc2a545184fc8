"""Per-layer gradient-norm series: downsampled JSON for plots, the full table as CSV.

Both stream the series out of the store page by page (``jobdata.norm_pages``): a read costs memory in
proportion to its answer (JSON) or to one page (CSV), never to the whole series.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from deepgrad_server import store
from deepgrad_server.deps import DbDep, JobId, invalid, load_job
from deepgrad_server.jobdata import csv_text, downsampled, layer_info
from deepgrad_server.models import TERMINAL, Job
from deepgrad_server.schemas import SeriesPublic, errors

router = APIRouter(tags=["gradients"])

NormKind = Literal["weight", "activation", "global"]
MAX_STEP = 2**62  # steps are int64; bounded so that no comparison overflows


def _missing(job: Job, kind: str) -> HTTPException:
    if job.state in TERMINAL:
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job.id} recorded no {kind} gradient norms "
                             f"(recorded: {sorted(job.norm_layers or {})})")
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job.id} is {job.state} and has no {kind} "
                         "gradient norms yet; try again when it has run a few steps")


def parse_layers(text: str | None, known: tuple[str, ...]) -> list[int]:
    """Column indices of comma-separated layer names (all when empty); 422 naming unknown ones."""
    if not text:
        return list(range(len(known)))
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise invalid(f"unknown layer(s) {unknown}; this job tracks {list(known)}", "layers")
    return [known.index(n) for n in dict.fromkeys(names)]


def _columns(values: np.ndarray) -> list[list[float | None]]:
    """One list per column; NaN and infinities as null."""
    columns = values.T.astype(np.float64)
    if np.isfinite(columns).all():
        return columns.tolist()
    out = columns.astype(object)
    out[~np.isfinite(columns)] = None
    return out.tolist()


@router.get("/jobs/{job_id}/gradients", response_model=SeriesPublic, responses=errors(404, 409))
def gradients(job_id: JobId, db: DbDep, request: Request, kind: NormKind = "weight",
              layers: Annotated[str | None, Query(max_length=2000, description="comma-separated names")] = None,
              start: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="first step (inclusive)")] = None,
              end: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="last step (exclusive); must be "
                                               "greater than start")] = None,
              max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000) -> SeriesPublic:
    """A job's per-layer norm series, min/max downsampled to at most ``max_points`` steps."""
    job = load_job(db, job_id)
    if start is not None and end is not None and end <= start:
        raise invalid(f"end ({end}) must be after start ({start})", "end")
    with db.reading() as s:
        known = store.norm_layers(s, job_id=job_id, kind=kind)
    if known is None:
        raise _missing(job, kind)
    cols = parse_layers(layers, known)
    key = ("gradients", job_id, kind, tuple(cols), start, end, max_points)
    cache = request.app.state.series_cache
    if job.state in TERMINAL and (hit := cache.get(key)) is not None:
        total, steps, values = hit
    else:
        total, steps, values = downsampled(db, job_id, kind, cols, start=start, end=end, max_points=max_points)
        if job.state in TERMINAL:
            cache.put(key, frozenset([job_id]), (total, steps, values))
    names = [known[c] for c in cols]
    span = int(steps[-1]) + 1 - int(steps[0]) if len(steps) else 0  # min/max rows keep the first and last step
    return SeriesPublic(job_id=job_id, kind=kind, records=total, total_steps=span, downsampled=len(steps) < total,
                        layers=layer_info(job, names), steps=steps.tolist(), values=_columns(values))


@router.get("/jobs/{job_id}/gradients.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}, "description": "step, then one column per layer"},
                       **errors(404, 409)})
def gradients_csv(job_id: JobId, db: DbDep, kind: NormKind = "weight") -> StreamingResponse:
    """The full series as CSV: ``step,<layer>,...``, one row per recorded step (nan/inf as such), streamed."""
    job = load_job(db, job_id)
    with db.reading() as s:
        known = store.norm_layers(s, job_id=job_id, kind=kind)
    if known is None:
        raise _missing(job, kind)
    return StreamingResponse(csv_text(db, job_id, kind, known), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}-{kind}.csv"'})
