"""Signing a browser in: login links (``POST /login-links``), the login page and ``POST /login``, ``POST /logout``.

How the pieces fit, and why the ticket travels in the URL fragment: ``deepgrad_server.sessions``.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepgrad_server import sessions
from deepgrad_server.deps import DbDep, load_job
from deepgrad_server.schemas import JOB_ID_PATTERN, ErrorMessage, errors

router = APIRouter(tags=["auth"])
public = APIRouter(tags=["auth"])  # no token: these sign a browser in


class LoginLinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    next: str | None = Field(default=None, max_length=2000, pattern=sessions.NEXT_PATTERN,
                             description="the page to open once signed in: a path on this server (default /)")
    job_id: str | None = Field(default=None, pattern=JOB_ID_PATTERN, description="open this job's page; give "
                               "next or job_id, not both")

    @model_validator(mode="after")
    def _one_target(self) -> LoginLinkCreate:
        if self.next is not None and self.job_id is not None:
            raise ValueError("give next or job_id, not both")
        return self


class LoginLinkPublic(BaseModel):
    url: str = Field(description="the link, on the address this request was made to")
    path: str = Field(description="the link relative to the server's address (join it to the URL you reach the "
                                  "server by: through a tunnel or proxy that differs from url's)")
    next: str = Field(description="the page the link opens")
    expires_at: datetime | None = Field(description="when the link stops working (it works once); null: auth is "
                                                    "off and the link is the page itself")


class LoginCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=1, max_length=500, pattern=sessions.TICKET_PATTERN,
                        description="the login link's ticket (its fragment: #ticket=...)")
    next: str | None = Field(default=None, max_length=2000, pattern=sessions.NEXT_PATTERN,
                             description="the page to open once signed in: a path on this server (default /)")


class LoginPublic(BaseModel):
    next: str = Field(description="the page to open now")
    expires_at: datetime | None = Field(description="when the session ends; null: auth is off (no session)")


FORBIDDEN = {403: {"model": ErrorMessage, "description": "a cookie request without the X-CSRF-Token header, or "
                                                         "from another site's page"}}


@router.post("/login-links", status_code=status.HTTP_201_CREATED, response_model=LoginLinkPublic,
             responses={**errors(400, 404, 413), **FORBIDDEN})
async def create_login_link(request: Request, db: DbDep, body: LoginLinkCreate | None = None) -> LoginLinkPublic:
    """A one-time link that signs a browser in and opens ``next`` or the job's page (10 minutes, one use)."""
    body = body or LoginLinkCreate()
    if body.job_id is not None:
        await anyio.to_thread.run_sync(load_job, db, body.job_id)  # 404 for a job that is not there
        target = sessions.JOB_PAGE.format(job_id=body.job_id)
    else:
        target = body.next or sessions.HOME_PAGE
    browser: sessions.BrowserSessions | None = request.app.state.sessions
    ticket, expires = browser.mint_ticket() if browser is not None else (None, None)
    path = sessions.login_path(ticket, target)
    return LoginLinkPublic(url=str(request.base_url).rstrip("/") + path, path=path, next=target,
                           expires_at=None if expires is None else datetime.fromtimestamp(expires, timezone.utc))


@public.post("/login", response_model=LoginPublic,
             responses={401: {"model": ErrorMessage, "description": "the ticket is not valid: expired, used or "
                                                                    "never issued"},
                        403: {"model": ErrorMessage, "description": "posted from another site's page"},
                        **errors(400, 413)})
async def login(body: LoginCreate, request: Request, response: Response) -> LoginPublic:
    """Trade a login link's ticket for a session cookie (``HttpOnly``, ``SameSite=Strict``) and the CSRF cookie."""
    sessions.check_origin(request)  # another site must not sign this browser in, even to a session of ours
    target = body.next or sessions.HOME_PAGE
    browser: sessions.BrowserSessions | None = request.app.state.sessions
    if browser is None:  # auth off: nothing to sign in to
        return LoginPublic(next=target, expires_at=None)
    if not browser.redeem(body.ticket):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="this login link is not valid: it was used "
                            f"already, is older than {sessions.TICKET_SECONDS // 60} minutes, or comes from another "
                            "server; get a new one with: deepgrad-client open")
    session = browser.start(request, response)
    response.headers["Cache-Control"] = "no-store"
    return LoginPublic(next=target, expires_at=datetime.fromtimestamp(session.expires, timezone.utc))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=FORBIDDEN)
def logout(request: Request) -> Response:
    """End this browser's session: its cookies are cleared (a new token ends every session)."""
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    sessions.end_session(request, response)
    return response


_LOGIN_SCRIPT = """(function () {
  var say = document.getElementById("status"), help = document.getElementById("help");
  var ticket = new URLSearchParams(location.hash.slice(1)).get("ticket");
  var next = new URLSearchParams(location.search).get("next");
  function fail(text) { say.textContent = text; help.hidden = false; }
  if (!ticket) { fail("This page needs you to sign in."); return; }
  history.replaceState(null, "", location.pathname + location.search);  // the ticket leaves the address bar
  fetch("/login", {method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
                   body: JSON.stringify(next ? {ticket: ticket, next: next} : {ticket: ticket})})
    .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, body: body}; }); })
    .then(function (a) {
      if (a.ok) { location.replace(a.body.next); return; }
      fail(typeof a.body.detail === "string" ? a.body.detail : "This login link is malformed.");
    })
    .catch(function (e) { fail("Could not sign in: " + e); });
})();"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_LOGIN_SCRIPT.encode()).digest()).decode()
_LOGIN_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>DeepGrad: sign in</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}}
code{{background:#f2f2f2;padding:.1em .3em;border-radius:3px}}</style></head>
<body><main><h1>DeepGrad</h1><p id="status">Signing in&hellip;</p>
<div id="help" hidden><p>Open this server's pages with a <b>login link</b>. On a machine that has the server's
token, run</p><p><code>deepgrad-client open</code> &nbsp;or&nbsp; <code>deepgrad-client open JOB_ID</code></p>
<p>It opens a browser signed in (<code>--print</code> only prints the link). A server started in a terminal
prints one too. A link works once, within {sessions.TICKET_SECONDS // 60} minutes.</p></div>
<noscript><p>Signing in needs JavaScript: the link's ticket stays in the page, never in a server log.</p></noscript>
</main><script>{_LOGIN_SCRIPT}</script></body></html>
"""
LOGIN_PAGE_HEADERS: dict[str, Any] = {
    "Content-Security-Policy": f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@public.get("/login", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}}, "description": "the login page"}})
def login_page(next_page: Annotated[str | None, Query(alias="next", max_length=2000, pattern=sessions.NEXT_PATTERN,
                                                      description="the page to open once signed in (the page's "
                                                                  "script reads it)")] = None) -> HTMLResponse:
    """The page a login link opens: it posts the ticket from the link's fragment and goes on (no token)."""
    return HTMLResponse(_LOGIN_PAGE, headers=LOGIN_PAGE_HEADERS)
