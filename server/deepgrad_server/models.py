"""Database tables. Norm series are stored as blocks of steps (one row per job, kind and flush),
each holding int64 step numbers and a float32 ``[steps x layers]`` array, never one row per value."""

from __future__ import annotations

from typing import Any, Literal, get_args

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A job's states, listed once on this side (the client keeps its own list: it imports nothing of ours).
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "diverged"]
STATES: tuple[str, ...] = get_args(JobState)
TERMINAL = frozenset(STATES) - {"queued", "running"}


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # queue order
    id: Mapped[str] = mapped_column(String(12), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(String(2000))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[float | None] = mapped_column(Float)
    run_token: Mapped[str | None] = mapped_column(String(16))  # the run (claim) whose process may write the job
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    final: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the verdicts: small, in every Job response
    # Per-layer mean norm per epoch (kind -> layer -> [epochs]): ~90 KB for a 100-epoch run, so it is
    # loaded only where asked for (GET /jobs/{id}/metrics), never with every job row.
    layer_means: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    per_class: Mapped[list[Any] | None] = mapped_column(JSON)
    confusion: Mapped[list[Any] | None] = mapped_column(JSON)
    layers: Mapped[list[Any] | None] = mapped_column(JSON)
    norm_layers: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # kind -> column names of its blocks
    steps_per_epoch: Mapped[int | None] = mapped_column(Integer)
    diverged_at_step: Mapped[int | None] = mapped_column(Integer)
    filters: Mapped[bytes | None] = mapped_column(LargeBinary)  # .npy bytes, float32 [N, kh, kw, C]


class NormChunk(Base):
    __tablename__ = "norm_chunks"
    __table_args__ = (Index("ix_norm_chunks_job_kind_step", "job_id", "kind", "first_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    first_step: Mapped[int] = mapped_column(Integer)
    last_step: Mapped[int] = mapped_column(Integer)
    n_layers: Mapped[int] = mapped_column(Integer)
    steps: Mapped[bytes] = mapped_column(LargeBinary)  # int64 [n]
    values: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [n, n_layers], row-major


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)


class JobArray(Base):
    """Arrays a job keeps besides its series, by name (``filters_init``: the first conv's filters at
    initialization), as ``.npy`` bytes. A table of its own, so that a database from before it gains it."""

    __tablename__ = "job_arrays"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Study(Base):
    """A set of paired jobs run as one object: a base spec and the points (overrides) that vary it."""

    __tablename__ = "studies"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(12), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(100))
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted (each job's spec is the resolved one)
    grid: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    points: Mapped[list[Any] | None] = mapped_column(JSON)
    preset: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)


class StudyJob(Base):
    """A job of a study, its place in the study and what it varies. A table of its own, so that a database
    from before studies gains it and the jobs table stays as it was."""

    __tablename__ = "study_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    position: Mapped[int] = mapped_column(Integer)
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON)


class HistChunk(Base):
    """Weight-gradient histograms of one flush: int64 steps ``[n]`` and float32 counts ``[n, layers, bins]``
    (the fixed bins of ``deepgrad_core.histograms``); layer names are the job's weight norm columns."""

    __tablename__ = "hist_chunks"
    __table_args__ = (Index("ix_hist_chunks_job_step", "job_id", "first_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    first_step: Mapped[int] = mapped_column(Integer)
    last_step: Mapped[int] = mapped_column(Integer)
    layers: Mapped[list[str]] = mapped_column(JSON)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    counts: Mapped[bytes] = mapped_column(LargeBinary)
