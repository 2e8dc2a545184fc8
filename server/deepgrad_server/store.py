"""Every read and write of the job store, as functions of a session with keyword-only arguments.

Norm series arrive as ``NormBlock``s (``[steps x layers]`` float32 with int64 step numbers) and are
stored as they come, one row per block; reads concatenate the blocks of a step range and downsample.

Every function behaves the same on SQLite and PostgreSQL. Where they differ:

- Concurrency. A SQLite write transaction holds the database's one write lock from its first statement
  (``BEGIN IMMEDIATE``, see ``db.py``), so read-then-write code runs alone. PostgreSQL's transactions run side
  by side (READ COMMITTED): rows read to decide a write are locked there (``FOR UPDATE``, ``_for_update``),
  claims skip rows another claimer holds (``SKIP LOCKED``), and submissions take a lock of their own
  (``_one_submitter``) so that the queue bound and idempotency keys hold across API processes. A statement
  that fails aborts a PostgreSQL transaction: an expected ``IntegrityError`` is caught around a savepoint.
- Values. PostgreSQL enforces ``VARCHAR`` lengths and refuses NUL in text (SQLite stores either); no driver
  encodes a lone surrogate. Text is fitted before it is written (``_fit``). Step bounds are compared as
  BIGINT (steps are int64; psycopg would cast a bound to the INTEGER of the column and overflow).
"""

from __future__ import annotations

import io
import re
import secrets
import time
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Select,
    String,
    and_,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deepgrad_core.histograms import BINS, HistBlock
from deepgrad_core.norms import NormBlock
from deepgrad_server.models import TERMINAL, EpochMetric, HistChunk, Job, JobArray, NormChunk, Study, StudyJob


class QueueFull(Exception):
    pass


class IdempotencyConflict(Exception):
    pass


class Superseded(Exception):
    """The job is no longer held by the run that wanted to write it (another run of it took over)."""


def now() -> float:
    return time.time()


def new_id() -> str:
    return secrets.token_hex(6)


# --- what the back-ends differ on -------------------------------------------------------------------------------

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL (PostgreSQL refuses it in text), lone surrogates (no UTF-8)
_SUBMIT_LOCK = int.from_bytes(b"dg-queue", "big")  # the PostgreSQL advisory lock submissions take (migrations: another)


def _fit(column: Any, value: str | None) -> str | None:
    """``value`` as any back-end stores it in ``column`` (a ``String(n)``): NUL and lone surrogates replaced by
    U+FFFD, cut to ``n`` characters (ending in an ellipsis). A long failure message is kept, shortened."""
    if value is None:
        return None
    value = _UNSTORABLE.sub("\ufffd", value)
    limit = column.type.length
    return value if len(value) <= limit else value[:limit - 1] + "\u2026"


def _fit_fields(model: type, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of ``model`` with each string bound for a ``String(n)`` column fitted (``_fit``)."""
    columns = model.__table__.columns
    fitted = dict(fields)
    for key, value in fields.items():
        column = columns.get(key)
        if isinstance(value, str) and column is not None and isinstance(column.type, String) and column.type.length:
            fitted[key] = _fit(column, value)
    return fitted


def _check_storable(column: Any, value: str, what: str) -> None:
    """A key compared as it is (an idempotency key, a lease owner) is never fitted: ValueError if it must be."""
    if len(value) > column.type.length or _UNSTORABLE.search(value):
        raise ValueError(f"{what} is at most {column.type.length} characters, without NUL or lone surrogates")


def _step(value: int) -> BindParameter:
    """A step number as a BIGINT bound (steps are int64; an INTEGER column compared with it stays exact)."""
    return literal(int(value), BigInteger)


def _postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def _for_update(s: Session, query: Select, *, skip_locked: bool = False) -> Select:
    """``query`` locking the rows it reads until the transaction ends, and reading them afresh (not from the
    session's identity map). On SQLite the transaction already holds the write lock: the query as it is."""
    if _postgres(s):
        query = query.with_for_update(skip_locked=skip_locked)
    return query.execution_options(populate_existing=True)


def _one_submitter(s: Session) -> None:
    """Submissions one at a time: the queue count and the idempotency check stay true until this transaction
    commits (on SQLite the write lock already makes it so)."""
    if _postgres(s):
        s.execute(select(func.pg_advisory_xact_lock(literal(_SUBMIT_LOCK, BigInteger))))


# --- jobs -------------------------------------------------------------------------------------------------------


def create_job(s: Session, *, spec: dict[str, Any], name: str, idempotency_key: str | None,
               max_queued: int) -> tuple[Job, bool]:
    """Queue a job; with an ``idempotency_key`` already used, return that job instead (``created`` False)."""
    if idempotency_key is not None:
        _check_storable(Job.idempotency_key, idempotency_key, "an idempotency key")
    _one_submitter(s)
    if idempotency_key is not None:
        existing = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.spec != spec or existing.name != _fit(Job.name, name):
                raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for job {existing.id} "
                                          "with a different body; use a new key for a new job")
            return existing, False
    _check_queue(s, adding=1, max_queued=max_queued)
    try:
        return _new_job(s, spec=spec, name=name, idempotency_key=idempotency_key), True
    except IntegrityError:  # another request with this key won the race: return its job
        return create_job(s, spec=spec, name=name, idempotency_key=idempotency_key, max_queued=max_queued)


def _check_queue(s: Session, *, adding: int, max_queued: int) -> None:
    queued = s.scalar(select(func.count()).select_from(Job).where(Job.state == "queued"))
    if queued + adding > max_queued:
        raise QueueFull(f"the queue is full ({queued} jobs queued, limit {max_queued}"
                        f"{f', {adding} to add' if adding > 1 else ''}); retry when some have run")


def _new_job(s: Session, *, spec: dict[str, Any], name: str, idempotency_key: str | None = None) -> Job:
    for _ in range(5):  # 48 random bits: a collision is rare, but never fatal
        job = Job(id=new_id(), name=_fit(Job.name, name), state="queued", spec=spec, idempotency_key=idempotency_key,
                  created_at=now(), attempts=0, cancel_requested=False)
        try:
            with s.begin_nested():
                s.add(job)
            return job
        except IntegrityError:
            if idempotency_key is not None and s.scalar(select(Job).where(Job.idempotency_key == idempotency_key)):
                raise
    raise RuntimeError("could not allocate a job id")


def get_job(s: Session, *, job_id: str) -> Job | None:
    return s.scalar(select(Job).where(Job.id == job_id))


def list_jobs(s: Session, *, state: str | None = None, name: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[Job], int]:
    """Newest first; ``name`` matches a substring."""
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state)
    if name:  # ASCII case folded on both back-ends (SQLite's LIKE folds it, PostgreSQL's does not: ILIKE)
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.name.ilike(f"%{escaped}%", escape="\\"))
    count = s.scalar(select(func.count()).select_from(query.subquery()))
    jobs = s.scalars(query.order_by(Job.seq.desc()).limit(limit).offset(offset)).all()
    return list(jobs), count


def queue_counts(s: Session) -> dict[str, int]:
    rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: n for state, n in rows}


def claim_next(s: Session, *, owner: str, lease_seconds: float, run_token: str | None = None) -> Job | None:
    """Take the oldest queued job and lease it to ``owner``; None when the queue is empty.

    One UPDATE whose WHERE re-checks the state, so two workers can never take the same job. On PostgreSQL the
    oldest queued job is first locked with ``FOR UPDATE SKIP LOCKED``: concurrent claimers each take a different
    job instead of waiting on one another. SQLite has no row locks (it drops ``FOR UPDATE``); there claimers take
    turns, as every write transaction starts with ``BEGIN IMMEDIATE``.
    """
    _check_storable(Job.lease_owner, owner, "a lease owner")
    oldest = select(Job.seq).where(Job.state == "queued").order_by(Job.seq).limit(1)
    if _postgres(s):
        oldest = oldest.with_for_update(skip_locked=True)
    while True:
        seq = s.scalar(oldest)
        if seq is None:
            return None
        t = now()
        taken = s.execute(update(Job).where(Job.seq == seq, Job.state == "queued").values(
            state="running", lease_owner=owner, lease_expires=t + lease_seconds, attempts=Job.attempts + 1,
            run_token=run_token, started_at=func.coalesce(Job.started_at, t))).rowcount
        if taken:
            return s.scalar(select(Job).where(Job.seq == seq).execution_options(populate_existing=True))


def heartbeat(s: Session, *, job_id: str, owner: str, lease_seconds: float) -> tuple[bool, bool]:
    """Extend the lease; return (still ours, cancel requested)."""
    ours = s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
                     .values(lease_expires=now() + lease_seconds)).rowcount
    cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return bool(ours), cancel


def request_cancel(s: Session, *, job_id: str) -> Job | None:
    """Cancel a queued job now; flag a running one (its worker stops it). None when already finished."""
    job = _job_for_update(s, job_id=job_id)
    if job is None or job.state in TERMINAL:
        return None
    if job.state == "queued":
        job.state, job.reason, job.message, job.finished_at = "cancelled", "cancelled", "cancelled while queued", now()
    job.cancel_requested = True
    return job


def finish(s: Session, *, job_id: str, state: str, reason: str | None = None, message: str | None = None,
           owner: str | None = None, **fields: Any) -> bool:
    """Put a running job in a terminal state (only if ``owner`` still holds it, when given)."""
    assert state in TERMINAL, state
    query = update(Job).where(Job.id == job_id, Job.state == "running")
    if owner is not None:
        query = query.where(Job.lease_owner == owner)
    done = s.execute(query.values(**_fit_fields(Job, dict(
        state=state, reason=reason, message=message, finished_at=now(), lease_owner=None, lease_expires=None,
        **fields)))).rowcount
    return bool(done)


def update_job(s: Session, *, job_id: str, **fields: Any) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(**_fit_fields(Job, fields)))


def _job_for_update(s: Session, *, job_id: str) -> Job | None:
    """The job read afresh and locked until the transaction ends: for a write that depends on its state."""
    return s.scalar(_for_update(s, select(Job).where(Job.id == job_id)))


def hold(s: Session, *, job_id: str, run_token: str) -> None:
    """Check that the run ``run_token`` still holds the running job, and keep it so until the transaction ends
    (the job's row is locked on PostgreSQL; SQLite's write transactions take turns): the writes of the same
    transaction can never land in a run that replaced it. ``Superseded`` otherwise."""
    job = _job_for_update(s, job_id=job_id)
    if job is None or job.state != "running" or job.run_token != run_token:
        now_ = "deleted" if job is None else (job.state if job.state != "running" else "running as another run")
        raise Superseded(f"job {job_id} is no longer this run's ({now_})")


def requeue_or_fail(s: Session, *, job_id: str, max_retries: int, why: str) -> str:
    """A running job lost its worker: back to the queue (same place), or ``failed/worker_lost``."""
    job = _job_for_update(s, job_id=job_id)
    if job is None or job.state != "running":
        return job.state if job is not None else "deleted"
    if job.cancel_requested:
        finish(s, job_id=job_id, state="cancelled", reason="cancelled", message="cancelled")
        return "cancelled"
    if job.attempts > max_retries:
        finish(s, job_id=job_id, state="failed", reason="worker_lost",
               message=f"{why}; gave up after {job.attempts} attempts (DEEPGRAD_MAX_RETRIES={max_retries})")
        return "failed"
    job.state, job.lease_owner, job.lease_expires = "queued", None, None
    job.message = _fit(Job.message, f"{why}; requeued to resume from its last checkpoint (attempt {job.attempts + 1})")
    return "queued"


def expired_leases(s: Session, *, at: float) -> list[Job]:
    return list(s.scalars(select(Job).where(Job.state == "running", or_(Job.lease_expires.is_(None),
                                                                        Job.lease_expires < at))))


def running_jobs(s: Session) -> list[Job]:
    """The running jobs, read afresh and locked until the transaction ends, for deciding which lost their
    worker; on PostgreSQL those another transaction holds (a heartbeat, another worker's recovery) are left out."""
    return list(s.scalars(_for_update(s, select(Job).where(Job.state == "running").order_by(Job.seq),
                                      skip_locked=True)))


def delete_job(s: Session, *, job_id: str) -> None:
    s.execute(delete(StudyJob).where(StudyJob.job_id == job_id))
    s.execute(delete(HistChunk).where(HistChunk.job_id == job_id))
    s.execute(delete(NormChunk).where(NormChunk.job_id == job_id))
    s.execute(delete(JobArray).where(JobArray.job_id == job_id))
    s.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
    s.execute(delete(Job).where(Job.id == job_id))


# --- studies ----------------------------------------------------------------------------------------------------


def create_study(s: Session, *, name: str, base: dict[str, Any], grid: dict[str, Any] | None,
                 points: list[Any] | None, preset: str | None,
                 jobs: list[tuple[dict[str, Any], dict[str, Any], str]], max_queued: int) -> Study:
    """A study and its jobs (``jobs``: (overrides, resolved spec, label) per point, in order; each named
    ``<study>/<n> <label>``), queued together or not at all (``QueueFull``)."""
    _one_submitter(s)
    _check_queue(s, adding=len(jobs), max_queued=max_queued)
    for _ in range(5):
        study = Study(id=new_id(), name=_fit(Study.name, name), base=base, grid=grid, points=points,
                      preset=_fit(Study.preset, preset), created_at=now())
        try:
            with s.begin_nested():
                s.add(study)
            break
        except IntegrityError:
            continue
    else:
        raise RuntimeError("could not allocate a study id")
    width = len(str(len(jobs)))
    for position, (overrides, spec, label) in enumerate(jobs):
        job = _new_job(s, spec=spec, name=f"{name}/{position + 1:0{width}d} {label}")
        s.add(StudyJob(study_id=study.id, job_id=job.id, position=position, overrides=overrides))
    s.flush()
    return study


def get_study(s: Session, *, study_id: str) -> Study | None:
    return s.scalar(select(Study).where(Study.id == study_id))


def list_studies(s: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[Study], int]:
    count = s.scalar(select(func.count()).select_from(Study))
    return list(s.scalars(select(Study).order_by(Study.seq.desc()).limit(limit).offset(offset))), count


def study_jobs(s: Session, *, study_id: str) -> list[tuple[StudyJob, Job]]:
    """The study's jobs in study order, each with what it varies."""
    rows = s.execute(select(StudyJob, Job).join(Job, Job.id == StudyJob.job_id)
                     .where(StudyJob.study_id == study_id).order_by(StudyJob.position))
    return [(link, job) for link, job in rows]


def study_of(s: Session, *, job_id: str) -> str | None:
    return s.scalar(select(StudyJob.study_id).where(StudyJob.job_id == job_id))


def delete_study(s: Session, *, study_id: str) -> list[str]:
    """Remove the study and all its jobs; return their ids."""
    ids = list(s.scalars(select(StudyJob.job_id).where(StudyJob.study_id == study_id)))
    s.execute(delete(StudyJob).where(StudyJob.study_id == study_id))
    for job_id in ids:
        delete_job(s, job_id=job_id)
    s.execute(delete(Study).where(Study.id == study_id))
    return ids


# --- epochs -----------------------------------------------------------------------------------------------------


def put_epoch(s: Session, *, job_id: str, metrics: dict[str, Any]) -> None:
    epoch = int(metrics["epoch"])
    s.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch == epoch))
    s.add(EpochMetric(job_id=job_id, epoch=epoch, metrics=metrics))


def layer_means(s: Session, *, job_id: str) -> dict[str, Any] | None:
    return s.scalar(select(Job.layer_means).where(Job.id == job_id))


def epochs(s: Session, *, job_id: str) -> list[dict[str, Any]]:
    rows = s.scalars(select(EpochMetric.metrics).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch))
    return list(rows)


# --- norm series ------------------------------------------------------------------------------------------------


def append_norms(s: Session, *, job_id: str, block: NormBlock, registered: set[str] | None = None) -> None:
    """Store one flushed block as one row; the first block of a kind records (or checks) its column names.

    A writer that passes the same ``registered`` set every time skips that check after the first
    block of each kind: the rest is one bare INSERT (ingest is a hot path: see bench/store.py).
    """
    if not len(block):
        return
    if registered is None or block.kind not in registered:
        layers = s.scalar(select(Job.norm_layers).where(Job.id == job_id)) or {}
        if block.kind not in layers:
            update_job(s, job_id=job_id, norm_layers={**layers, block.kind: list(block.layers)})
        elif tuple(layers[block.kind]) != block.layers:
            raise ValueError(f"job {job_id}: {block.kind} block has layers {block.layers}, "
                             f"stored {layers[block.kind]}")
        if registered is not None:
            registered.add(block.kind)
    s.execute(insert(NormChunk), [_chunk_row(job_id, block.kind, block.steps, block.values)])


def _chunk_row(job_id: str, kind: str, steps: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    steps = np.ascontiguousarray(steps, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float32)
    return {"job_id": job_id, "kind": kind, "first_step": int(steps[0]), "last_step": int(steps[-1]),
            "n_layers": values.shape[1], "steps": steps.tobytes(), "values": values.tobytes()}


def truncate_from(s: Session, *, job_id: str, step: int) -> None:
    """Drop norms at ``step`` and after, and the epochs from ``step``'s on (a resumed run replays them)."""
    s.execute(delete(NormChunk).where(NormChunk.job_id == job_id, NormChunk.first_step >= _step(step)))
    straddling = s.scalars(select(NormChunk).where(NormChunk.job_id == job_id, NormChunk.first_step < _step(step),
                                                   NormChunk.last_step >= _step(step))).all()
    for chunk in straddling:
        steps, values = _decode(chunk)
        keep = steps < step
        s.delete(chunk)
        s.add(NormChunk(**_chunk_row(job_id, chunk.kind, steps[keep], values[keep])))
    s.execute(delete(HistChunk).where(HistChunk.job_id == job_id, HistChunk.first_step >= _step(step)))
    for chunk in s.scalars(select(HistChunk).where(HistChunk.job_id == job_id, HistChunk.first_step < _step(step),
                                                   HistChunk.last_step >= _step(step))).all():
        block = _hist(chunk)
        keep = block.steps < step
        s.delete(chunk)
        append_histograms(s, job_id=job_id, block=HistBlock(block.steps[keep], block.layers, block.counts[keep]))
    spe = s.scalar(select(Job.steps_per_epoch).where(Job.id == job_id))
    first_epoch = step // spe if spe else 0
    s.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch >= _step(first_epoch)))


def append_histograms(s: Session, *, job_id: str, block: HistBlock) -> None:
    """Store one flushed block of histograms as one row."""
    if not len(block):
        return
    s.add(HistChunk(job_id=job_id, first_step=int(block.steps[0]), last_step=int(block.steps[-1]),
                    layers=list(block.layers), steps=np.ascontiguousarray(block.steps, np.int64).tobytes(),
                    counts=np.ascontiguousarray(block.counts, np.float32).tobytes()))


def load_histograms(s: Session, *, job_id: str, steps: list[int] | None = None) -> HistBlock | None:
    """The job's histograms in step order, or only those at ``steps`` (reading just the chunks that hold them:
    memory bounded by the answer); None when there are none."""
    query = select(HistChunk).where(HistChunk.job_id == job_id).order_by(HistChunk.first_step, HistChunk.id)
    if steps is not None:
        query = query.where(or_(*(and_(HistChunk.first_step <= _step(step), HistChunk.last_step >= _step(step))
                                  for step in steps))) if steps else query.where(false())
    blocks = [_hist(chunk) for chunk in s.scalars(query)]
    if not blocks:
        return None
    block = HistBlock(np.concatenate([b.steps for b in blocks]), blocks[0].layers,
                      np.concatenate([b.counts for b in blocks]))
    if steps is not None:
        keep = np.isin(block.steps, steps)
        block = HistBlock(block.steps[keep], block.layers, block.counts[keep])
    return block if len(block) else None


def histogram_steps(s: Session, *, job_id: str) -> np.ndarray:
    """The steps that have histograms, without reading any counts."""
    rows = s.scalars(select(HistChunk.steps).where(HistChunk.job_id == job_id)
                     .order_by(HistChunk.first_step, HistChunk.id))
    parts = [np.frombuffer(blob, np.int64) for blob in rows]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _hist(chunk: HistChunk) -> HistBlock:
    steps = np.frombuffer(chunk.steps, np.int64)
    counts = np.frombuffer(chunk.counts, np.float32).reshape(len(steps), len(chunk.layers), BINS)
    return HistBlock(steps, tuple(chunk.layers), counts)


def _decode(chunk: Any) -> tuple[np.ndarray, np.ndarray]:
    steps = np.frombuffer(chunk.steps, dtype=np.int64)
    return steps, np.frombuffer(chunk.values, dtype=np.float32).reshape(len(steps), chunk.n_layers)


def norm_layers(s: Session, *, job_id: str, kind: str) -> tuple[str, ...] | None:
    """The column names of a job's ``kind`` series; None when it never recorded that kind."""
    layers = (s.scalar(select(Job.norm_layers).where(Job.id == job_id)) or {}).get(kind)
    return tuple(layers) if layers else None


def _chunks(job_id: str, kind: str, start: int | None, end: int | None) -> list[Any]:
    """The WHERE of the chunks of a series that hold a step in ``[start, end)``."""
    where = [NormChunk.job_id == job_id, NormChunk.kind == kind]
    if start is not None:
        where.append(NormChunk.last_step >= _step(start))
    if end is not None:
        where.append(NormChunk.first_step < _step(end))
    return where


def _in_range(steps: np.ndarray, start: int | None, end: int | None) -> np.ndarray | None:
    """Mask of the steps in ``[start, end)``; None when all are."""
    keep = np.ones(len(steps), bool)
    if start is not None:
        keep &= steps >= start
    if end is not None:
        keep &= steps < end
    return None if keep.all() else keep


class Extent(NamedTuple):
    """Where a series' rows are: how many, and the first steps of its first and last chunks, its last step."""

    rows: int
    first_chunk: int
    last_chunk: int
    last_step: int


def series_extent(s: Session, *, job_id: str, kind: str, start: int | None = None,
                  end: int | None = None) -> Extent:
    """The extent of the series in ``[start, end)``: rows counted exactly without reading any values (only
    the step lists of the chunks that straddle an edge)."""
    where = _chunks(job_id, kind, start, end)
    total, lo, hi, last = s.execute(select(func.coalesce(func.sum(func.length(NormChunk.steps)), 0),
                                           func.min(NormChunk.first_step), func.max(NormChunk.first_step),
                                           func.max(NormChunk.last_step)).where(*where)).one()
    if lo is None:
        return Extent(0, 0, -1, -1)
    rows = int(total) // 8
    edges = []
    if start is not None:
        edges.append(NormChunk.first_step < _step(start))
    if end is not None:
        edges.append(NormChunk.last_step >= _step(end))
    if edges:
        for (blob,) in s.execute(select(NormChunk.steps).where(*where, or_(*edges))):
            keep = _in_range(np.frombuffer(blob, np.int64), start, end)
            rows -= 0 if keep is None else int((~keep).sum())
    return Extent(rows, int(lo), int(hi), min(int(last), end - 1) if end is not None else int(last))


def norm_page(s: Session, *, job_id: str, kind: str, first_from: int, first_to: int, start: int | None = None,
              end: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows in ``[start, end)`` of the chunks whose first step is in ``[first_from, first_to)``, joined
    (None when there are none): one page of a series, read in a transaction of its own."""
    # Core, not the ORM: a page is hundreds of rows of two blobs, and the ORM's per-row work is half a read.
    rows = s.connection().execute(select(NormChunk.steps, NormChunk.values, NormChunk.n_layers)
                                  .where(*_chunks(job_id, kind, start, end), NormChunk.first_step >= _step(first_from),
                                         NormChunk.first_step < _step(first_to))
                                  .order_by(NormChunk.first_step, NormChunk.id)).all()
    if not rows:
        return None
    # The chunks of one series have the same columns: decode the joined bytes at once (40,000 chunks of a
    # long series decoded one by one cost more than the rest of a read).
    steps = np.frombuffer(b"".join([r[0] for r in rows]), dtype=np.int64)
    values = np.frombuffer(b"".join([r[1] for r in rows]), dtype=np.float32).reshape(len(steps), rows[0][2])
    keep = _in_range(steps, start, end)
    return (steps, values) if keep is None else (steps[keep], values[keep])


def load_norms(s: Session, *, job_id: str, kind: str, start: int | None = None,
               end: int | None = None) -> NormBlock | None:
    """A job's stored ``kind`` series (steps ``start`` to ``end``, end exclusive) in memory, None if never
    recorded. A series may be long: readers that serve requests go page by page (``jobdata.norm_pages``)."""
    layers = norm_layers(s, job_id=job_id, kind=kind)
    if layers is None:
        return None
    page = norm_page(s, job_id=job_id, kind=kind, first_from=-(2**62), first_to=2**62, start=start, end=end)
    if page is None:
        return NormBlock(kind=kind, steps=np.zeros(0, np.int64), layers=layers,
                         values=np.zeros((0, len(layers)), np.float32))
    return NormBlock(kind=kind, steps=page[0], layers=layers, values=page[1])


# --- other job data ---------------------------------------------------------------------------------------------


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def put_array(s: Session, *, job_id: str, name: str, array: np.ndarray) -> None:
    """Keep ``array`` under ``name`` for the job (replacing an earlier one)."""
    s.execute(delete(JobArray).where(JobArray.job_id == job_id, JobArray.name == name))
    s.add(JobArray(job_id=job_id, name=name, data=encode_array(array)))


def get_array(s: Session, *, job_id: str, name: str) -> np.ndarray | None:
    return decode_array(s.scalar(select(JobArray.data).where(JobArray.job_id == job_id, JobArray.name == name)))


def decode_array(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)
