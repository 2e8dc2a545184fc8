"""The FastAPI application: ``create_app(settings)``; the lifespan opens the store and starts the worker."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import matplotlib
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from deepgrad_server import __version__, admission
from deepgrad_server.cache import JobCache
from deepgrad_server.db import Database
from deepgrad_server.deps import require_token
from deepgrad_server.errors import add_error_handlers
from deepgrad_server.fanout import Hub
from deepgrad_server.hosts import HostCheck
from deepgrad_server.limits import BodySizeLimit
from deepgrad_server.rendering import RenderPool
from deepgrad_server.routes import api_router
from deepgrad_server.sessions import BrowserSessions, add_session_handlers, announce_login_link
from deepgrad_server.settings import Settings
from deepgrad_server.worker import make_workers

log = logging.getLogger("deepgrad_server")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API, with the store opened and (when ``settings.worker``) the embedded worker running."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Request threads never outnumber database connections: a thread waiting for a connection
        # is latency for nothing (and, past the pool timeout, an error).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        # Figures and /health have threads of their own (made here: limiters belong to the running loop).
        app.state.render_pool = RenderPool(settings.render_threads, settings.render_queue)
        app.state.health_limiter = anyio.CapacityLimiter(2)
        # Render threads and /health read the store too.
        app.state.db = Database(settings.resolved_database_url,
                                pool_size=settings.api_threads + settings.render_threads + 2)
        token, generated = settings.ensure_token()
        app.state.token = token
        app.state.sessions = BrowserSessions(token) if token is not None else None  # browsers' login links
        if generated:  # printed once, on the first start; afterwards it is in the file only
            sys.stderr.write(f"DeepGrad API token (stored in {settings.data_dir / 'token'}, mode 0600):\n"
                             f"    {token}\n")
        elif token is None:
            log.warning("auth is disabled: anyone who can reach %s:%d can run jobs", settings.host, settings.port)
        if app.state.sessions is not None:
            announce_login_link(settings, app.state.sessions)  # on a terminal only: never into a log
        # One worker per device: each GPU trains one job at a time.
        app.state.workers = make_workers(settings, app.state.db) if settings.worker else []
        for worker in app.state.workers:
            worker.start()
        if admission.memory_budget(settings) is not None:  # submissions will be sized: have torch ready
            threading.Thread(target=admission.warm_up, name="deepgrad-warm-up", daemon=True).start()
        # Figures: simplify line paths to within one pixel (matplotlib's default is 1/9 of one). A 20-layer,
        # 2,000-point norm plot draws in 2/3 of the time and looks the same. Set once, before any request
        # thread draws: rcParams are process-wide, so a per-render rc_context would race between threads.
        matplotlib.rcParams["path.simplify_threshold"] = 1.0
        gc.freeze()  # startup objects never die: keep the collector's passes short while rendering plots
        try:
            async with Hub.running(app.state.db) as app.state.fanout:  # one store reader per followed job (events)
                yield
        finally:
            for worker in app.state.workers:
                worker.stop()
            app.state.db.dispose()

    app = FastAPI(title="DeepGrad", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description="Train CNNs and watch their per-layer gradient norms. Every "
                  "endpoint but /health needs `Authorization: Bearer <token>`.")
    app.state.settings = settings
    cache = settings.cache_mib << 20
    app.state.plot_cache = JobCache(max_bytes=cache // 4)  # PNGs: ~100 KB each
    app.state.series_cache = JobCache(max_bytes=cache - cache // 4)  # series answers and figures' series
    app.include_router(api_router)
    _add_docs(app, public=settings.public_docs)
    add_error_handlers(app)
    add_session_handlers(app)  # a browser without a session is sent to the login page
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.host_allowlist is not None or not settings.auth:  # auth off: loopback names only (None)
        app.add_middleware(HostCheck, allowed=settings.host_allowlist)  # outermost: nothing runs for a bad Host
    return app


def _add_docs(app: FastAPI, *, public: bool) -> None:
    """/openapi.json and /docs: behind the token unless ``public_docs`` (they hold no data, but
    "every endpoint but /health needs the token" is a rule worth keeping simple)."""
    deps = [] if public else [Depends(require_token)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=deps)
    def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=deps)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="DeepGrad API")
