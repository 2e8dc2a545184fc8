"""jobs.run_token: the run (claim) of a job that may write to it.

Every claim of a job gives it a new token; the job's process writes only while the job still holds its token. A
process cut off from its supervisor (a Ray node behind a partition, a server that died while its cluster job ran on)
can then never write into the run that replaced it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_token", sa.String(16)))  # nullable: a plain ADD COLUMN, on SQLite too


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_token")
