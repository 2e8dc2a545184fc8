"""The pieces of the client tests' live servers: ``Flaky``, ``Live``, ``serve`` and a tiny job spec."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from deepgrad_client import Client

TOKEN = "client-tests-token-0123456789"
# A few steps per epoch: resnet18 at 1/8 width on 16x16 synthetic images, 80 train / 40 test images.
TINY: dict[str, Any] = {"model": {"arch": "resnet18", "width": 0.125},
                        "data": {"name": "synthetic", "subset": 8, "test_subset": 4, "image_size": 16},
                        "train": {"epochs": 2, "batch_size": 16}}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class _Rule:
    match: str
    times: int
    status: int
    forward: bool


class Flaky:
    """ASGI wrapper of the real app that can replace the answers to chosen requests by an error status.

    ``fail("/jobs", status=502)``: the next request whose path ends with ``/jobs`` still reaches the app
    (and takes effect) but its client gets 502, as when a proxy loses the answer. ``forward=False``: the
    app never sees it (a proxy that cannot reach the server). ``seen`` records every request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rules: list[_Rule] = []
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def fail(self, match: str, *, times: int = 1, status: int = 502, forward: bool = True) -> None:
        with self._lock:
            self.rules.append(_Rule(match, times, status, forward))

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    def _take(self, path: str) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if path.endswith(rule.match) and rule.times > 0:
                    rule.times -= 1
                    return rule
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        rule = None
        if scope["type"] == "http":
            with self._lock:
                self.seen.append((scope["method"], scope["path"]))
            rule = self._take(scope["path"])
        if rule is None:
            return await self.app(scope, receive, send)
        if rule.forward:
            async def lost(message: dict) -> None:
                pass

            await self.app(scope, receive, lost)
        await send({"type": "http.response.start", "status": rule.status,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"bad gateway (test proxy)"})


@dataclass
class Live:
    url: str
    token: str
    flaky: Flaky
    data_dir: Path

    def client(self, **kwargs: Any) -> Client:
        return Client(self.url, kwargs.pop("token", self.token), **{"backoff": 0.01, **kwargs})


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return server, thread, url


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
