"""Dependencies as named aliases: the store, the settings, the token (or browser session) check."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deepgrad_server import sessions, store
from deepgrad_server.db import Database
from deepgrad_server.models import Job
from deepgrad_server.schemas import JOB_ID_PATTERN
from deepgrad_server.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="the token in <data dir>/token, or $DEEPGRAD_TOKEN")


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries the server's bearer token (compared in constant time) or a browser session
    cookie (``sessions``); a cookie request that changes something must also pass the CSRF check (403)."""
    expected: str | None = request.app.state.token
    if expected is None:  # auth disabled (loopback only: Settings refuses anything else)
        if request.method not in sessions.SAFE_METHODS:
            sessions.check_origin(request)  # no token to steal, but another site's page must not drive the API
        return
    if credentials is not None:  # a bearer token decides alone, right or wrong
        if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        return
    browser: sessions.BrowserSessions | None = getattr(request.app.state, "sessions", None)
    session = browser.session(request) if browser is not None else None
    if session is None:
        raise sessions.NotSignedIn(status.HTTP_401_UNAUTHORIZED, detail="missing bearer token: send 'Authorization: "
                                   "Bearer <token>' (the token is in the server's data directory, file 'token'); in "
                                   "a browser, sign in with a login link (deepgrad-client open)",
                                   headers={"WWW-Authenticate": "Bearer"})
    browser.check_csrf(request, session)


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="12 lowercase hex characters")]
StudyId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="12 lowercase hex characters")]


MAX_COMPARE = 12
IDS_PATTERN = rf"^\s*[0-9a-f]{{12}}(\s*,\s*[0-9a-f]{{12}}){{0,{MAX_COMPARE - 1}}}\s*$"
Ids = Annotated[str, Query(max_length=400, pattern=IDS_PATTERN,
                           description=f"1..{MAX_COMPARE} comma-separated job ids (12 lowercase hex characters)")]


def parse_ids(ids: str) -> list[str]:
    """The ids of a query ``Ids`` has checked, duplicates dropped."""
    parts = list(dict.fromkeys(p.strip() for p in ids.split(",") if p.strip()))
    bad = [p for p in parts if not re.fullmatch(JOB_ID_PATTERN, p)]
    if bad or not 1 <= len(parts) <= MAX_COMPARE:  # the pattern already says so: kept for direct callers
        raise invalid(f"ids must be 1..{MAX_COMPARE} comma-separated job ids of 12 hex characters", "ids")
    return parts


def invalid(msg: str, *loc: str | int) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (``detail`` a list of ``{loc, msg, type}``), for rules a handler checks."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", *loc), "msg": msg, "input": None}])


def load_job(db: Database, job_id: str) -> Job:
    """The job, or 404 naming the id."""
    with db.reading() as s:
        job = store.get_job(s, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id!r}")
    return job
