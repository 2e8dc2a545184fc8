"""One store reader per followed topic, fanned out to every event stream that follows it.

A stream that polled the store on its own cost a thread hop and a query every half second: 300 idle streams on
one job took about one core and slowed ``/health`` several times (docs/benchmarks.md). Here a topic (one job, or
the job list) has one reader task while anyone follows it: every ``interval`` seconds it reads the store in a
thread with a few narrow queries and puts what changed into each follower's mailbox. Putting never blocks the
reader: a mailbox nobody empties (a stalled client) stays bounded, and its newest entry is always the latest
news (job snapshots: the ones in between dropped; job-list changes: merged job by job). The reader stops when
its last follower leaves, and a store error only skips a tick.

The hub lives as long as the app (``Hub.running`` in its lifespan) and runs in its event loop: the bookkeeping
needs no locks. ``Hub.reads`` counts store reads per topic, for the tests and ``bench/events.py``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepgrad_server import store
from deepgrad_server.db import Database
from deepgrad_server.models import TERMINAL, Job, NormChunk
from deepgrad_server.schemas import Progress, job_public

log = logging.getLogger("deepgrad_server.fanout")

POLL_S = 0.5  # a flushed norm reaches a page within ~1 s (the page then fetches it)
BACKLOG = 8  # job snapshots a stream may fall behind by before the ones in between are dropped
ACTIVE = ("queued", "running")

T = TypeVar("T")


class Reader(Protocol[T]):
    def read(self, db: Database) -> T | None:
        """What changed since the last call (None: nothing); called in a thread, one call at a time."""


class Mailbox(Generic[T]):
    """What one stream has yet to send: ``put`` never blocks; ``coalesce`` keeps it bounded."""

    def __init__(self, coalesce: Callable[[list[T], T], None]) -> None:
        self._items: list[T] = []
        self._coalesce = coalesce
        self._ready = anyio.Event()
        self.closed = False

    def put(self, item: T) -> None:
        self._coalesce(self._items, item)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self, timeout: float) -> list[T] | None:
        """Everything pending, waiting up to ``timeout`` s for something ([] when nothing came); None once closed."""
        with anyio.move_on_after(timeout):
            await self._ready.wait()
        if self.closed:
            return None
        items, self._items = self._items, []
        self._ready = anyio.Event()
        return items


def keep_latest(items: list[Any], item: Any) -> None:
    """Snapshots: at most ``BACKLOG``; past that the newest one pending is replaced by ``item``."""
    if len(items) >= BACKLOG:
        items[-1] = item
    else:
        items.append(item)


def merge(items: list[JobsChange], item: JobsChange) -> None:
    """Job-list changes: one pending change, merged job by job."""
    if items:
        items[0] = items[0].merged(item)
    else:
        items.append(item)


@dataclass(eq=False)
class _Feed:
    key: str
    reader: Reader[Any]
    coalesce: Callable[[list[Any], Any], None]
    remember: bool  # keep the latest news for followers who join later (job snapshots)
    boxes: set[Mailbox[Any]] = field(default_factory=set)
    latest: Any = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class Hub:
    """The topics followed now, each with its one reader task."""

    def __init__(self, db: Database, task_group: TaskGroup, interval: float = POLL_S) -> None:
        self.db, self.interval = db, interval
        self._tg = task_group
        self._feeds: dict[str, _Feed] = {}
        self.reads: Counter[str] = Counter()  # store reads per topic ("job:<id>", "jobs")

    @classmethod
    @asynccontextmanager
    async def running(cls, db: Database, interval: float = POLL_S) -> AsyncIterator[Hub]:
        """A hub whose readers run until the block ends; then its streams end too."""
        async with anyio.create_task_group() as tg:
            hub = cls(db, tg, interval)
            try:
                yield hub
            finally:
                for feed in hub._feeds.values():
                    for box in feed.boxes:
                        box.close()
                tg.cancel_scope.cancel()

    @property
    def topics(self) -> set[str]:
        """The topics with a reader now."""
        return set(self._feeds)

    def follow_job(self, job_id: str) -> AbstractAsyncContextManager[Mailbox[JobSnapshot]]:
        """``async with hub.follow_job(id) as box``: ``JobSnapshot``s of the job, the latest one first."""
        return self._follow(f"job:{job_id}", lambda: JobReader(job_id), keep_latest, remember=True)

    def follow_jobs(self) -> AbstractAsyncContextManager[Mailbox[JobsChange]]:
        """``async with hub.follow_jobs() as box``: ``JobsChange``s of the job list from the next tick on."""
        return self._follow("jobs", JobsReader, merge, remember=False)

    @asynccontextmanager
    async def _follow(self, key: str, make_reader: Callable[[], Reader[Any]], coalesce: Callable[[list[Any], Any],
                      None], *, remember: bool) -> AsyncIterator[Mailbox[Any]]:
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed(key, make_reader(), coalesce, remember)
            self._tg.start_soon(self._run, feed, name=f"fanout {key}")
        box: Mailbox[Any] = Mailbox(coalesce)
        if feed.latest is not None:
            box.put(feed.latest)
        feed.boxes.add(box)
        try:
            yield box
        finally:
            feed.boxes.discard(box)
            if not feed.boxes:  # the last follower left: stop reading
                feed.scope.cancel()
                if self._feeds.get(key) is feed:
                    del self._feeds[key]

    async def _run(self, feed: _Feed) -> None:
        failing = False
        with feed.scope:
            while True:
                self.reads[feed.key] += 1
                try:
                    news = await anyio.to_thread.run_sync(feed.reader.read, self.db)
                except Exception:  # the store may be busy or briefly gone: streams keep their last news
                    if not failing:
                        log.exception("reading %s for its event streams failed; retrying every %.1f s",
                                      feed.key, self.interval)
                    failing = True
                else:
                    failing = False
                    if news is not None:
                        if feed.remember:
                            feed.latest = news
                        for box in feed.boxes:
                            box.put(news)
                await anyio.sleep(self.interval)


# --- one job -----------------------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


@dataclass(frozen=True, eq=False)
class JobSnapshot:
    """A job as its event stream tells it, each payload serialized once for every follower."""

    state: str  # "deleted" when the job is gone
    reason: str | None
    state_json: str  # {"state", "reason", "message"}
    progress: dict[str, Any] | None  # as stored; None before the first progress
    progress_json: str | None  # {...Progress, "state"}
    norms: dict[str, int]  # kind -> last step stored
    end_json: str | None  # the final Job (or {"id", "state": "deleted"}) once it ended

    @property
    def norms_json(self) -> str:
        return _json(self.norms)


class JobReader:
    """One job's state, progress and last stored step per norm kind: one narrow row and an index probe per kind;
    the whole job is read only once it ended."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._seen: tuple | None = None

    def read(self, db: Database) -> JobSnapshot | None:
        with db.reading() as s:
            row = s.execute(select(Job.state, Job.reason, Job.message, Job.progress, Job.norm_layers)
                            .where(Job.id == self.job_id)).one_or_none()
            if row is None:
                seen: tuple = ("deleted",)
            else:
                seen = (row.state, row.reason, row.message, row.progress, last_steps(s, job_id=self.job_id,
                                                                                      kinds=row.norm_layers or {}))
            if seen == self._seen:
                return None
            self._seen = seen
            job = store.get_job(s, job_id=self.job_id) if row is not None and row.state in TERMINAL else None
        if row is None:
            return JobSnapshot("deleted", None, _json({"state": "deleted", "reason": None, "message": None}), None,
                               None, {}, _json({"id": self.job_id, "state": "deleted"}))
        state, reason, message, progress, norms = seen
        public = None if progress is None else Progress.model_validate(progress).model_dump(mode="json")
        return JobSnapshot(
            state, reason, _json({"state": state, "reason": reason, "message": message}), progress,
            None if public is None else _json({**public, "state": state}), norms,
            None if job is None else _json(job_public(job).model_dump(mode="json")))


def last_steps(s: Session, *, job_id: str, kinds: Any) -> dict[str, int]:
    """The last stored step of each of the job's norm kinds: the chunk with the highest first step, found in the
    (job, kind, first step) index without reading any other chunk."""
    out = {}
    for kind in sorted(kinds):
        last = s.scalar(select(NormChunk.last_step).where(NormChunk.job_id == job_id, NormChunk.kind == kind)
                        .order_by(NormChunk.first_step.desc()).limit(1))
        if last is not None:
            out[kind] = int(last)
    return out


# --- the job list ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class JobsChange:
    """Jobs new or changed since the last tick (id -> (seq, public row as JSON)), jobs deleted, the jobs counted."""

    rows: dict[str, tuple[int, str]]
    deleted: frozenset[str]
    count: int

    def merged(self, later: JobsChange) -> JobsChange:
        rows = {k: v for k, v in {**self.rows, **later.rows}.items() if k not in later.deleted}
        return JobsChange(rows, (self.deleted | later.deleted) - later.rows.keys(), later.count)

    @cached_property
    def json(self) -> str:
        """``{"data": [Job, ...] newest first, "deleted": [id, ...], "count": n}``, made once for every follower."""
        rows = ", ".join(row for _, row in sorted(self.rows.values(), reverse=True))
        return f'{{"data": [{rows}], "deleted": {_json(sorted(self.deleted))}, "count": {self.count}}}'


class JobsReader:
    """What changed in the jobs table, from cheap reads: the active (queued, running) jobs' narrow rows, the ids
    past the highest seq seen, and the count; the ids of all jobs only when the count says some ended job was
    deleted. Ended jobs change only by being deleted (a job's end and its results are one write)."""

    def __init__(self) -> None:
        self._active: dict[str, tuple] | None = None  # id -> what a change of an active job shows in
        self._ids: set[str] = set()
        self._max_seq = 0

    def read(self, db: Database) -> JobsChange | None:
        with db.reading() as s:
            active = {r[0]: tuple(r[1:]) for r in s.execute(
                select(Job.id, Job.state, Job.reason, Job.message, Job.attempts, Job.started_at, Job.steps_per_epoch,
                       Job.cancel_requested, Job.progress).where(Job.state.in_(ACTIVE)))}
            if self._active is None:  # the first tick: what later ticks compare with
                self._active, self._ids = active, set(s.scalars(select(Job.id)))
                self._max_seq = s.scalar(select(func.max(Job.seq))) or 0
                return None
            new = dict(s.execute(select(Job.id, Job.seq).where(Job.seq > self._max_seq)).all())
            changed = new.keys() | {i for i, sig in active.items() if self._active.get(i) != sig} \
                | (self._active.keys() - active.keys())
            jobs = list(s.scalars(select(Job).where(Job.id.in_(changed)))) if changed else []
            deleted = changed - {j.id for j in jobs}
            count = s.scalar(select(func.count()).select_from(Job))
            self._ids = (self._ids | new.keys()) - deleted
            if count != len(self._ids):  # an ended job was deleted (or a job came after the reads above)
                ids = set(s.scalars(select(Job.id)))
                deleted |= self._ids - ids
                self._ids = ids
        self._active = active
        self._max_seq = max([self._max_seq, *new.values()])
        if not jobs and not deleted:
            return None
        rows = {j.id: (j.seq, _json(job_public(j).model_dump(mode="json"))) for j in jobs}
        return JobsChange(rows, frozenset(deleted), count)


def newest_jobs(db: Database, limit: int) -> JobsChange:
    """The newest ``limit`` jobs and the count, as a change: what a job-list stream starts with."""
    with db.reading() as s:
        jobs, _ = store.list_jobs(s, limit=limit)
        count = s.scalar(select(func.count()).select_from(Job))
    return JobsChange({j.id: (j.seq, _json(job_public(j).model_dump(mode="json"))) for j in jobs}, frozenset(),
                      count)
