"""``deepgrad-server``: the API and its embedded worker, with settings from DEEPGRAD_* / .env or flags."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepgrad-server", description="Run the DeepGrad API and its worker. "
                                     "Every option is also a DEEPGRAD_* environment variable (see README).")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, help="database, token and checkpoints (default ~/.deepgrad)")
    parser.add_argument("--data-root", type=Path, help="data sets by name (default <data dir>/data)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    parser.add_argument("--no-worker", action="store_true", help="serve the API only; run no jobs here")
    parser.add_argument("--executor", choices=["local", "ray"], help="where jobs run: local child processes "
                        "(default) or a Ray cluster")
    parser.add_argument("--ray-address", help="the Ray cluster's Jobs API, e.g. http://head:8265")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir), e.g. "
                        "postgresql+psycopg://user@host/db; a URL with a password belongs in DEEPGRAD_DATABASE_URL, "
                        "not on a command line others can read")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve",
                        help="serve (default): the API and its worker; migrate: bring the database's schema to "
                        "this version and exit (every start does it too; for operators who upgrade first)")
    parser.add_argument("--check", action="store_true", help="with migrate: only tell the schema's revision")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "data_dir": args.data_dir,
                                   "data_root": args.data_root, "device": args.device, "executor": args.executor,
                                   "ray_address": args.ray_address, "database_url": args.database_url}.items()
                 if v is not None}
    if args.no_worker:
        overrides["worker"] = False

    from deepgrad_server.settings import Settings

    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        sys.stderr.write("deepgrad-server: invalid settings:\n" + "\n".join(
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors()) + "\n")
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up; our own lines say what changed
    code = _schema(settings.resolved_database_url, only=args.command == "migrate", check=args.check)
    if code is not None:
        return code

    import uvicorn

    from deepgrad_server.app import create_app
    from deepgrad_server.connections import fit_connection_limit, guarded_protocol

    # Descriptors beyond the connections: database connections (up to 3 files each in WAL mode), logs, the
    # job processes' pipes, the event loop's own.
    reserve = 64 + 4 * (settings.api_threads + settings.render_threads + 8)
    limit = fit_connection_limit(settings.max_connections, reserve)
    sys.stderr.write(f"DeepGrad server: data in {settings.data_dir}, data sets in {settings.resolved_data_root}\n")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=5, http=guarded_protocol(limit, settings.header_timeout))
    return 0


def _schema(url: str, *, only: bool, check: bool) -> int | None:
    """Bring the schema to this version (or, ``check``, tell its revision); an exit code when the command ends
    here (``migrate``, or a database this version cannot use), None to go on serving."""
    from sqlalchemy.exc import SQLAlchemyError

    from deepgrad_server import migrations

    try:
        if check:
            found = migrations.current(url)
            at = ", ".join(found) or "none (an empty database, or one made before migrations)"
            sys.stdout.write(f"schema revision: {at}; this version's: {migrations.HEAD}\n")
            return 0 if found == (migrations.HEAD,) else 1
        found = migrations.upgrade(url)
    except migrations.SchemaTooNewError as err:
        sys.stderr.write(f"deepgrad-server: {err}\n")
        return 2
    except SQLAlchemyError as err:
        sys.stderr.write(f"deepgrad-server: cannot open the database: {str(err).splitlines()[0]}\n")
        return 2
    if only:
        before = ", ".join(found) or "none"
        sys.stdout.write(f"schema: already at {migrations.HEAD}\n" if found == (migrations.HEAD,)
                         else f"schema: {before} -> {migrations.HEAD}\n")
        return 0
    return None


if __name__ == "__main__":
    sys.exit(main())
