"""Browser sessions: one-time login links, a signed session cookie, and the CSRF check of cookie requests.

A browser cannot put ``Authorization: Bearer`` on a navigation, an ``<img>`` or an ``EventSource``. So, as
Jupyter does with its token, whoever holds the token mints a one-time *login link* (``POST /login-links``:
``deepgrad-client open``), and the browser trades its ticket for a session cookie:

1. The link is ``/login?next=/some/page#ticket=<ticket>``. The ticket rides in the URL *fragment*, which a
   browser never sends: it cannot land in the access log, in a proxy's log or in a ``Referer``. The login
   page's script reads it, strips it from the address bar and history, and posts it (``POST /login``).
2. ``POST /login`` checks the ticket (signed, unexpired, not used before), sets the session cookie
   (``HttpOnly``, ``SameSite=Strict``, ``Path=/``, ``Secure`` over https) and the CSRF cookie, and answers
   the page to open; the script goes there.

Tickets and sessions are *signed*, not stored: ``HMAC-SHA256`` under a key derived from the API token. Every API
process that shares the token (several behind one address, on one PostgreSQL) accepts the others' tickets and
sessions with no shared table, and a new token ends every session at once. Single use is kept in memory: with
several processes a ticket is single-use in each of them, within its 10 minutes.

CSRF: a request authenticated by the cookie that changes something (POST, PUT, PATCH, DELETE) must echo the
CSRF cookie in ``X-CSRF-Token`` (a value bound to the session: another site can neither read nor forge it, and
setting a custom header cross-origin needs a CORS grant this server never gives), and must not come from another
origin (``Sec-Fetch-Site``, else ``Origin`` against ``Host``). Bearer requests are not browser requests: they
carry no ambient credential, so they need neither.

Pages (the dashboard's routes) depend on ``deps.require_token`` like every route. An unauthenticated browser
*navigation* (``Sec-Fetch-Mode: navigate``) is sent to ``/login?next=<page>``,
which says how to get a link; any other unauthenticated request gets the usual 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from deepgrad_server.errors import http_error
from deepgrad_server.settings import Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "deepgrad_session"
CSRF_COOKIE = "deepgrad_csrf"
CSRF_HEADER = "X-CSRF-Token"
TICKET_SECONDS = 600  # a login link works once, within 10 minutes
SESSION_SECONDS = 7 * 24 * 3600  # a tab left open on a long training run keeps its session for a week
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Where a login may send the browser: a path on this server. It starts with one "/" (never "//" or "/\", which
# browsers read as another host), then visible ASCII without backslashes: no scheme, no host, no open redirect.
NEXT_PATTERN = r"^/([\x21-\x2e\x30-\x5b\x5d-\x7e][\x21-\x5b\x5d-\x7e]*)?$"
TICKET_PATTERN = r"^[0-9A-Za-z._-]+$"
# The dashboard's pages a login link opens (routes of the pages module).
HOME_PAGE = "/"
JOB_PAGE = "/ui/jobs/{job_id}"

_KEY_LABEL = b"deepgrad browser sessions v1"


@dataclass(frozen=True)
class Session:
    id: str
    expires: int


class BrowserSessions:
    """Mints and checks the signed tickets and session cookies of one API token."""

    def __init__(self, api_token: str) -> None:
        # A key of its own, derived from the token: cookies never carry anything the token could be found from.
        self._key = hmac.new(api_token.encode(), _KEY_LABEL, hashlib.sha256).digest()
        self._used: dict[str, int] = {}  # ticket nonce -> its expiry: redeemed tickets, until they expire
        self._lock = threading.Lock()

    def _sign(self, *parts: str) -> str:
        mac = hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def _signed(self, kind: str, expires: int, nonce: str) -> str:
        return f"{expires}.{nonce}.{self._sign(kind, str(expires), nonce)}"

    def _check(self, kind: str, value: str) -> tuple[int, str] | None:
        """(expiry, nonce) of a value this key signed for ``kind`` that has not expired; None otherwise."""
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
            return None
        expires, nonce, mac = int(parts[0]), parts[1], parts[2]
        if not hmac.compare_digest(mac.encode(), self._sign(kind, parts[0], nonce).encode()):
            return None
        return (expires, nonce) if expires > time.time() else None

    # -- tickets ------------------------------------------------------------------------------------

    def mint_ticket(self, seconds: int = TICKET_SECONDS) -> tuple[str, int]:
        """A new one-time ticket and its expiry (Unix seconds)."""
        expires = int(time.time()) + seconds
        return self._signed("ticket", expires, secrets.token_urlsafe(16)), expires

    def redeem(self, ticket: str) -> bool:
        """Whether ``ticket`` is valid and unused; it is used from now on."""
        checked = self._check("ticket", ticket)
        if checked is None:
            return False
        expires, nonce = checked
        now = time.time()
        with self._lock:
            for old in [n for n, e in self._used.items() if e <= now]:
                del self._used[old]
            if nonce in self._used:
                return False
            self._used[nonce] = expires
        return True

    # -- sessions -----------------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        """The request's valid session, from its cookie; None without one (absent, forged or expired)."""
        value = request.cookies.get(SESSION_COOKIE)
        checked = self._check("session", value) if value else None
        return None if checked is None else Session(id=checked[1], expires=checked[0])

    def csrf_token(self, session: Session) -> str:
        """The value a page of ``session`` sends in ``X-CSRF-Token`` (also its CSRF cookie)."""
        return self._sign("csrf", session.id)

    def start(self, request: Request, response: Response) -> Session:
        """A new session: its cookie and its CSRF cookie set on ``response``."""
        session = Session(id=secrets.token_urlsafe(16), expires=int(time.time()) + SESSION_SECONDS)
        secure = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, self._signed("session", session.expires, session.id),
                            max_age=SESSION_SECONDS, path="/", secure=secure, httponly=True, samesite="strict")
        # Readable by the page's scripts (that is the point), useless to anyone else: bound to the session.
        response.set_cookie(CSRF_COOKIE, self.csrf_token(session), max_age=SESSION_SECONDS, path="/",
                            secure=secure, httponly=False, samesite="strict")
        return session

    def check_csrf(self, request: Request, session: Session) -> None:
        """403 unless a cookie request that changes something comes from this origin with the CSRF header."""
        if request.method in SAFE_METHODS:
            return
        check_origin(request)
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode("latin-1", "replace"), self.csrf_token(session).encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"missing or wrong {CSRF_HEADER} header: a page "
                                f"that changes something sends its {CSRF_COOKIE} cookie's value in {CSRF_HEADER} "
                                "(a script or client with the token sends 'Authorization: Bearer' instead)")


def end_session(request: Request, response: Response) -> None:
    """Clear this browser's session and CSRF cookies."""
    secure = request.url.scheme == "https"
    for name, httponly in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=httponly, samesite="strict")


def check_origin(request: Request) -> None:
    """403 for a request another site's page made (``Sec-Fetch-Site``; without it, ``Origin`` against ``Host``)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        cross = site not in ("same-origin", "none")
    else:
        origin = request.headers.get("origin")
        cross = origin is not None and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
    if cross:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="refused: this request came from another site's "
                            "page (cross-site request forgery guard); use the DeepGrad pages of this server")


def safe_next(path: str | None) -> str:
    """``path`` when it is a path on this server (``NEXT_PATTERN``), else the home page."""
    return path if path and re.fullmatch(NEXT_PATTERN, path) else HOME_PAGE


def login_path(ticket: str | None, next_path: str) -> str:
    """The login link's path: ``/login?next=...#ticket=...`` (the ticket in the fragment: never sent, never logged);
    without a ticket (auth off) the page itself."""
    if ticket is None:
        return next_path
    query = "" if next_path == HOME_PAGE else f"?next={quote(next_path, safe='/')}"
    return f"/login{query}#ticket={ticket}"


# -- unauthenticated browsers ----------------------------------------------------------------------

class NotSignedIn(HTTPException):
    """401 with no credentials at all: a browser navigating is sent to the login page instead."""


def is_navigation(request: Request) -> bool:
    """A browser loading a page: not a script's fetch, an image, or an API client (which send no Fetch Metadata;
    browsers without it get the plain 401)."""
    return request.method in ("GET", "HEAD") and request.headers.get("sec-fetch-mode") == "navigate"


async def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
    if not is_navigation(request):
        return await http_error(request, exc)
    raw = request.scope.get("raw_path") or request.url.path.encode()
    here = raw.decode("latin-1") + (f"?{request.url.query}" if request.url.query else "")
    target = safe_next(here)
    query = "" if target == HOME_PAGE else f"?next={quote(target, safe='')}"
    return RedirectResponse(f"/login{query}", status_code=status.HTTP_303_SEE_OTHER,
                            headers={"Cache-Control": "no-store"})


def add_session_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotSignedIn, _not_signed_in)


# -- the start-up link -----------------------------------------------------------------------------

def announce_login_link(settings: Settings, sessions: BrowserSessions, stream: TextIO | None = None) -> None:
    """At start-up: a one-time login link on a terminal; never into a log (stderr that is not a terminal)."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        log.info("open the dashboard in a browser with: deepgrad-client open (it prints and opens a one-time "
                 "login link)")
        return
    ticket, _ = sessions.mint_ticket()
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    base = f"http://{host}:{settings.port}" if settings.port else "http://<this server's address>"
    stream.write(f"DeepGrad dashboard (one-time link, valid {TICKET_SECONDS // 60} minutes; later: "
                 f"deepgrad-client open):\n    {base}{login_path(ticket, HOME_PAGE)}\n")
    stream.flush()
