"""Server-sent events as ``Event(event, data)`` with JSON data, parsed by ``httpx-sse``.

The stream's framing (WHATWG HTML, "server-sent events": ``field: value`` lines, ``data`` lines joined by
newlines, a blank line dispatches, ``:`` comments such as the server's ``: keep-alive`` skipped, an event left
open when the stream ends dropped) is httpx-sse's; this module only gives each event a JSON-decoded payload.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource


@dataclass(frozen=True)
class Event:
    """One server-sent event: ``event`` name (``message`` when unnamed) and ``data`` parsed as JSON.

    Data that is not JSON is kept as the raw string.
    """

    event: str
    data: Any
    id: str | None = None


def parse_events(response: httpx.Response) -> Iterator[Event]:
    """The events of a streamed ``text/event-stream`` response, as they arrive."""
    for sse in EventSource(response).iter_sse():
        yield Event(event=sse.event, data=_decode(sse.data), id=sse.id or None)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
