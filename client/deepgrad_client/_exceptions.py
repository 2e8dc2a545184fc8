"""The client's exceptions, one small tree; every message is the server's own where it sent one.

::

    DeepGradError              anything this package raises on purpose (also: an unreadable config file)
    ├── InputError             caught before sending: a spec file that does not read or parse, a
    │                          malformed ``--set``, a malformed job id; also a ``ValueError``
    ├── ConnectError           the server could not be reached or the connection failed: refused,
    │                          timed out, dropped mid-answer (``.url`` is the server's base URL)
    ├── WaitTimeout            ``Client.wait(timeout=...)`` gave up; also a ``TimeoutError``
    └── APIError               the server answered with an error status (``.status``, ``.detail``)
        ├── AuthError          401 or 403: token missing or wrong
        └── NotFound           404: no such job, or the data a plot needs were never recorded

``APIError.detail`` is the server's ``detail`` as sent (a string, or FastAPI's list of validation errors);
``str(error)`` is one readable message: a 422's list is flattened to one ``field.path: message`` line per
error, so an invalid spec reads ``model.arch: Input should be 'vgg16', 'vgg_deep' or 'resnet18'``.
Other statuses (409 wrong state, 413 body too large, 422 invalid, 429 queue full, 5xx) are plain
``APIError``; compare ``.status``.
"""

from __future__ import annotations

from typing import Any

_LOCATIONS = ("body", "query", "path", "header")


class DeepGradError(Exception):
    """Base class: catch this to handle every error the client raises."""


class InputError(DeepGradError, ValueError):
    """Bad input caught before sending: an unreadable spec file, a malformed override or job id."""


class ConnectError(DeepGradError):
    """The server could not be reached, or the connection failed before a full answer arrived."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class APIError(DeepGradError):
    """The server answered ``status`` >= 400; ``detail`` is its ``detail`` field (or the body's text)."""

    def __init__(self, status: int, detail: Any, *, hint: str | None = None, retried: bool = False) -> None:
        message = format_detail(status, detail)
        super().__init__(f"{message}\n{hint}" if hint else message)
        self.status = status
        self.detail = detail
        self.retried = retried  # the answer was to a retry, so an earlier attempt may have got through


class AuthError(APIError):
    """401/403: the bearer token is missing or wrong."""


class NotFound(APIError):
    """404: no such job (or no such recorded data)."""


class WaitTimeout(DeepGradError, TimeoutError):
    """``Client.wait(timeout=...)`` ran out before the job ended (the job itself goes on)."""


def format_detail(status: int, detail: Any) -> str:
    """One message for a status and a server ``detail``: 422 lists become ``field.path: msg`` lines."""
    if isinstance(detail, list):
        lines = [_validation_line(item) for item in detail]
        return f"invalid request ({len(lines)} error(s)):\n" + "\n".join(f"  {line}" for line in lines)
    if detail is None or detail == "":
        return f"HTTP {status}"
    if isinstance(detail, str):
        return detail
    return f"HTTP {status}: {detail}"


def _validation_line(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", [])]
    if loc and loc[0] in _LOCATIONS:
        loc = loc[1:]
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message
