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
from deepgrad_server.schemas import HistogramsPublic, SeriesPublic, errors

router = APIRouter(tags=["gradients"])

NormKind = Literal["weight", "activation", "global"]
MAX_STEP = 2**62  # steps are int64; bounded so that no comparison overflows
STEPS_PATTERN = r"^\s*\d{1,18}(\s*,\s*\d{1,18}){0,99}\s*$"


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


@router.get("/jobs/{job_id}/histograms", response_model=HistogramsPublic, responses=errors(404, 409))
def job_histograms(job_id: JobId, db: DbDep,
                   layers: Annotated[str | None, Query(max_length=2000, description="comma-separated layer names "
                                                       "(default: all tracked)")] = None,
                   steps: Annotated[str | None, Query(max_length=2000, pattern=STEPS_PATTERN,
                                                      description="comma-separated steps, at most 100 (default: the "
                                                                  "first and the last recorded)")] = None,
                   ) -> HistogramsPublic:
    """Weight-gradient histograms (log10 |g| in fixed bins, the same for every layer and job) of chosen layers at
    chosen steps; steps with histograms are the multiples of ``tracking.histogram_every``."""
    from deepgrad_core.histograms import EDGES

    job = load_job(db, job_id)
    with db.reading() as s:
        recorded = store.histogram_steps(s, job_id=job_id)
        if not len(recorded):
            every = (job.spec.get("tracking") or {}).get("histogram_every")
            raise _missing_histograms(job, every)
        wanted = sorted({int(recorded[0]), int(recorded[-1])}) if steps is None else \
            sorted({int(x) for x in steps.split(",")})
        absent = [x for x in wanted if x not in set(recorded.tolist())]
        if absent:
            raise invalid(f"no histograms at step(s) {absent[:5]}; recorded: {len(recorded)} steps from "
                          f"{int(recorded[0])} to {int(recorded[-1])}, e.g. {recorded[:3].tolist()}", "steps")
        block = store.load_histograms(s, job_id=job_id, steps=wanted)
    columns = parse_layers(layers, block.layers)
    names = [block.layers[j] for j in columns]
    return HistogramsPublic(job_id=job_id, edges_log10=EDGES.tolist(), recorded_steps=len(recorded),
                            first_step=int(recorded[0]), last_step=int(recorded[-1]),
                            steps=block.steps.tolist(), layers=layer_info(job, names),
                            counts=block.counts[:, columns].tolist())


def _missing_histograms(job: Job, every: int | None) -> HTTPException:
    if every == 0:
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job.id} records no histograms "
                             "(tracking.histogram_every is 0)")
    if job.state in TERMINAL:
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job.id} recorded no histograms")
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job.id} is {job.state} and has no histograms yet")
