"""Engine and sessions.

SQLite runs in WAL mode with a busy timeout, so the API keeps reading while a job's process writes.
Write transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes
can fail at once with "database is locked" when another writer got in between (the busy timeout
cannot help there); taking the write lock up front makes writers queue politely instead. Reads use a
plain deferred ``BEGIN`` and never wait for writers. Other databases (PostgreSQL) are used as
SQLAlchemy configures them.

Opening a database brings its schema to the newest revision (``deepgrad_server.migrations``); one at the newest
costs a single query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from deepgrad_server import migrations

BUSY_TIMEOUT_S = 60.0
# JSON columns hold strict JSON only: a NaN or infinity raises here instead of being stored as ``NaN``,
# which SQLite's json_extract, PostgreSQL and every other reader refuse.
_strict_dumps = partial(json.dumps, allow_nan=False)


class Database:
    """An engine plus two session factories: ``reading()`` and ``writing()`` (commits at the end).

    Raises ``migrations.SchemaTooNewError`` for a database that a later DeepGrad has migrated.
    """

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
                                        pool_size=pool_size, max_overflow=4, json_serializer=_strict_dumps)
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=4,
                                        json_serializer=_strict_dumps)
        self.migrated_from = migrations.migrate(self.engine)  # the revisions it was at (empty: none)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(immediate=True), expire_on_commit=False)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session whose work commits when the block ends (rolled back on an exception)."""
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 (a DB-API connection)
    # The driver's own transaction handling would defer BEGIN past our control; the "begin" event issues it.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: a process crash loses nothing committed
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:  # noqa: ANN001 (a SQLAlchemy Connection)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN")
