"""Studies: a set of paired jobs submitted, watched, summarized, cancelled and deleted as one; presets by name."""

from __future__ import annotations

import shutil
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from deepgrad_core.presets import PRESETS
from deepgrad_core.study import StudyError, check_key, expand, label, set_path
from deepgrad_server import admission, store
from deepgrad_server.deps import DbDep, SettingsDep, StudyId
from deepgrad_server.jobdata import study_row
from deepgrad_server.models import TERMINAL, Study
from deepgrad_server.schemas import (
    Preset,
    StudiesPublic,
    StudyCreate,
    StudyJobPublic,
    StudyPublic,
    StudySummary,
    errors,
    job_public,
)
from deepgrad_server.worker import wake_workers

router = APIRouter(tags=["studies"])


@router.get("/presets", response_model=list[Preset])
def list_presets() -> list[Preset]:
    """The named studies ``POST /studies`` runs by ``preset``: the original study's suite and the classic sweeps."""
    return [Preset(name=p.name, description=p.description, base=p.base, grid=p.grid, points=p.points, jobs=p.jobs)
            for p in PRESETS.values()]


@router.post("/studies", status_code=status.HTTP_201_CREATED, response_model=StudyPublic,
             responses=errors(400, 413, 429))
def create_study(body: StudyCreate, db: DbDep, settings: SettingsDep, request: Request,
                 response: Response) -> StudyPublic:
    """Queue one job per point of the grid (every combination) or of the list, all with one seed and data order.
    Everything is checked before anything is written: an unknown key, an empty list, a value the spec refuses,
    a job over this server's limits or more jobs than ``DEEPGRAD_MAX_STUDY_JOBS`` is a 422 naming it."""
    base, grid, points = _definition(body)
    try:
        expanded = expand(base, grid=grid, points=points, max_points=settings.max_study_jobs)
    except StudyError as err:
        raise RequestValidationError([_error(("body", *err.loc), err.msg)]) from None
    for i, point in enumerate(expanded):
        for error in admission.limit_errors(point.spec, settings, memory=i == 0 or _sizes_differ(point, expanded[0])):
            where = ("body", "points", i) if points is not None else ("body", "grid")
            loc = tuple(error["loc"])[1:] if tuple(error["loc"])[:1] == ("body",) else tuple(error["loc"])
            raise RequestValidationError([_error((*where, *loc), f"job {i + 1} ({point.label}): {error['msg']}")])
    name = body.name or body.preset or "study"
    try:
        with db.writing() as s:
            study = store.create_study(s, name=name, base=base, grid=grid, points=points, preset=body.preset,
                                       jobs=[(p.overrides, p.spec.model_dump(mode="json"), p.label) for p in expanded],
                                       max_queued=settings.max_queued)
            public = _study_public(s, study)
    except store.QueueFull as err:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=str(err), headers={"Retry-After": "30"}) from err
    response.headers["Location"] = f"/studies/{study.id}"
    wake_workers(request.app.state.workers)
    return public


@router.get("/studies", response_model=StudiesPublic)
def list_studies(db: DbDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> StudiesPublic:
    """Studies, newest first, each with its job counts by state."""
    with db.reading() as s:
        studies, count = store.list_studies(s, limit=limit, offset=offset)
        return StudiesPublic(data=[_study_public(s, st, with_jobs=False) for st in studies], count=count)


@router.get("/studies/{study_id}", response_model=StudyPublic, responses=errors(404))
def get_study(study_id: StudyId, db: DbDep) -> StudyPublic:
    """One study with every job: what it varies, its state and progress."""
    with db.reading() as s:
        return _study_public(s, _load(s, study_id))


@router.get("/studies/{study_id}/summary", response_model=StudySummary, responses=errors(404))
def study_summary(study_id: StudyId, db: DbDep) -> StudySummary:
    """One row per job: what it varies, final accuracy and loss, seconds, parameters, FLOPs, the first/last
    gradient ratio and the vanishing verdict (null where the job has not ended)."""
    with db.reading() as s:
        study = _load(s, study_id)
        links = store.study_jobs(s, study_id=study_id)
    varied = list(dict.fromkeys(key for link, _ in links for key in link.overrides))
    return StudySummary(study_id=study.id, name=study.name, varied=varied,
                        rows=[study_row(link, job) for link, job in links])


@router.post("/studies/{study_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=StudyPublic,
             responses=errors(404))
def cancel_study(study_id: StudyId, db: DbDep) -> StudyPublic:
    """Cancel every job of the study that has not ended: queued ones now, running ones within a few seconds."""
    with db.writing() as s:
        study = _load(s, study_id)
        for _, job in store.study_jobs(s, study_id=study_id):
            if job.state not in TERMINAL:
                store.request_cancel(s, job_id=job.id)
    with db.reading() as s:
        return _study_public(s, study)


@router.delete("/studies/{study_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
def delete_study(study_id: StudyId, db: DbDep, settings: SettingsDep, request: Request) -> Response:
    """Remove an ended study and all its jobs (their series, metrics and checkpoints); 409 while any job runs or
    waits (cancel the study first)."""
    with db.writing() as s:
        _load(s, study_id)
        busy = [job.id for _, job in store.study_jobs(s, study_id=study_id) if job.state not in TERMINAL]
        if busy:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"study {study_id} has {len(busy)} job(s) queued or "
                                f"running: cancel it first (POST /studies/{study_id}/cancel), then delete it")
        ids = store.delete_study(s, study_id=study_id)
    for job_id in ids:
        # Ids are 12 hex characters: no traversal.
        shutil.rmtree(settings.resolved_checkpoint_dir / job_id, ignore_errors=True)
        request.app.state.plot_cache.drop(job_id)
        request.app.state.series_cache.drop(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _definition(body: StudyCreate) -> tuple[dict[str, Any], dict[str, Any] | None, list[Any] | None]:
    """The study's base (with ``set`` applied), grid and points, from the body or its preset."""
    if body.preset is not None:
        preset = PRESETS[body.preset]  # the schema allows only their names
        if body.grid is not None or body.points is not None:
            raise RequestValidationError([_error(("body", "preset"), "a preset brings its own points: give grid "
                                                                     "or points only without one")])
        base, grid, points = _merge(preset.base, body.base or {}), preset.grid, preset.points
    else:
        base, grid, points = dict(body.base or {}), body.grid, body.points
    for key, value in body.set.items():
        try:
            check_key(("set", key), key)
        except StudyError as err:
            raise RequestValidationError([_error(("body", "set", key), err.msg)]) from None
        set_path(base, key, value)
    return base, grid, points


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _sizes_differ(point: Any, first: Any) -> bool:
    """Whether ``point`` may need more memory than ``first`` (the estimate builds a model: only when it may)."""
    a, b = point.spec, first.spec
    return (a.model, a.data, a.train.batch_size, a.train.precision) != (b.model, b.data, b.train.batch_size,
                                                                         b.train.precision)


def _error(loc: tuple, msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": msg, "input": None, "ctx": {"error": msg}}


def _load(s: Any, study_id: str) -> Study:
    study = store.get_study(s, study_id=study_id)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no study with id {study_id!r}")
    return study


def _study_public(s: Any, study: Study, *, with_jobs: bool = True) -> StudyPublic:
    links = store.study_jobs(s, study_id=study.id)
    counts: dict[str, int] = {}
    for _, job in links:
        counts[job.state] = counts.get(job.state, 0) + 1
    state = "ended" if all(job.state in TERMINAL for _, job in links) else \
        "running" if counts.get("running") or any(job.state in TERMINAL for _, job in links) else "queued"
    jobs = [StudyJobPublic(position=link.position, label=label(link.overrides), overrides=link.overrides,
                           job=job_public(job)) for link, job in links] if with_jobs else []
    return StudyPublic(id=study.id, name=study.name, preset=study.preset, base=study.base, grid=study.grid,
                       points=study.points, created_at=study.created_at, state=state, counts=counts, jobs=jobs)
