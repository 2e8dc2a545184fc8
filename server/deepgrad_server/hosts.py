"""``Host`` header check: the guard against DNS rebinding when no token protects the API.

A web page on ``attacker.example`` whose name is made to resolve to 127.0.0.1 can send requests to a
local service from the user's browser; they arrive with ``Host: attacker.example``. With auth off the
server accepts only the host names in ``allowed_hosts`` (default: loopback names), as Jupyter does.
"""

from __future__ import annotations

import ipaddress
import json

from starlette.types import ASGIApp, Receive, Scope, Send


def host_name(header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``; lower case, no trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """400 for a request whose ``Host`` is not allowed: ``allowed`` names, or ``None`` for loopback names."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = None if allowed is None else {host_name(h) for h in allowed}

    def ok(self, name: str) -> bool:
        if self.allowed is None:
            return is_loopback_name(name)
        return "*" in self.allowed or name in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.ok(host_name(header)):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": f"host {header!r} is not allowed: with auth off this server answers only "
                                     "loopback names (localhost, 127.0.0.1, [::1]); set DEEPGRAD_ALLOWED_HOSTS "
                                     "to allow others"}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
