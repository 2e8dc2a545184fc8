"""Error responses that always encode, and a 405 whose ``Allow`` lists every method of the path.

FastAPI's own 422 echoes each error's ``input``: a ``1e999`` (read by Python's json as infinity), a
``NaN`` or a name holding a lone surrogate (``"\\ud800"``) made that answer unencodable, so the client got
a 500 and a reset connection instead of the 422 saying what was wrong. Here every value is made
JSON-safe first: non-finite numbers become their text, undecodable text is escaped, long inputs cut.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

MAX_ECHO_CHARS = 500  # a refused 1 MiB string is not worth sending back whole


def json_safe(value: Any, *, limit: int | None = None) -> Any:
    """``value`` with only what strict JSON in UTF-8 can carry: finite numbers, valid text, lists, dicts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates -> \ud800
        return text if limit is None or len(text) <= limit else text[:limit] + "..."
    if isinstance(value, dict):
        return {str(json_safe(k)): json_safe(v, limit=limit) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, limit=limit) for v in value]
    return json_safe(str(value), limit=limit)  # exceptions in ``ctx``, enums, decimals


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 shape (``detail``: a list of ``{type, loc, msg, input, ctx}``), always encodable."""
    detail = []
    for error in exc.errors():
        item = {k: json_safe(v) for k, v in error.items() if k not in ("input", "url")}
        if "input" in error:
            item["input"] = json_safe(error["input"], limit=MAX_ECHO_CHARS)
        detail.append(item)
    return JSONResponse(status_code=422, content={"detail": detail})


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """As FastAPI answers, except that a 405 lists in ``Allow`` the methods of every route on the path."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(sorted(allowed_methods(request.app, request.scope)))
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=headers)
    return JSONResponse({"detail": json_safe(exc.detail)}, status_code=exc.status_code, headers=headers)


def allowed_methods(app: FastAPI, scope: dict[str, Any]) -> set[str]:
    """Methods of every route whose path matches the request's (Starlette names only the first it tried)."""
    methods: set[str] = set()
    for entry in app.router.routes:
        contexts = entry.effective_route_contexts() if hasattr(entry, "effective_route_contexts") else [entry]
        for route in contexts:
            if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
                methods |= set(route.methods)
    return methods


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
