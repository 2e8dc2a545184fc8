"""Live events (server-sent events) of one job and of the job list, fed by the app's fan-out hub: however many
streams follow a job, the store is read once per tick (``deepgrad_server.fanout``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from deepgrad_server import fanout
from deepgrad_server.deps import DbDep, JobId, load_job
from deepgrad_server.schemas import json_errors

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0
_STREAM = {200: {"description": "server-sent events (text/event-stream)"}}


def _keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


@router.get("/events", response_class=EventSourceResponse, responses={**_STREAM, **json_errors(401)})
async def jobs_events(request: Request, db: DbDep,
                      limit: Annotated[int, Query(ge=1, le=500, description="jobs in the first event")] = 50,
                      ) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events of the job list: ``jobs`` with the newest jobs, then ``jobs`` with each job that is new,
    changed or deleted; nothing but a ``: keep-alive`` comment while nothing changes."""
    async with request.app.state.fanout.follow_jobs() as box:
        # Following before the first read: no change after that read can be missed.
        first = await anyio.to_thread.run_sync(fanout.newest_jobs, db, limit)
        yield ServerSentEvent(event="jobs", raw_data=first.json)
        while (changes := await box.take(KEEPALIVE_S)) is not None:
            if not changes:
                yield _keep_alive()
            for change in changes:
                yield ServerSentEvent(event="jobs", raw_data=change.json)


def _job_must_exist(job_id: JobId, db: DbDep) -> None:
    load_job(db, job_id)  # a dependency: the 404 comes before the stream starts


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, responses={**_STREAM, **json_errors(401, 404)},
            dependencies=[Depends(_job_must_exist)])
async def job_events(job_id: JobId, request: Request) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events of a job: ``state`` on changes, ``progress`` while it runs, ``norms`` when norms were
    stored, ``end`` with the final job; a ``: keep-alive`` comment when nothing else was sent for a while."""
    async with request.app.state.fanout.follow_job(job_id) as box:
        told = _Told()
        while (snapshots := await box.take(KEEPALIVE_S)) is not None:
            if not snapshots:
                yield _keep_alive()
            for snapshot in snapshots:
                for event in told.events(snapshot):
                    yield event
                if snapshot.end_json is not None:
                    return


class _Told:
    """What one stream has told of its job: each snapshot becomes the events of what changed since."""

    def __init__(self) -> None:
        self.state: tuple[str, str | None] | None = None
        self.progress: dict[str, Any] | None = None
        self.norms: dict[str, int] = {}

    def events(self, snap: fanout.JobSnapshot) -> list[ServerSentEvent]:
        if snap.state == "deleted":
            return [ServerSentEvent(event="end", raw_data=snap.end_json)]
        first = self.state is None
        out = []
        if (snap.state, snap.reason) != self.state:
            self.state = (snap.state, snap.reason)
            out.append(ServerSentEvent(event="state", raw_data=snap.state_json))
        if snap.progress is not None and snap.progress != self.progress:  # a new state alone sends no progress
            self.progress = snap.progress
            out.append(ServerSentEvent(event="progress", raw_data=snap.progress_json))
        # A job that had ended when the stream opened: its `end` says all (the series are complete).
        if snap.norms and snap.norms != self.norms and not (first and snap.end_json is not None):
            self.norms = snap.norms
            out.append(ServerSentEvent(event="norms", raw_data=snap.norms_json))
        if snap.end_json is not None:
            out.append(ServerSentEvent(event="end", raw_data=snap.end_json))
        return out
