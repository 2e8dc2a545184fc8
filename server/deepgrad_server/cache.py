"""What finished jobs serve again and again, kept in memory: a finished job's figures and series never change."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class JobCache:
    """A thread-safe LRU keyed by (job ids, kind, parameters): rendered PNGs, decoded norm series."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, tuple[frozenset[str], Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: Hashable, job_ids: frozenset[str], value: Any) -> None:
        with self._lock:
            self._items[key] = (job_ids, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def drop(self, job_id: str) -> None:
        """Forget every figure that shows ``job_id`` (it was deleted)."""
        with self._lock:
            for key in [k for k, (ids, _) in self._items.items() if job_id in ids]:
                del self._items[key]
