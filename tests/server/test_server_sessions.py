"""Browsers sign in with one-time login links (issue 16): tickets work once and expire, the session cookie is
HttpOnly and SameSite=Strict, cookie requests that change something need the CSRF header, bearer requests are as
before, a login sends nowhere but this server, and a ticket never reaches the server's log."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from live import TINY, TOKEN, LiveServer

from deepgrad_server import sessions
from deepgrad_server.app import create_app
from deepgrad_server.settings import Settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}  # what a page's fetch() sends


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in-process (no worker: jobs stay queued), one for the module; no credentials by default."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("sessions"), token=TOKEN, worker=False)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def tab(app: TestClient) -> Iterator[TestClient]:
    """The app as a fresh browser: an empty cookie jar."""
    app.cookies.clear()
    yield app
    app.cookies.clear()


def mint(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/login-links", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def ticket_of(link: dict[str, Any]) -> str:
    return parse_qs(urlsplit(link["path"]).fragment)["ticket"][0]


def sign_in(client: TestClient, **body: Any) -> httpx.Response:
    """What the login page's script does: post the link's ticket, same-origin."""
    return client.post("/login", json={"ticket": ticket_of(mint(client, **body))}, headers=SAME_ORIGIN)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name, attributes in lower case."""
    return {h.split("=", 1)[0]: h.lower() for h in response.headers.get_list("set-cookie")}


def queued_job(client: TestClient) -> str:
    r = client.post("/jobs", json=TINY, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_login_link_signs_a_browser_in(tab: TestClient) -> None:
    link = mint(tab)
    assert re.fullmatch(r"/login#ticket=[\w.-]+", link["path"]) and link["next"] == "/"
    assert link["url"] == "http://testserver" + link["path"] and link["expires_at"]
    page = tab.get("/login")  # what the link loads: no token, the fragment stays in the browser
    assert page.status_code == 200 and "script-src 'sha256-" in page.headers["content-security-policy"]
    assert tab.get("/jobs").status_code == 401
    r = tab.post("/login", json={"ticket": ticket_of(link)}, headers=SAME_ORIGIN)
    assert r.status_code == 200, r.text
    assert r.json()["next"] == "/" and r.headers["cache-control"] == "no-store"
    cookies = set_cookies(r)
    session, csrf = cookies[sessions.SESSION_COOKIE], cookies[sessions.CSRF_COOKIE]
    for header in (session, csrf):
        assert "samesite=strict" in header and "path=/" in header and "secure" not in header  # http here
        assert f"max-age={sessions.SESSION_SECONDS}" in header
    assert "httponly" in session and "httponly" not in csrf  # the page's script reads only the CSRF value
    assert TOKEN not in session and TOKEN not in csrf
    assert tab.get("/jobs").status_code == 200  # the cookie alone, as a browser sends it


def test_ticket_works_once(tab: TestClient) -> None:
    ticket = ticket_of(mint(tab))
    assert tab.post("/login", json={"ticket": ticket}, headers=SAME_ORIGIN).status_code == 200
    tab.cookies.clear()
    again = tab.post("/login", json={"ticket": ticket}, headers=SAME_ORIGIN)
    assert again.status_code == 401 and "used already" in again.json()["detail"]
    assert not again.headers.get_list("set-cookie") and tab.get("/jobs").status_code == 401


def test_tickets_and_sessions_expire(tab: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = ticket_of(mint(tab))
    assert sign_in(tab).status_code == 200
    real = sessions.time.time
    monkeypatch.setattr(sessions.time, "time", lambda: real() + sessions.TICKET_SECONDS + 1)
    assert tab.post("/login", json={"ticket": stale}, headers=SAME_ORIGIN).status_code == 401
    assert tab.get("/jobs").status_code == 200  # the session outlives its ticket
    monkeypatch.setattr(sessions.time, "time", lambda: real() + sessions.SESSION_SECONDS + 1)
    assert tab.get("/jobs").status_code == 401


def test_forged_tickets_and_cookies_are_refused(tab: TestClient) -> None:
    """Tampered, from another server's token, or of another kind (a ticket is no session, a CSRF value no
    ticket): all refused."""
    good = ticket_of(mint(tab))
    expires, nonce, mac = good.split(".")
    other, _ = sessions.BrowserSessions("another-servers-token-0123456789").mint_ticket()
    csrf = sign_in(tab).cookies[sessions.CSRF_COOKIE]
    tab.cookies.clear()
    tampered = (f"{int(expires) + 10**6}.{nonce}.{mac}", f"{expires}.{nonce}x.{mac}", f"{expires}.{nonce}.{mac[:-2]}")
    for ticket in (*tampered, other, csrf, "1.2.3", "x" * 500):
        assert tab.post("/login", json={"ticket": ticket}, headers=SAME_ORIGIN).status_code == 401, ticket
    for cookie in (good, other, csrf, f"{expires}.{nonce}.{mac}"):
        tab.cookies.set(sessions.SESSION_COOKIE, cookie)
        assert tab.get("/jobs").status_code == 401, cookie
    tab.cookies.clear()
    assert tab.post("/login", json={"ticket": good}, headers=SAME_ORIGIN).status_code == 200  # still unused


def test_unsafe_cookie_requests_need_the_csrf_header(tab: TestClient) -> None:
    csrf = sign_in(tab).cookies[sessions.CSRF_COOKIE]
    ok = {**SAME_ORIGIN, sessions.CSRF_HEADER: csrf}
    refused = {"no header": SAME_ORIGIN, "wrong header": {**SAME_ORIGIN, sessions.CSRF_HEADER: csrf[:-1] + "A"},
               "cross-site": {**ok, "Sec-Fetch-Site": "cross-site"}, "same-site": {**ok, "Sec-Fetch-Site": "same-site"},
               "another origin": {sessions.CSRF_HEADER: csrf, "Origin": "http://127.0.0.1:9999"}}
    job_id = queued_job(tab)
    for why, headers in refused.items():
        r = tab.post(f"/jobs/{job_id}/cancel", headers=headers)
        assert r.status_code == 403, (why, r.text)
        assert tab.post("/jobs", json=TINY, headers=headers).status_code == 403, why
        assert tab.delete(f"/jobs/{job_id}", headers=headers).status_code == 403, why
    assert tab.get(f"/jobs/{job_id}").json()["state"] == "queued"  # nothing happened
    assert tab.post(f"/jobs/{job_id}/cancel", headers=ok).status_code == 202
    assert tab.delete(f"/jobs/{job_id}", headers={sessions.CSRF_HEADER: csrf,
                                                      "Origin": "http://testserver"}).status_code == 204
    assert tab.post("/jobs", json=TINY, headers=ok).status_code == 201
    assert tab.get("/jobs").status_code == 200  # reading needs no header


def test_bearer_requests_are_as_before(tab: TestClient) -> None:
    """No CSRF header for the token (it is no ambient credential), and a wrong token is not rescued by a cookie."""
    job_id = queued_job(tab)
    assert tab.post(f"/jobs/{job_id}/cancel", headers={**AUTH, "Origin": "http://elsewhere"}).status_code == 202
    sign_in(tab)
    wrong = tab.get("/jobs", headers={"Authorization": "Bearer wrong-token-0123456789abcdef"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong bearer token"


def test_a_login_goes_nowhere_but_this_server(tab: TestClient) -> None:
    """No open redirect: ``next`` is a path here, at minting and at login; a job's link opens its page."""
    job_id = queued_job(tab)
    link = mint(tab, job_id=job_id)
    assert link["next"] == sessions.JOB_PAGE.format(job_id=job_id)
    assert mint(tab, next="/ui/compare?ids=a,b")["path"].startswith("/login?next=/ui/compare%3Fids%3Da%2Cb#")
    ticket = ticket_of(link)
    for bad in ("//evil.example", "/\\evil.example", "https://evil.example", "evil.example", "/ x",
                "javascript:alert(1)", "\\\\evil.example", "/\t/evil.example"):
        r = tab.post("/login-links", json={"next": bad}, headers=AUTH)
        assert r.status_code == 422, bad
        assert tab.post("/login", json={"ticket": ticket, "next": bad}, headers=SAME_ORIGIN).status_code == 422
    assert tab.post("/login-links", json={"job_id": "0123456789ab"}, headers=AUTH).status_code == 404
    both = tab.post("/login-links", json={"job_id": job_id, "next": "/"}, headers=AUTH)
    assert both.status_code == 422 and "not both" in both.text
    r = tab.post("/login", json={"ticket": ticket, "next": "/ui/compare?ids=a"}, headers=SAME_ORIGIN)
    assert r.status_code == 200 and r.json()["next"] == "/ui/compare?ids=a"  # the refused tries did not spend it


def test_another_site_cannot_sign_a_browser_in(tab: TestClient) -> None:
    ticket = ticket_of(mint(tab))
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        r = tab.post("/login", json={"ticket": ticket}, headers=headers)
        assert r.status_code == 403 and not r.headers.get_list("set-cookie")
    assert tab.post("/login", json={"ticket": ticket}, headers=SAME_ORIGIN).status_code == 200


def test_logout_ends_the_session(tab: TestClient) -> None:
    csrf = sign_in(tab).cookies[sessions.CSRF_COOKIE]
    assert tab.post("/logout", headers=SAME_ORIGIN).status_code == 403  # a cross-site page cannot log you out
    r = tab.post("/logout", headers={**SAME_ORIGIN, sessions.CSRF_HEADER: csrf})
    assert r.status_code == 204
    assert all("max-age=0" in h for h in set_cookies(r).values()) and len(set_cookies(r)) == 2
    assert tab.get("/jobs").status_code == 401


def test_a_browser_without_a_session_is_sent_to_login(tab: TestClient) -> None:
    """Navigations go to the login page, keeping where they were going; scripts and clients get the 401."""
    job_id = queued_job(tab)
    page = f"/jobs/{job_id}/report.html"
    r = tab.get(page, headers={"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next=%2Fjobs%2F{job_id}%2Freport.html"
    assert tab.get(r.headers["location"]).status_code == 200
    for headers in ({"Sec-Fetch-Mode": "cors"}, {"Accept": "text/html"}, {}):
        r = tab.get(page, headers=headers, follow_redirects=False)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
    sign_in(tab)
    assert tab.get(page, headers={"Sec-Fetch-Mode": "navigate"}).status_code == 200


def test_event_stream_follows_a_job_with_the_cookie(tab: TestClient) -> None:
    """``EventSource`` cannot send a bearer header: the cookie is enough."""
    job_id = queued_job(tab)
    tab.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert tab.get(f"/jobs/{job_id}/events").status_code == 401
    sign_in(tab)
    with tab.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert "event: end" in text and '"cancelled"' in text


def test_cookies_are_secure_over_https(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, token=TOKEN, worker=False)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        cookies = set_cookies(sign_in(client))
    assert all("; secure" in h for h in cookies.values()) and len(cookies) == 2


def test_without_auth_links_are_the_pages_and_other_sites_are_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth=False, worker=False)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:  # loopback names only
        link = client.post("/login-links", json={"next": "/ui/compare"}).json()
        assert link["path"] == "/ui/compare" and link["expires_at"] is None
        job_id = queued_job(client)
        assert client.post(f"/jobs/{job_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert client.post(f"/jobs/{job_id}/cancel", headers=SAME_ORIGIN).status_code == 202


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_start_up_link_is_shown_on_a_terminal_only() -> None:
    keys = sessions.BrowserSessions(TOKEN)
    settings = Settings(host="0.0.0.0", port=8123, token=TOKEN)
    log = io.StringIO()
    sessions.announce_login_link(settings, keys, log)
    assert log.getvalue() == ""  # stderr into a file or a journal is a log
    terminal = _Terminal()
    sessions.announce_login_link(settings, keys, terminal)
    (url,) = re.findall(r"http://\S+", terminal.getvalue())
    assert url.startswith("http://127.0.0.1:8123/login#ticket=")
    ticket = parse_qs(urlsplit(url).fragment)["ticket"][0]
    assert keys.redeem(ticket) and not keys.redeem(ticket)


def test_ticket_never_lands_in_the_server_log(tmp_path: Path) -> None:
    """A real ``deepgrad-server`` with its access log on: a browser signs in, uses the API and tries the spent
    ticket again; the log shows those requests and nowhere the ticket, or any part of it."""
    server = LiveServer(tmp_path / "server", None, env={"DEEPGRAD_WORKER": "false"}).start()
    try:
        with server.client() as api:
            link = api.post("/login-links", json={"next": "/ui/compare"}).json()
        ticket = ticket_of(link)
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            assert browser.get(link["url"]).status_code == 200  # httpx, like a browser, never sends the fragment
            r = browser.post("/login", json={"ticket": ticket, "next": link["next"]}, headers=SAME_ORIGIN)
            assert r.status_code == 200, r.text
            assert browser.get("/jobs").status_code == 200
            browser.cookies.clear()
            assert browser.post("/login", json={"ticket": ticket}, headers=SAME_ORIGIN).status_code == 401
    finally:
        server.stop()
    log = server.log.read_text()
    assert '"POST /login HTTP/1.1" 200' in log and '"POST /login HTTP/1.1" 401' in log  # access lines are there
    assert '"GET /login?next=/ui/compare HTTP/1.1" 200' in log
    assert "deepgrad-client open" in log and "#ticket=" not in log  # no start-up link into a log either
    for part in (ticket, *ticket.split(".")[1:]):
        assert part not in log
