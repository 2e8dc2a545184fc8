"""Slow and idle clients, without a token, cannot exhaust a live ``deepgrad-server`` (issue 11).

Request heads left unfinished were never timed out, and 1,100 such sockets (more than systemd's default
RLIMIT_NOFILE of 1024) made ``/health`` and authorized requests fail. Here the server runs under an
open-file limit of 256; the test holds more idle sockets than that, plus trickling ones, and the server
still answers, closes what is idle, and says so in its log.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live import LiveServer, limited  # noqa: E402

NOFILE = 256


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server under ``ulimit -n 256``, with a 2 s deadline for request heads."""
    server = LiveServer(tmp_path_factory.mktemp("tight"), None, wrap=lambda cmd: limited(cmd, nofile=NOFILE),
                        env={"DEEPGRAD_WORKER": "false", "DEEPGRAD_HEADER_TIMEOUT": "2"}).start()
    yield server
    server.stop()


def _open(server: LiveServer, n: int, head: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if head:
            s.sendall(head)
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_more_idle_sockets_than_open_files_leave_the_server_answering(tight_server: LiveServer) -> None:
    socks = _open(tight_server, 150, b"") + _open(tight_server, 150, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    try:
        start = time.monotonic()
        assert httpx.get(tight_server.url + "/health", timeout=5).status_code == 200
        with tight_server.client() as client:
            assert client.get("/jobs").status_code == 200
        assert time.monotonic() - start < 5
    finally:
        for s in socks:
            s.close()
    log = tight_server.log.read_text()
    assert "connection limit" in log and "open-file limit 256" in log


def test_unfinished_request_heads_are_closed(tight_server: LiveServer) -> None:
    """A head that never ends, and one trickled a byte at a time, are both cut off after the deadline."""
    silent, partial = _open(tight_server, 1, b"")[0], _open(tight_server, 1, b"GET /jobs HTTP/1.1\r\n")[0]
    trickle = _open(tight_server, 1, b"G")[0]
    try:
        for b in b"ET /health HTTP/1.1\r\nX-Slow: ":  # one byte every 0.1 s: the head never completes in time
            try:
                trickle.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.1)
        assert _closed_by_server(silent, 4) and _closed_by_server(partial, 4) and _closed_by_server(trickle, 4)
        assert "sent no complete request head" in tight_server.log.read_text()
    finally:
        for s in (silent, partial, trickle):
            s.close()


def test_a_slow_but_complete_request_is_served(tight_server: LiveServer) -> None:
    """The deadline is for heads: a request whose head arrives in time is answered however long it is open."""
    with socket.create_connection(("127.0.0.1", tight_server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        time.sleep(1.0)
        s.sendall(b"\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 200")
