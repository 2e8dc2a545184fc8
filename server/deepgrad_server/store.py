"""Every read and write of the job store, as functions of a session with keyword-only arguments.

Norm series arrive as ``NormBlock``s (``[steps x layers]`` float32 with int64 step numbers) and are
stored as they come, one row per block; reads concatenate the blocks of a step range and downsample.
"""

from __future__ import annotations

import io
import secrets
import time
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deepgrad_core.norms import NormBlock
from deepgrad_server.models import TERMINAL, EpochMetric, Job, NormChunk


class QueueFull(Exception):
    pass


class IdempotencyConflict(Exception):
    pass


def now() -> float:
    return time.time()


def new_id() -> str:
    return secrets.token_hex(6)


# --- jobs -------------------------------------------------------------------------------------------------------


def create_job(s: Session, *, spec: dict[str, Any], name: str, idempotency_key: str | None,
               max_queued: int) -> tuple[Job, bool]:
    """Queue a job; with an ``idempotency_key`` already used, return that job instead (``created`` False)."""
    if idempotency_key is not None:
        existing = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.spec != spec or existing.name != name:
                raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for job {existing.id} "
                                          "with a different body; use a new key for a new job")
            return existing, False
    queued = s.scalar(select(func.count()).select_from(Job).where(Job.state == "queued"))
    if queued >= max_queued:
        raise QueueFull(f"the queue is full ({queued} jobs queued, limit {max_queued}); retry when some have run")
    for _ in range(5):  # 48 random bits: a collision is rare, but never fatal
        job = Job(id=new_id(), name=name, state="queued", spec=spec, idempotency_key=idempotency_key,
                  created_at=now(), attempts=0, cancel_requested=False)
        try:
            with s.begin_nested():
                s.add(job)
            return job, True
        except IntegrityError:
            if idempotency_key is not None and s.scalar(select(Job).where(Job.idempotency_key == idempotency_key)):
                return create_job(s, spec=spec, name=name, idempotency_key=idempotency_key, max_queued=max_queued)
    raise RuntimeError("could not allocate a job id")


def get_job(s: Session, *, job_id: str) -> Job | None:
    return s.scalar(select(Job).where(Job.id == job_id))


def list_jobs(s: Session, *, state: str | None = None, name: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[Job], int]:
    """Newest first; ``name`` matches a substring."""
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state)
    if name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.name.like(f"%{escaped}%", escape="\\"))
    count = s.scalar(select(func.count()).select_from(query.subquery()))
    jobs = s.scalars(query.order_by(Job.seq.desc()).limit(limit).offset(offset)).all()
    return list(jobs), count


def queue_counts(s: Session) -> dict[str, int]:
    rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: n for state, n in rows}


def claim_next(s: Session, *, owner: str, lease_seconds: float) -> Job | None:
    """Take the oldest queued job and lease it to ``owner``; None when the queue is empty.

    One UPDATE whose WHERE re-checks the state, so two workers can never take the same job.
    """
    while True:
        seq = s.scalar(select(Job.seq).where(Job.state == "queued").order_by(Job.seq).limit(1))
        if seq is None:
            return None
        t = now()
        taken = s.execute(update(Job).where(Job.seq == seq, Job.state == "queued").values(
            state="running", lease_owner=owner, lease_expires=t + lease_seconds, attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, t))).rowcount
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
    job = get_job(s, job_id=job_id)
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
    done = s.execute(query.values(state=state, reason=reason, message=message, finished_at=now(),
                                  lease_owner=None, lease_expires=None, **fields)).rowcount
    return bool(done)


def update_job(s: Session, *, job_id: str, **fields: Any) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(**fields))


def requeue_or_fail(s: Session, *, job_id: str, max_retries: int, why: str) -> str:
    """A running job lost its worker: back to the queue (same place), or ``failed/worker_lost``."""
    job = get_job(s, job_id=job_id)
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
    job.message = f"{why}; requeued to resume from its last checkpoint (attempt {job.attempts + 1})"
    return "queued"


def expired_leases(s: Session, *, at: float) -> list[Job]:
    return list(s.scalars(select(Job).where(Job.state == "running", or_(Job.lease_expires.is_(None),
                                                                        Job.lease_expires < at))))


def running_jobs(s: Session) -> list[Job]:
    return list(s.scalars(select(Job).where(Job.state == "running")))


def delete_job(s: Session, *, job_id: str) -> None:
    s.execute(delete(NormChunk).where(NormChunk.job_id == job_id))
    s.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
    s.execute(delete(Job).where(Job.id == job_id))


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
    s.execute(delete(NormChunk).where(NormChunk.job_id == job_id, NormChunk.first_step >= step))
    straddling = s.scalars(select(NormChunk).where(NormChunk.job_id == job_id, NormChunk.first_step < step,
                                                   NormChunk.last_step >= step)).all()
    for chunk in straddling:
        steps, values = _decode(chunk)
        keep = steps < step
        s.delete(chunk)
        s.add(NormChunk(**_chunk_row(job_id, chunk.kind, steps[keep], values[keep])))
    spe = s.scalar(select(Job.steps_per_epoch).where(Job.id == job_id))
    first_epoch = step // spe if spe else 0
    s.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch >= first_epoch))


def _decode(chunk: Any) -> tuple[np.ndarray, np.ndarray]:
    steps = np.frombuffer(chunk.steps, dtype=np.int64)
    return steps, np.frombuffer(chunk.values, dtype=np.float32).reshape(len(steps), chunk.n_layers)


def load_norms(s: Session, *, job_id: str, kind: str, start: int | None = None,
               end: int | None = None) -> NormBlock | None:
    """The stored ``kind`` series of a job (steps ``start`` to ``end``, end exclusive), None if none."""
    layers = (s.scalar(select(Job.norm_layers).where(Job.id == job_id)) or {}).get(kind)
    if not layers:
        return None
    query = select(NormChunk.steps, NormChunk.values, NormChunk.n_layers).where(
        NormChunk.job_id == job_id, NormChunk.kind == kind)
    if start is not None:
        query = query.where(NormChunk.last_step >= start)
    if end is not None:
        query = query.where(NormChunk.first_step < end)
    rows = s.execute(query.order_by(NormChunk.first_step)).all()
    if not rows:
        return NormBlock(kind=kind, steps=np.zeros(0, np.int64), layers=tuple(layers),
                         values=np.zeros((0, len(layers)), np.float32))
    parts = [_decode(r) for r in rows]
    steps = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    keep = np.ones(len(steps), bool)
    if start is not None:
        keep &= steps >= start
    if end is not None:
        keep &= steps < end
    if not keep.all():
        steps, values = steps[keep], values[keep]
    return NormBlock(kind=kind, steps=steps, layers=tuple(layers), values=values)


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` rows that keep each column's shape: min and max of each bucket of steps.

    Every bucket gives two rows, at its first and last step; in each column the extreme that comes
    first sits on the first row. A bucket holding a NaN or infinity shows it (divergence must not be
    smoothed away). All columns share the step axis, so the result is still a ``[steps x layers]`` table.
    """
    n = len(steps)
    if n <= max_points:
        return steps, values
    buckets = max(max_points // 2, 1)
    size = -(-n // buckets)
    buckets = -(-n // size)
    pad = buckets * size - n
    v = values.astype(np.float64)
    if pad:
        v = np.concatenate([v, np.repeat(v[-1:], pad, axis=0)])
    v = v.reshape(buckets, size, -1)
    finite = np.isfinite(v)
    lo_i = np.where(finite, v, np.inf).argmin(axis=1)
    hi_i = np.where(finite, v, -np.inf).argmax(axis=1)
    lo = np.take_along_axis(v, lo_i[:, None, :], axis=1)[:, 0]
    hi = np.take_along_axis(v, hi_i[:, None, :], axis=1)[:, 0]
    first = np.where(lo_i <= hi_i, lo, hi)
    second = np.where(lo_i <= hi_i, hi, lo)
    bad = ~finite.all(axis=1)
    if bad.any():  # show the first non-finite value of the bucket on its second row
        bad_i = (~finite).argmax(axis=1)
        second = np.where(bad, np.take_along_axis(v, bad_i[:, None, :], axis=1)[:, 0], second)
    idx_first = np.arange(buckets) * size
    idx_last = np.minimum(idx_first + size - 1, n - 1)
    out_steps = np.stack([steps[idx_first], steps[idx_last]], axis=1).reshape(-1)
    out_values = np.stack([first, second], axis=1).reshape(buckets * 2, -1)
    single = idx_first == idx_last  # a one-step bucket (the last, possibly): keep one row
    if single.any():
        keep = np.ones(buckets * 2, bool)
        keep[np.flatnonzero(single) * 2 + 1] = False
        out_steps, out_values = out_steps[keep], out_values[keep]
    return out_steps, out_values


# --- other job data ---------------------------------------------------------------------------------------------


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)
