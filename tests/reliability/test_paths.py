"""Path-like ids, names and parameters never reach the file system (MLflow's path traversal CVEs, e.g.
CVE-2023-1177, CVE-2023-2780, CVE-2024-1560, CVE-2024-1594: artifact and model names used as paths let anyone
read or write files anywhere the server could).

Every path and query parameter of every route (enumerated from ``app.routes``, so a new route is covered the day
it is added) gets traversal payloads, sent as uvicorn hands them to the app (percent-encoded, and raw), while an
audit hook (``sys.addaudithook``) records every file the process opens, lists, removes or renames. A canary file
outside the data directory must never be opened nor appear in a response.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import pytest
from live import TINY, TOKEN, LiveServer, wait_for

from deepgrad_server.app import create_app
from deepgrad_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1:8000"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG = "../" * 1400 + "etc/passwd"  # 4 KiB of climbing
PAYLOADS = ["../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "..%2f", "%252e%252e%252f", "//proc/self/root/etc/passwd", "/proc/self/environ", "#/..", "?/..",
            "\\..\\..\\etc\\passwd", "..\\..\\windows\\win.ini", "....//....//etc/passwd", "..;/",
            "file:///etc/passwd", "~/.ssh/id_rsa", "//evil.example/", "/\\evil.example", "0123456789ab/../../..",
            "a\x00b", "%00", "0123456789ab%00", LONG, LONG * 8]

# Values of the other parameters while one is attacked: valid, so the attacked one is what decides the answer.
VALID = {"job_id": "succeeded", "kind": "selected", "ids": "succeeded", "study_id": "study",
         "path": "app.js"}  # /static/{path}: the dashboard's own files, a path by design (kept inside static/)
# Free text a route matches as text and never opens: a path-like value there is a 200 (with nothing found).
TEXT_FILTERS = {("/jobs", "name"), ("/login", "next")}  # next: a path of this site to go to after login, never a file


# --- recording what the process opens -------------------------------------------------------------------------

READS = {"open", "os.listdir", "os.scandir", "sqlite3.connect"}  # "open" may write too: its mode decides
WRITES = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.truncate", "shutil.rmtree",
          "shutil.copyfile", "shutil.move", "os.symlink", "os.link", "os.chdir"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_recording = threading.Event()
_events: list[tuple[str, str, str]] = []


def _audit(event: str, args: tuple) -> None:
    if not _recording.is_set() or event not in READS | WRITES or not args or isinstance(args[0], int):
        return  # not recording, not a file-system event, or an already open descriptor
    kind = "w" if event in WRITES else "r"
    if event == "open":
        mode, flags = (args[1:3] + (None, 0))[:2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
            kind = "w"
    _events.append((event, os.fsdecode(args[0]), kind))


_HOOKED = False


@pytest.fixture
def audit() -> Iterator[list[tuple[str, str, str]]]:
    """Events (name, path, 'r'|'w') seen while the test records (the hook stays for the process; it is idle
    unless a test turns recording on)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    _events.clear()
    yield _events
    _recording.clear()


def _allowed_outside(path: str, kind: str) -> bool:
    """What the process may touch outside the data directory while serving, and why:
    - reads under the interpreter's prefixes: stdlib and site-packages modules imported lazily by a handler, and
      matplotlib's own fonts and style sheets when a figure renders;
    - reads of this repository's source (lazy imports of deepgrad_core / deepgrad_server);
    - matplotlib's config and cache directories (its font list);
    - writes of ``__pycache__`` files under those (Python caching bytecode of a lazily imported module)."""
    import matplotlib

    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, str(REPO / "deepgrad_core"),
                str(REPO / "server" / "deepgrad_server"), matplotlib.get_configdir(), matplotlib.get_cachedir()]
    real = os.path.realpath(path)
    under = any(real.startswith(os.path.realpath(p) + os.sep) for p in prefixes)
    return under and (kind == "r" or "__pycache__" in real.split(os.sep))


def assert_inside(events: list[tuple[str, str, str]], data_dir: Path, canary: Path) -> int:
    """Every recorded path is in the data directory or an allowed place; the canary was never touched."""
    inside = os.path.realpath(data_dir) + os.sep
    outside = [(e, p, k) for e, p, k in events
               if not (os.path.realpath(p) + os.sep).startswith(inside) and not _allowed_outside(p, k)]
    assert not outside, outside[:20]
    assert not [e for e in events if os.path.realpath(e[1]) == os.path.realpath(canary)]
    return len(events)


# --- sending requests as uvicorn passes them on -------------------------------------------------------------------


def asgi_request(client: Any, method: str, target: str) -> tuple[int, bytes, dict[str, str]]:
    """One request with ``target`` exactly as written (no client-side normalisation of ``..``): the scope is
    built as uvicorn builds it (``path`` percent-decoded, ``raw_path`` as sent). It runs in the event loop of
    ``client`` (an entered TestClient), where the app's lifespan runs its event hub, as uvicorn's one loop would."""
    app = client.app
    raw_path, _, query = target.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote(raw_path), "raw_path": raw_path.encode("latin-1", "replace"), "root_path": "",
             "query_string": query.encode("latin-1", "replace"), "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 50000), "headers": [(b"host", HOST.encode()),
                                                         (b"authorization", AUTH["Authorization"].encode())]}
    status, body, headers, sent = 0, bytearray(), {}, False
    first_event = asyncio.Event()  # an event stream's first chunk: enough to judge it (the job list's never ends)

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # the client stays: a streaming answer decides when it is done
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update((k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", []))
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if body and headers.get("content-type", "").startswith("text/event-stream"):
                first_event.set()

    async def run() -> None:
        served = asyncio.ensure_future(app(scope, receive, send))
        stream_began = asyncio.ensure_future(first_event.wait())
        await asyncio.wait([served, stream_began], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for task in (served, stream_began):  # an event stream that has not ended: its status and first event decide
            task.cancel()
        await asyncio.gather(served, stream_began, return_exceptions=True)

    client.portal.call(run)
    return status, bytes(body), headers


def _target(path: str, path_values: dict[str, str], query: dict[str, str], *, raw: bool) -> str:
    """The request target; path values percent-encoded as a client sends them, or ``raw`` as an attacker may."""
    url = path
    for name, value in path_values.items():
        url = url.replace("{" + name + "}", value if raw else quote(value, safe=""))
    return url + ("?" + urlencode(query) if query else "")


@pytest.fixture
def served(tmp_path: Path, seed: Any, seed_a_study: Any) -> Iterator[tuple[Any, Path, Path, dict[str, str]]]:
    """(client, data dir, canary, seeded job ids): the app in-process, a canary file beside its data dir."""
    from fastapi.testclient import TestClient

    data_dir = tmp_path / "data"
    canary = tmp_path / "outside" / "canary.txt"
    canary.parent.mkdir()
    canary.write_text(f"CANARY-{uuid.uuid4()}\n")
    app = create_app(Settings(data_dir=data_dir, token=TOKEN, worker=False))
    with TestClient(app, headers=AUTH) as client:
        ids = seed(app.state.db)
        ids["study"] = seed_a_study(app.state.db, [ids["cancelled"]])  # DELETE of the study takes only this job
        yield client, data_dir, canary, ids


def test_every_route_is_enumerated(served: Any, app_routes: Any) -> None:
    """The enumeration below sees every route with its path and query parameters (a guard on the guard)."""
    client, *_ = served
    found = {(r.method, r.path): (list(r.path_params), list(r.query_params)) for r in app_routes(client.app)}
    spec_ops = {(m.upper(), p) for p, ops in client.app.openapi()["paths"].items() for m in ops}
    assert spec_ops <= set(found)
    assert found[("GET", "/jobs/{job_id}/plots/{kind}.png")][0] == ["job_id", "kind"]
    assert {"layers", "epochs", "norm_kind"} <= set(found[("GET", "/jobs/{job_id}/plots/{kind}.png")][1])
    assert ("GET", "/openapi.json") in found and ("GET", "/docs") in found


def test_path_like_values_in_every_parameter_read_nothing_outside_the_data_dir(served: Any, audit: list,
                                                                               app_routes: Any) -> None:
    """MLflow path traversal CVEs (e.g. CVE-2023-1177, CVE-2024-1560): traversal payloads in every path and
    query parameter of every route answer 404/405/422 (200 only for a text filter, finding nothing), never a
    5xx, never file content; the process opens nothing outside its data dir and never the canary."""
    client, data_dir, canary, ids = served
    app = client.app
    secret = canary.read_text().strip()
    canary_payloads = [str(canary), os.path.relpath(canary, data_dir), os.path.relpath(canary, data_dir / "jobs"),
                       "../" * 30 + str(canary).lstrip("/")]
    wrong: list[tuple] = []
    sent = 0
    _recording.set()
    t0 = time.monotonic()
    for route in app_routes(app):
        method, path, path_params, query_params = route.method, route.path, route.path_params, route.query_params
        # DELETE and cancel get a job of their own: a request that ignores its payload must not remove the job
        # the other routes read.
        valid = {k: ids.get(v, v) for k, v in VALID.items()}
        if method == "DELETE" or path.endswith("/cancel"):
            valid["job_id"] = ids["cancelled"]
        base_query = {q: valid[q] for q in query_params if q in ("ids",)}
        attacks = [("path", p, raw) for p in path_params for raw in (False, True)]
        attacks += [("query", q, False) for q in [*query_params, "file"]]  # "file": a parameter nobody reads
        for where, name, raw in attacks:
            for payload in [*PAYLOADS, *canary_payloads]:
                path_values = {p: valid[p] for p in path_params}
                query = dict(base_query)
                if where == "path":
                    path_values[name] = payload
                else:
                    query[name] = payload
                status, body, headers = asgi_request(client, method, _target(path, path_values, query, raw=raw))
                sent += 1
                opaque = where == "query" and ((path, name) in TEXT_FILTERS or name == "file")
                # A parameter read as text, or read by nobody, answers what the valid request answers.
                allowed = range(200, 500) if opaque else {404, 405, 422}
                if status in (307, 308):  # a trailing slash dropped (Starlette's redirect_slashes): same host only
                    allowed = {status} if urlsplit(headers.get("location", "")).netloc == HOST else set()
                leaked = secret.encode() in body or b"root:x:0:0" in body
                if status not in allowed or leaked:
                    wrong.append((method, path, where, name, raw, payload[:60], status, body[:200]))
    _recording.clear()
    assert not wrong, wrong[:10]
    opened = assert_inside(audit, data_dir, canary)
    assert [p for e, p, _ in audit if e == "shutil.rmtree"], audit  # the hook is live: DELETE's rmtree was seen
    assert sent > 1000, sent
    print(f"{sent} path-like requests in {time.monotonic() - t0:.1f} s; {opened} file-system events, all inside "
          "the data dir or allowed")


def test_path_like_job_names_are_text_not_paths(served: Any, audit: list) -> None:
    """MLflow-style traversal through a *name*: a job name is stored and returned verbatim and filtered as text;
    creating, reading, listing, cancelling and deleting such jobs touches only the data dir."""
    client, data_dir, canary, _ = served
    names = ["../../etc/passwd", "../../../tmp/evil", "/etc/cron.d/deepgrad", "..\\..\\boot.ini", "a/b/c",
             str(canary), "%2e%2e%2fx", "~root/.bashrc", ". .", "x" * 100]
    _recording.set()
    for name in names:
        created = client.post("/jobs", json={**TINY, "name": name})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["name"] == name
        assert client.get(f"/jobs/{job['id']}").json()["name"] == name
        found = client.get("/jobs", params={"name": name}).json()
        assert [j["id"] for j in found["data"]] == [job["id"]]
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
        assert client.delete(f"/jobs/{job['id']}").status_code == 204
    _recording.clear()
    assert_inside(audit, data_dir, canary)
    touched = {p for _, p, _ in audit}
    assert not [p for p in touched for n in names if n in p and len(n) > 3], touched
    # A name that is not text a user can act on (control characters) is refused, not stored.
    assert client.post("/jobs", json={**TINY, "name": "a\x00b"}).status_code == 422
    assert client.post("/jobs", json={**TINY, "name": "../\n../x"}).status_code == 422


@pytest.mark.slow
def test_a_job_named_like_a_path_writes_only_under_its_id(tmp_path: Path) -> None:
    """A real job named ``../../escaped`` trains in a live server; afterwards every new file is the store's or
    under ``<data dir>/jobs/<id>/`` (checkpoints by id, never by name), and DELETE removes exactly that folder."""
    data_dir = tmp_path / "srv" / "data"
    server = LiveServer(data_dir, None).start()
    try:
        before = {p for p in tmp_path.rglob("*")}
        with server.client() as client:
            job = client.post("/jobs", json={**TINY, "name": "../../escaped", "checkpoint_every": 1}).json()
            assert wait_for(client, job["id"])["state"] == "succeeded"
            new = {p for p in tmp_path.rglob("*")} - before
            job_dir = data_dir / "jobs" / job["id"]
            assert (job_dir / "last.safetensors").is_file()
            stray = [p for p in new if not (p == job_dir.parent or p.is_relative_to(job_dir)
                                            or (p.parent == data_dir and p.name.startswith("deepgrad.db"))
                                            or p == server.log)]
            assert not stray, stray
            assert not [p for p in tmp_path.rglob("*escaped*")]
            assert client.delete(f"/jobs/{job['id']}").status_code == 204
            assert not job_dir.exists() and (data_dir / "jobs").is_dir()
    finally:
        server.stop()
