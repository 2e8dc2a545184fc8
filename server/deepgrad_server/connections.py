"""Slow and idle clients cannot exhaust the server: a deadline for request heads, a cap on connections.

uvicorn times out idle keep-alive connections, but not a connection that never finishes its request
head (nor one that trickles a byte now and then, which resets its keep-alive timer): with no token at
all, ~1,000 such sockets used up the process's open files and every later request failed. Here

* a connection must deliver a complete request head within ``header_timeout`` seconds of opening, or
  of its previous response; otherwise it is closed (a request being served is never timed out);
* at ``limit`` open connections, a new one closes the connection idle the longest (waiting for a head
  or between keep-alive requests) to make room; with none idle it gets a 503 and is closed;
* both are logged (at most once every ``LOG_EVERY_S``), with counts.

The limit is kept below the process's open-file limit (``fit_connection_limit``), so ``accept`` never
fails for want of file descriptors and ``/health`` stays reachable whatever the clients do.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("deepgrad_server.connections")

LOG_EVERY_S = 10.0
_BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 5\r\n"
             b"content-length: 34\r\nconnection: close\r\n\r\nserver busy: too many connections\n")


class ConnectionGuard:
    """Counters and log throttling shared by every connection of one server."""

    def __init__(self, limit: int, header_timeout: float) -> None:
        self.limit, self.header_timeout = limit, header_timeout
        self.timed_out = self.evicted = self.refused = 0
        self._logged_at: dict[str, float] = {}

    def note(self, kind: str, what: str) -> None:
        """Log ``what``, at most once every ``LOG_EVERY_S`` per ``kind`` of event."""
        now = time.monotonic()
        if now - self._logged_at.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[kind] = now
            log.warning("%s (so far: %d heads timed out after %.0f s, %d idle connections closed at the limit of "
                        "%d, %d refused with 503)", what, self.timed_out, self.header_timeout, self.evicted,
                        self.limit, self.refused)


def guarded_protocol(limit: int, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the head deadline and the connection cap (pass as ``http=``)."""
    guard = ConnectionGuard(limit, header_timeout)

    class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._waiting_since = time.monotonic()
            self._arm()
            if len(self.connections) > guard.limit:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._busy():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._waiting_since = time.monotonic()
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _busy(self) -> bool:
            """A request is being read past its head, or served: never cut off."""
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(guard.header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self._busy() and not self.transport.is_closing():
                guard.timed_out += 1
                guard.note("timeout", f"closed a connection from {self._peer()} that sent no complete request head in "
                           f"{guard.header_timeout:.0f} s")
                self.transport.close()

        def _make_room(self) -> None:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedHTTPProtocol)
                    and not c._busy() and not c.transport.is_closing()]
            if idle:
                oldest = min(idle, key=lambda c: c._waiting_since)
                guard.evicted += 1
                guard.note("evicted", f"connection limit ({guard.limit}) reached: closed the connection idle longest "
                           f"(from {oldest._peer()}) for a new one")
                oldest.transport.close()
                return
            guard.refused += 1
            guard.note("refused", f"connection limit ({guard.limit}) reached and every connection busy: refused "
                       f"{self._peer()} with 503")
            self.transport.write(_BUSY_503)
            self.transport.close()

        def _peer(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown address"

    return GuardedHTTPProtocol


def fit_connection_limit(wanted: int, reserve: int) -> int:
    """Raise the soft open-file limit as far as allowed and return a connection limit that fits under it.

    ``reserve`` descriptors stay for everything else (database files, logs, job processes' pipes).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = wanted + reserve if hard == resource.RLIM_INFINITY else min(hard, wanted + reserve)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    limit = min(wanted, soft - reserve)
    if limit < wanted:
        log.warning("open-file limit %d (ulimit -n): serving at most %d connections instead of %d", soft,
                    max(limit, 8), wanted)
    return max(limit, 8)
