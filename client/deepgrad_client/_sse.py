"""Server-sent events: parse a ``text/event-stream`` into ``Event(event, data)`` with JSON data.

The format (WHATWG HTML, "server-sent events"): lines ``field: value``; ``data`` lines accumulate
(joined by newlines); a blank line dispatches the event (one left open when the stream ends is
dropped); lines starting with ``:`` are comments
(the server's ``: keep-alive``) and are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One server-sent event: ``event`` name (``message`` when unnamed) and ``data`` parsed as JSON.

    Data that is not JSON is kept as the raw string.
    """

    event: str
    data: Any
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the stream's lines (without their line endings)."""
    name, data, last_id = "", [], None
    for line in lines:
        if not line:
            if data:
                yield Event(event=name or "message", data=_decode("\n".join(data)), id=last_id)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            last_id = value
    # An event not closed by a blank line when the stream ends is dropped, as the standard says.


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
