"""Jobs: submit, list, read, cancel, delete and epoch metrics (their live events: ``routes/events.py``)."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from deepgrad_server import admission, store
from deepgrad_server.deps import DbDep, JobId, SettingsDep, load_job
from deepgrad_server.models import TERMINAL, JobState
from deepgrad_server.schemas import JobCreate, JobPublic, JobsPublic, MetricsPublic, errors, job_public
from deepgrad_server.worker import wake_workers

router = APIRouter(tags=["jobs"])

IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                              description="a retried POST with the same key returns the same job")]


@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
             responses={200: {"model": JobPublic, "description": "the job an earlier POST with this Idempotency-Key "
                              "made"}, **errors(400, 409, 413, 429)})
def create_job(body: JobCreate, db: DbDep, settings: SettingsDep, request: Request, response: Response,
               idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Queue a training job (201); a retried POST with the same Idempotency-Key returns the same job (200)."""
    errors = admission.limit_errors(body, settings)
    if errors:
        raise RequestValidationError(errors)
    spec = body.model_dump(mode="json", exclude={"name"})
    name = body.name or f"{body.model.arch}-{body.data.name}"
    try:
        with db.writing() as s:
            job, created = store.create_job(s, spec=spec, name=name, idempotency_key=idempotency_key,
                                            max_queued=settings.max_queued)
    except store.QueueFull as err:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=str(err), headers={"Retry-After": "30"}) from err
    except store.IdempotencyConflict as err:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
    response.headers["Location"] = f"/jobs/{job.id}"
    if created:
        wake_workers(request.app.state.workers)
    else:
        response.status_code = status.HTTP_200_OK
    return job_public(job)


@router.get("/jobs", response_model=JobsPublic)
def list_jobs(db: DbDep, state: JobState | None = None, name: Annotated[str | None, Query(max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> JobsPublic:
    """Jobs, newest first, filtered by state and by a substring of the name."""
    with db.reading() as s:
        jobs, count = store.list_jobs(s, state=state, name=name, limit=limit, offset=offset)
    return JobsPublic(data=[job_public(j) for j in jobs], count=count)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=errors(404))
def get_job(job_id: JobId, db: DbDep) -> JobPublic:
    """One job: spec, state, progress, timings, environment, final metrics, summary."""
    return job_public(load_job(db, job_id))


@router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses=errors(404, 409))
def cancel_job(job_id: JobId, db: DbDep) -> JobPublic:
    """Cancel a queued job now, a running one within a few seconds (its worker stops it; one that completes
    its last step first ends succeeded)."""
    with db.writing() as s:
        job = store.request_cancel(s, job_id=job_id)
        if job is None:
            existing = store.get_job(s, job_id=job_id)
    if job is None:
        if existing is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id!r}")
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} already ended ({existing.state})")
    return job_public(job)


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
def delete_job(job_id: JobId, db: DbDep, settings: SettingsDep, request: Request) -> Response:
    """Remove a finished job, its series, metrics and checkpoint."""
    with db.writing() as s:
        job = store.get_job(s, job_id=job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id!r}")
        if job.state not in TERMINAL:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} is {job.state}: cancel it first "
                                f"(POST /jobs/{job_id}/cancel), then delete it")
        store.delete_job(s, job_id=job_id)
    # The id is 12 hex characters: no traversal.
    shutil.rmtree(settings.resolved_checkpoint_dir / job_id, ignore_errors=True)
    request.app.state.plot_cache.drop(job_id)
    request.app.state.series_cache.drop(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/metrics", response_model=MetricsPublic, responses=errors(404))
def job_metrics(job_id: JobId, db: DbDep) -> MetricsPublic:
    """Epoch history (epoch counted from 0), final metrics, per-class report, confusion matrix, per-layer means."""
    job = load_job(db, job_id)
    with db.reading() as s:
        history = store.epochs(s, job_id=job_id)
        means = store.layer_means(s, job_id=job_id)
    return MetricsPublic(job_id=job.id, state=job.state, epochs=history, final=job.final, per_class=job.per_class,
                         confusion=job.confusion, layer_means=means)
