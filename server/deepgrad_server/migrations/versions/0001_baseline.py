"""Baseline: the schema as it was when migrations began (models.py at commit 6594f3a).

Databases from before migrations were made by ``create_all`` and carry no revision. They all hold this schema or an
older part of it: the first version had no ``layer_means`` column and none of ``job_arrays``, ``studies``,
``study_jobs`` and ``hist_chunks``. So this revision creates only the tables and the column a database lacks, and
leaves every existing row where it is: an empty database, one from before migrations and an older one all end here.

The tables are written out below, frozen, never imported from ``models.py``: later revisions change that file.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

schema = sa.MetaData()

sa.Table(
    "jobs", schema,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(12), nullable=False, unique=True, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.String(32)),
    sa.Column("message", sa.String(2000)),
    sa.Column("spec", sa.JSON(), nullable=False),
    sa.Column("idempotency_key", sa.String(200), unique=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("started_at", sa.Float()),
    sa.Column("finished_at", sa.Float()),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires", sa.Float()),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False),
    sa.Column("progress", sa.JSON()),
    sa.Column("environment", sa.JSON()),
    sa.Column("final", sa.JSON()),
    sa.Column("summary", sa.JSON()),
    sa.Column("layer_means", sa.JSON()),
    sa.Column("cost", sa.JSON()),
    sa.Column("per_class", sa.JSON()),
    sa.Column("confusion", sa.JSON()),
    sa.Column("layers", sa.JSON()),
    sa.Column("norm_layers", sa.JSON()),
    sa.Column("steps_per_epoch", sa.Integer()),
    sa.Column("diverged_at_step", sa.Integer()),
    sa.Column("filters", sa.LargeBinary()),
)
sa.Table(
    "norm_chunks", schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(12), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("first_step", sa.Integer(), nullable=False),
    sa.Column("last_step", sa.Integer(), nullable=False),
    sa.Column("n_layers", sa.Integer(), nullable=False),
    sa.Column("steps", sa.LargeBinary(), nullable=False),
    sa.Column("values", sa.LargeBinary(), nullable=False),
    sa.Index("ix_norm_chunks_job_kind_step", "job_id", "kind", "first_step"),
)
sa.Table(
    "epoch_metrics", schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(12), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("epoch", sa.Integer(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.UniqueConstraint("job_id", "epoch"),
)
sa.Table(
    "job_arrays", schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(12), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.UniqueConstraint("job_id", "name"),
)
sa.Table(
    "studies", schema,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(12), nullable=False, unique=True, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("base", sa.JSON(), nullable=False),
    sa.Column("grid", sa.JSON()),
    sa.Column("points", sa.JSON()),
    sa.Column("preset", sa.String(32)),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "study_jobs", schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.String(12), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("job_id", sa.String(12), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("overrides", sa.JSON(), nullable=False),
)
sa.Table(
    "hist_chunks", schema,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(12), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("first_step", sa.Integer(), nullable=False),
    sa.Column("last_step", sa.Integer(), nullable=False),
    sa.Column("layers", sa.JSON(), nullable=False),
    sa.Column("steps", sa.LargeBinary(), nullable=False),
    sa.Column("counts", sa.LargeBinary(), nullable=False),
    sa.Index("ix_hist_chunks_job_step", "job_id", "first_step"),
)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if inspector.has_table("jobs") and "layer_means" not in {c["name"] for c in inspector.get_columns("jobs")}:
        op.add_column("jobs", sa.Column("layer_means", sa.JSON()))  # a plain ADD COLUMN, on SQLite too
    schema.create_all(bind, checkfirst=True)  # the missing tables, with their indexes


def downgrade() -> None:
    schema.drop_all(op.get_bind())
