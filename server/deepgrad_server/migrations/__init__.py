"""Schema migrations (Alembic), run in-process: every ``Database(url)`` calls ``migrate(engine)``.

A database already at ``HEAD`` costs one small query: its revision is compared with the constant below, without
importing Alembic (~0.3 s of imports that job processes, which start often, never pay). Anything else is upgraded
in one transaction under a lock (PostgreSQL: an advisory lock; SQLite: the write lock of ``BEGIN IMMEDIATE``), so
processes starting at once on one database migrate it once and the others find it done. A database from before
migrations (tables, no revision) needs nothing special: the baseline creates only what it lacks.

Operators: ``upgrade(url)`` and ``current(url)``. Developers, after changing ``models.py``: upgrade a scratch
database to head, write the next revision with
``alembic.command.revision(alembic_config(url), "what changed", autogenerate=True, rev_id="0002")``, review it
(SQLite alters by copying tables: ``batch_alter_table``), and set ``HEAD``. ``tests/server/test_server_migrations.py``
fails until the models, the revisions and ``HEAD`` agree.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, inspect, pool, text

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

HEAD = "0002"  # the newest revision in versions/
HERE = Path(__file__).resolve().parent
# Held by whoever migrates a PostgreSQL database (any 64-bit number other programs on it do not use): "deepgrad".
PG_LOCK_KEY = int.from_bytes(b"deepgrad", "big") >> 1


class SchemaTooNewError(RuntimeError):
    """The database is at a revision this code does not know: a later DeepGrad wrote it."""


def migrate(engine: Engine, config: Config | None = None) -> tuple[str, ...]:
    """Bring the database to the newest revision; return the revisions it was at (empty: none recorded).

    ``config`` (tests) replaces the package's own revisions, e.g. to add one.
    """
    head = HEAD if config is None else _script(config).get_current_head()
    with engine.connect() as conn:
        found = _revisions(conn)
    if found == (head,):
        return found
    return _upgrade(engine, config or alembic_config(), head)


def upgrade(url: str) -> tuple[str, ...]:
    """Migrate the database at ``url`` to ``HEAD`` (what every start does); return the revisions it was at."""
    from deepgrad_server.db import Database  # db imports this module

    db = Database(url, pool_size=1)
    db.dispose()
    return db.migrated_from


def current(url: str) -> tuple[str, ...]:
    """The revisions the database at ``url`` is at, changing nothing (empty: none recorded)."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return _revisions(conn)
    finally:
        engine.dispose()


def alembic_config(url: str | None = None) -> Config:
    """This package's Alembic configuration, built in code (no alembic.ini): for ``alembic.command``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _revisions(conn: Connection) -> tuple[str, ...]:
    if not inspect(conn).has_table("alembic_version"):
        return ()
    return tuple(sorted(conn.scalars(text("SELECT version_num FROM alembic_version"))))


def _script(config: Config):  # noqa: ANN202 (alembic.script.ScriptDirectory, imported only here)
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config)


def _upgrade(engine: Engine, config: Config, head: str) -> tuple[str, ...]:
    from alembic import command

    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it, dropping the old one and renaming the copy: with foreign keys on,
            # dropping ``jobs`` would cascade-delete every job's series. The pragma is ignored inside a transaction,
            # so it is set on the driver's connection before ours begins, and set back after.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.execution_options(immediate=True).begin():  # SQLite: BEGIN IMMEDIATE takes the write lock
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
                found = _revisions(conn)  # again, under the lock: another process may have migrated meanwhile
                if found == (head,):
                    return found
                _refuse_unknown(found, config, head)
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
    log.info("database %s: schema upgraded from %s to %s", engine.url.render_as_string(hide_password=True),
             ", ".join(found) or "none", head)
    return found


def _refuse_unknown(found: tuple[str, ...], config: Config, head: str) -> None:
    known = {script.revision for script in _script(config).walk_revisions()}
    for revision in found:
        if revision not in known:
            raise SchemaTooNewError(
                f"the database is at schema revision {revision!r}, which this DeepGrad does not know (its newest is "
                f"{head!r}): a later version of DeepGrad wrote it. Run that version, or upgrade this one.")
