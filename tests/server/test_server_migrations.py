"""Schema migrations on SQLite and a real PostgreSQL: databases from before migrations upgrade in place with their
rows whole, empty ones get the baseline, concurrent starts migrate once, a later revision runs and a revision from a
later DeepGrad is refused, and the models agree with the revisions (what catches a model change without one)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, pool, text

from deepgrad_server import migrations, store
from deepgrad_server.db import Database
from deepgrad_server.models import Base

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = DATA / "pre_migration.db"  # made by commit 6594f3a's store: see tests/data/pre_migration.py
REPO = Path(__file__).resolve().parents[2]


def _load(path: Path):  # noqa: ANN202 (a module)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pre_migration = _load(DATA / "pre_migration.py")


def baseline_schema():  # noqa: ANN201 (sqlalchemy.MetaData)
    """The tables as ``create_all`` made them before migrations (the baseline revision keeps them frozen)."""
    return ScriptDirectory.from_config(migrations.alembic_config()).get_revision("0001").module.schema


def make_pre_migration(url: str) -> None:
    """A database as DeepGrad made it before migrations, holding ``pre_migration.content()``.

    SQLite: a copy of the committed file. PostgreSQL: the same tables made by that ``create_all`` and the file's rows
    copied in (rather than written through today's store, whose models will move on from that schema).
    """
    if url.startswith("sqlite"):
        shutil.copyfile(FIXTURE, url.split("///", 1)[1])
        return
    schema = baseline_schema()
    source = create_engine(f"sqlite:///file:{FIXTURE}?mode=ro&uri=true", poolclass=pool.NullPool)
    target = create_engine(url, poolclass=pool.NullPool)
    schema.create_all(target)
    with source.connect() as read, target.begin() as write:
        for table in schema.sorted_tables:
            rows = [dict(row) for row in read.execute(table.select()).mappings()]
            if rows:
                write.execute(table.insert(), rows)
            key = next(iter(table.primary_key.columns)).name
            write.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key}'), "
                               f"(SELECT max({key}) FROM {table.name}))"))
    source.dispose()
    target.dispose()


def check_content(db: Database) -> None:
    """Every job, series, epoch, array, histogram and the study of ``pre_migration.content()``, read through the
    store."""
    c = pre_migration.content()
    with db.reading() as s:
        jobs = {job.name: job for job in store.list_jobs(s, limit=100)[0]}
        assert set(jobs) == {"vgg11 baseline", "idempotent failed", "depth/1 vgg11", "depth/2 vgg13"}
        base, job = c["vgg11 baseline"], jobs["vgg11 baseline"]
        assert (job.state, job.spec, job.steps_per_epoch, job.summary, job.final, job.layers) == (
            "succeeded", pre_migration.SPEC, 20, {"vanishing": False}, {"test_acc": 0.2}, list(pre_migration.LAYERS))
        for kind, expected in base["norms"].items():
            got = store.load_norms(s, job_id=job.id, kind=kind)
            assert got.layers == expected.layers
            np.testing.assert_array_equal(got.steps, expected.steps)
            np.testing.assert_array_equal(got.values, expected.values)
        assert store.epochs(s, job_id=job.id) == base["epochs"]
        assert store.layer_means(s, job_id=job.id) == base["fields"]["layer_means"]
        np.testing.assert_array_equal(store.get_array(s, job_id=job.id, name="filters_init"), base["filters_init"])
        np.testing.assert_array_equal(store.decode_array(job.filters), base["filters"])
        hist = store.load_histograms(s, job_id=job.id)
        np.testing.assert_array_equal(hist.steps, base["histograms"].steps)
        np.testing.assert_array_equal(hist.counts, base["histograms"].counts)
        failed = jobs["idempotent failed"]
        assert (failed.state, failed.reason, failed.message, failed.idempotency_key) == ("failed", "error",
                                                                                           "it broke", "key-1")
        studies, count = store.list_studies(s)
        study, expected = studies[0], c["study"]
        assert count == 1 and (study.name, study.base, study.grid, study.points) == (
            expected["name"], expected["base"], expected["grid"], expected["points"])
        links = store.study_jobs(s, study_id=study.id)
        assert [(link.position, link.overrides, j.name) for link, j in links] == [
            (0, {"arch": "vgg11"}, "depth/1 vgg11"), (1, {"arch": "vgg13"}, "depth/2 vgg13")]


def check_usable(db: Database) -> None:
    """Writes after an upgrade: keys still unique, new rows get new ids, a deleted job takes its series along."""
    with db.writing() as s:
        again, created = store.create_job(s, spec=pre_migration.SPEC, name="idempotent failed",
                                          idempotency_key="key-1", max_queued=100)
        assert not created and again.state == "failed"
        new, created = store.create_job(s, spec=pre_migration.SPEC, name="new", idempotency_key=None, max_queued=100)
        assert created
        old = store.list_jobs(s, name="vgg11 baseline")[0][0]
        store.delete_job(s, job_id=old.id)
    with db.reading() as s:
        assert store.load_norms(s, job_id=old.id, kind="weight") is None
        assert store.get_job(s, job_id=new.id).seq > 4


def schema_diffs(db: Database) -> list:
    """What autogenerate would write for the models against this database (``alembic check``): nothing, or a
    model changed without a revision."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_head_is_the_newest_revision() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [migrations.HEAD], "set migrations.HEAD to the newest revision (one head only)"


def test_pre_migration_database_upgrades_whole(database_url: str) -> None:
    make_pre_migration(database_url)
    db = Database(database_url)
    try:
        assert db.migrated_from == ()
        assert migrations.current(database_url) == (migrations.HEAD,)
        assert schema_diffs(db) == []
        check_content(db)
        check_usable(db)
    finally:
        db.dispose()


def test_first_version_database_gains_later_tables(database_url: str) -> None:
    """The first store had none of the later tables and no ``jobs.layer_means``: the baseline adds them."""
    make_pre_migration(database_url)
    engine = create_engine(database_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        for table in ("hist_chunks", "study_jobs", "studies", "job_arrays"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN layer_means"))
    engine.dispose()
    db = Database(database_url)
    try:
        assert schema_diffs(db) == []
        with db.reading() as s:
            jobs = {job.name: job for job in store.list_jobs(s)[0]}
            assert len(jobs) == 4 and store.layer_means(s, job_id=jobs["vgg11 baseline"].id) is None
            weight = store.load_norms(s, job_id=jobs["vgg11 baseline"].id, kind="weight")
        expected = pre_migration.content()["vgg11 baseline"]["norms"]["weight"]
        np.testing.assert_array_equal(weight.values, expected.values)
    finally:
        db.dispose()


def test_empty_database_gets_the_baseline(database_url: str) -> None:
    assert migrations.current(database_url) == ()
    assert migrations.upgrade(database_url) == ()
    assert migrations.upgrade(database_url) == (migrations.HEAD,)  # the second start finds it done
    db = Database(database_url)
    try:
        assert db.migrated_from == (migrations.HEAD,)
        assert schema_diffs(db) == []
        assert set(inspect(db.engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
    finally:
        db.dispose()


def test_concurrent_starts_migrate_once(database_url: str) -> None:
    """Four processes open one fresh database at the same moment: one migrates, the others find it done."""
    start = time.time() + 3  # after every interpreter has imported
    code = ("import json, sys, time\nfrom deepgrad_server.db import Database\n"
            f"time.sleep(max(0.0, {start} - time.time()))\n"
            "db = Database(sys.argv[1]); print(json.dumps(db.migrated_from)); db.dispose()")
    procs = [subprocess.Popen([sys.executable, "-c", code, database_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(tuple(json.loads(out)))
    assert sorted(results) == [(), *[(migrations.HEAD,)] * 3]
    assert migrations.current(database_url) == (migrations.HEAD,)


def test_revision_from_a_later_deepgrad_is_refused(database_url: str) -> None:
    migrations.upgrade(database_url)
    engine = create_engine(database_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    engine.dispose()
    with pytest.raises(migrations.SchemaTooNewError, match="'0042_from_the_future'.*later version of DeepGrad"):
        Database(database_url)


LATER_REVISION = '''
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"


def upgrade() -> None:
    # SQLite cannot change a column's type in place: it copies jobs, drops the old table and renames the copy
    # (the table every series references). PostgreSQL alters it.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.alter_column("name", type_=sa.String(200), existing_type=sa.String(100), existing_nullable=False)
'''


def test_later_revision_upgrades_in_place(database_url: str, tmp_path: Path) -> None:
    """A real next revision (kept in the test) on a database from before migrations: the series stay whole, also
    where SQLite rebuilds the jobs table that every series references; this code then refuses the result."""
    make_pre_migration(database_url)
    later = tmp_path / "later"
    later.mkdir()
    (later / "9001_priority.py").write_text(LATER_REVISION.format(head=migrations.HEAD))
    config = migrations.alembic_config()
    config.set_main_option("version_locations", f"{migrations.HERE / 'versions'}{os.pathsep}{later}")
    db = Database(database_url)  # to the baseline; then on to the later revision
    try:
        assert migrations.migrate(db.engine, config) == (migrations.HEAD,)
        assert migrations.current(database_url) == ("9001",)
        with db.engine.connect() as conn:
            assert "priority" in {c["name"] for c in inspect(conn).get_columns("jobs")}
            if conn.dialect.name == "sqlite":  # foreign keys are enforced again once the migration is over
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        check_content(db)
    finally:
        db.dispose()
    with pytest.raises(migrations.SchemaTooNewError, match="'9001'"):
        Database(database_url)


def test_the_migrate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``deepgrad-server migrate`` (and ``--check``) for operators; a too-new or unreachable database is a clear
    error at start, not a traceback."""
    from deepgrad_server.main import main

    data = ["--data-dir", str(tmp_path)]
    assert main([*data, "migrate", "--check"]) == 1
    assert "schema revision: none" in capsys.readouterr().out
    assert main([*data, "migrate"]) == 0
    assert capsys.readouterr().out == f"schema: none -> {migrations.HEAD}\n"
    assert main([*data, "migrate"]) == 0
    assert capsys.readouterr().out == f"schema: already at {migrations.HEAD}\n"
    assert main([*data, "migrate", "--check"]) == 0
    with sqlite3.connect(tmp_path / "deepgrad.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    assert main(data) == 2
    assert "'9999', which this DeepGrad does not know" in capsys.readouterr().err
    assert main(["--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/none", "migrate"]) == 2
    assert "cannot open the database" in capsys.readouterr().err
