"""Rendered figures as PNG: one job's, several compared, or a study's. Finished jobs' figures are cached.

Handlers are coroutines: the job is read on a request thread, the figure drawn on a render thread
(``rendering.RenderPool``), so rendering never holds up other requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from matplotlib.figure import Figure

from deepgrad_core.plots import (
    COMPARE_KINDS,
    JOB_KINDS,
    JobData,
    PlotDataError,
    PlotParameterError,
    render_compare,
    render_job,
    to_png,
)
from deepgrad_core.plots.render import MAX_COMPARE_JOBS
from deepgrad_core.plots.study import STUDY_KINDS, StudyEntry, render_study
from deepgrad_server import store
from deepgrad_server.db import Database
from deepgrad_server.deps import DbDep, Ids, JobId, StudyId, invalid, load_job, parse_ids
from deepgrad_server.jobdata import job_data, study_row
from deepgrad_server.models import TERMINAL, Job
from deepgrad_server.schemas import StudyRow, errors

router = APIRouter(tags=["plots"])

STUDY_COMPARE_KINDS = ("depth", "metrics", "histogram")  # compare figures over a study's jobs
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
NO_SERIES = ("metrics", "filters", "cost", "histogram")
EPOCH_MEANS = ("depth", "ratio")  # figures of per-epoch means: streamed out of the store, whatever the length
Layers = Annotated[str | None, Query(max_length=2000, description="comma-separated layer names (selected)")]
Epochs = Annotated[str | None, Query(max_length=2000, pattern=r"^\s*[1-9]\d{0,5}(\s*,\s*[1-9]\d{0,5})*\s*$",
                                     description="comma-separated epochs counted from 1 (depth)")]
MainPath = Annotated[bool, Query(description="depth: only the stem and main-path convs (no 1x1 reducer or shortcut)")]
PLOT_ERRORS = {**PNG, **errors(404, 409), 503: {"description": "too many figures rendering; retry after "
                                                               "Retry-After seconds"}}


async def _png(request: Request, key: tuple, ids: frozenset[str], cacheable: bool,
               render: Callable[[], Figure]) -> Response:
    cache = request.app.state.plot_cache
    png = cache.get(key) if cacheable else None
    if png is None:
        try:
            png = await request.app.state.render_pool.run(lambda: to_png(render()))
        except PlotDataError as err:
            raise HTTPException(status.HTTP_404_NOT_FOUND if cacheable else status.HTTP_409_CONFLICT,
                                detail=str(err)) from err
        except PlotParameterError as err:  # a parameter the figure cannot use: name it
            raise invalid(str(err), err.param) from err
        if cacheable:
            cache.put(key, ids, png)
    return Response(png, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600" if cacheable else "no-store"})


def _data(request: Request, db: Database, job: Job, kind: str, norm_kind: str, compare: bool = False) -> JobData:
    """What the figure needs: only its norm kind (none for metrics, filters, cost), bounded in memory whatever
    the series' length (depth figures get per-epoch means)."""
    kinds = () if kind in NO_SERIES else ("weight", "activation") if kind == "ratio" and not compare else (norm_kind,)
    ends = ("last" if compare else "ends") if kind == "histogram" else None
    return job_data(db, request.app.state.series_cache, job, kinds, depth=kind in EPOCH_MEANS, histograms=ends)


def _epochs(text: str | None) -> list[int] | None:
    return [int(e) for e in text.split(",")] if text else None


def _names(text: str | None) -> list[str] | None:
    names = [n.strip() for n in text.split(",") if n.strip()] if text else []
    return names or None


@router.get("/jobs/{job_id}/plots/{kind}.png", response_class=Response, responses=PLOT_ERRORS)
async def job_plot(job_id: JobId, kind: Literal[JOB_KINDS], db: DbDep, request: Request,
                   norm_kind: Literal["weight", "activation", "global"] = "weight", layers: Layers = None,
                   epochs: Epochs = None, smooth: Annotated[int, Query(ge=0, le=10_000)] = 0,
                   max_points: Annotated[int, Query(ge=10, le=100_000)] = 2000,
                   main_path: MainPath = False) -> Response:
    """One job's figure: norms, selected, heatmap, depth, ratio, metrics, filters, cost, or histogram (weight-gradient
    distribution per layer at the first and the last recorded step; ``layers`` picks layers)."""
    job = await anyio.to_thread.run_sync(load_job, db, job_id)
    if job.state == "queued":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} is queued: nothing to draw yet")
    key = ("job", job_id, kind, norm_kind, layers, epochs, smooth, max_points, main_path)
    return await _png(request, key, frozenset([job_id]), job.state in TERMINAL,
                      lambda: render_job(kind, _data(request, db, job, kind, norm_kind),
                                         norm_kind=norm_kind, layers=_names(layers), epochs=_epochs(epochs),
                                         smooth=smooth, max_points=max_points, main_path=main_path))


@router.get("/compare/plots/{kind}.png", response_class=Response, responses=PLOT_ERRORS)
async def compare_plot(kind: Literal[COMPARE_KINDS], db: DbDep, request: Request, ids: Ids,
                       norm_kind: Literal["weight", "activation"] = "weight", epochs: Epochs = None,
                       main_path: MainPath = False, layers: Layers = None) -> Response:
    """Several jobs on one figure: metrics, depth (relative depth 0..1), ratio, filters, cost, or histogram (one
    layer's weight-gradient distribution at each job's last recorded step; ``layers``: that layer)."""
    jobs = await anyio.to_thread.run_sync(lambda: [load_job(db, i) for i in parse_ids(ids)])
    queued = [j.id for j in jobs if j.state == "queued"]
    if queued:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job(s) {queued} are queued: nothing to draw yet")
    key = ("compare", tuple(j.id for j in jobs), kind, norm_kind, epochs, main_path, layers)

    return await _png(request, key, frozenset(j.id for j in jobs), all(j.state in TERMINAL for j in jobs),
                      lambda: render_compare(kind, [_data(request, db, j, kind, norm_kind, compare=True) for j in jobs],
                                             norm_kind=norm_kind, epochs=_epochs(epochs), main_path=main_path,
                                             layers=_names(layers)))


@router.get("/studies/{study_id}/plots/{kind}.png", response_class=Response, responses=PLOT_ERRORS)
async def study_plot(study_id: StudyId, kind: Literal[(*STUDY_KINDS, *STUDY_COMPARE_KINDS)], db: DbDep,
                     request: Request, norm_kind: Literal["weight", "activation"] = "weight",
                     main_path: MainPath = True) -> Response:
    """A study's figure: ``accuracy`` and ``ratio`` per job, ``cost`` (accuracy against parameters and FLOPs); and
    over its jobs (at most 12), ``depth`` profiles overlaid, every job's ``metrics``, and the ``histogram`` of each
    job's first main-path layer at its last recorded step."""
    study, links = await anyio.to_thread.run_sync(_study_jobs, db, study_id)
    jobs = [job for _, job in links]
    ended = all(j.state in TERMINAL for j in jobs)
    key = ("study", study_id, kind, norm_kind, main_path)
    ids = frozenset(j.id for j in jobs)
    if kind in STUDY_KINDS:
        entries = [_entry(study_row(link, job)) for link, job in links]
        fraction = min((j.spec.get("tracking", {}).get("vanishing_fraction", 1e-3) for j in jobs), default=1e-3)
        classes = jobs[0].spec.get("model", {}).get("num_classes", 10) if jobs else 10
        return await _png(request, key, ids, ended,
                          lambda: render_study(kind, study.name, entries, num_classes=classes, fraction=fraction))
    if len(jobs) > MAX_COMPARE_JOBS:
        msg = (f"a study of {len(jobs)} jobs is too many for one {kind} figure (at most {MAX_COMPARE_JOBS}); draw "
               f"some of them with GET /compare/plots/{kind}.png?ids=...")
        raise RequestValidationError([{"type": "value_error", "loc": ("path", "kind"), "msg": msg, "input": kind}])
    started = [j for j in jobs if j.state != "queued"]
    if not started:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"every job of study {study_id} is queued: nothing to "
                                                             "draw yet")
    return await _png(request, key, ids, ended,
                      lambda: render_compare(kind, [_data(request, db, j, kind, norm_kind, compare=True)
                                                    for j in started], norm_kind=norm_kind, main_path=main_path))


def _study_jobs(db: Database, study_id: str) -> tuple:
    with db.reading() as s:
        study = store.get_study(s, study_id=study_id)
        if study is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no study with id {study_id!r}")
        return study, store.study_jobs(s, study_id=study_id)


def _entry(row: StudyRow) -> StudyEntry:
    return StudyEntry(label=row.label, state=row.state, test_acc=row.test_acc, train_acc=row.train_acc,
                      first_last_ratio=row.first_last_ratio, vanishing=row.vanishing, params=row.params,
                      flops_per_image=row.flops_per_image)
