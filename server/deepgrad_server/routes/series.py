"""Per-layer gradient-norm series: downsampled JSON for plots, the full table as CSV."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from deepgrad_core.norms import NormBlock
from deepgrad_server import store
from deepgrad_server.db import Database
from deepgrad_server.deps import DbDep, JobId, invalid, load_job
from deepgrad_server.jobdata import layer_info
from deepgrad_server.models import TERMINAL, Job
from deepgrad_server.schemas import SeriesPublic, errors

router = APIRouter(tags=["gradients"])

NormKind = Literal["weight", "activation", "global"]
CSV_ROWS_PER_CHUNK = 5000
MAX_STEP = 2**62  # steps are int64; bounded so that no comparison overflows


def _missing(job: Job, kind: str) -> HTTPException:
    if job.state in TERMINAL:
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job.id} recorded no {kind} gradient norms "
                             f"(recorded: {sorted(job.norm_layers or {})})")
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job.id} is {job.state} and has no {kind} "
                         "gradient norms yet; try again when it has run a few steps")


def cached_norms(request: Request, db: Database, job: Job, kind: str) -> NormBlock | None:
    """A job's whole ``kind`` series; a finished job's is decoded once and then kept (it never changes)."""
    cache = request.app.state.series_cache
    key = ("norms", job.id, kind)
    if job.state in TERMINAL and (hit := cache.get(key)) is not None:
        return hit
    with db.reading() as s:
        block = store.load_norms(s, job_id=job.id, kind=kind)
    if job.state in TERMINAL and block is not None:
        cache.put(key, frozenset([job.id]), block)
    return block


def parse_layers(text: str | None, known: tuple[str, ...]) -> list[int]:
    """Column indices of comma-separated layer names (all when empty); 422 naming unknown ones."""
    if not text:
        return list(range(len(known)))
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise invalid(f"unknown layer(s) {unknown}; this job tracks {list(known)}", "layers")
    return [known.index(n) for n in dict.fromkeys(names)]


@router.get("/jobs/{job_id}/gradients", response_model=SeriesPublic, responses=errors(404, 409))
def gradients(job_id: JobId, db: DbDep, request: Request, kind: NormKind = "weight",
              layers: Annotated[str | None, Query(max_length=2000, description="comma-separated names")] = None,
              start: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
              end: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
              max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000) -> SeriesPublic:
    """A job's per-layer norm series, min/max downsampled to at most ``max_points`` steps."""
    job = load_job(db, job_id)
    if start is not None and end is not None and end <= start:
        raise invalid(f"end ({end}) must be after start ({start})", "end")
    block = cached_norms(request, db, job, kind)
    if block is None:
        raise _missing(job, kind)
    if start is not None or end is not None:
        keep = (block.steps >= (start or 0)) & (block.steps < (end if end is not None else np.iinfo(np.int64).max))
        block = NormBlock(kind, block.steps[keep], block.layers, block.values[keep])
    cols = parse_layers(layers, block.layers)
    steps, values = store.downsample(block.steps, block.values[:, cols], max_points)
    columns = values.T.astype(np.float64)
    if np.isfinite(columns).all():
        lists = columns.tolist()
    else:
        lists = np.where(np.isfinite(columns), columns, np.nan).astype(object)
        lists[~np.isfinite(columns)] = None
        lists = lists.tolist()
    names = [block.layers[c] for c in cols]
    return SeriesPublic(job_id=job_id, kind=kind, total_steps=len(block), downsampled=len(steps) < len(block),
                        layers=layer_info(job, names), steps=steps.tolist(), values=lists)


@router.get("/jobs/{job_id}/gradients.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}, "description": "step, then one column per layer"},
                       **errors(404, 409)})
def gradients_csv(job_id: JobId, db: DbDep, kind: NormKind = "weight") -> StreamingResponse:
    """The full series as CSV: ``step,<layer>,...``, one row per recorded step (nan/inf as such)."""
    job = load_job(db, job_id)
    with db.reading() as s:
        block = store.load_norms(s, job_id=job_id, kind=kind)
    if block is None:
        raise _missing(job, kind)

    def rows() -> Iterator[str]:
        yield ",".join(("step", *block.layers)) + "\n"
        for i in range(0, len(block), CSV_ROWS_PER_CHUNK):
            buf = io.StringIO()
            chunk = slice(i, i + CSV_ROWS_PER_CHUNK)
            table = np.column_stack([block.steps[chunk].astype(np.float64), block.values[chunk].astype(np.float64)])
            np.savetxt(buf, table, fmt=["%d"] + ["%.9g"] * len(block.layers), delimiter=",")
            yield buf.getvalue()

    return StreamingResponse(rows(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}-{kind}.csv"'})
