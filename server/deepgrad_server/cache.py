"""What finished jobs serve again and again, kept in memory: a finished job's figures and series never change."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np


def nbytes(value: Any) -> int:
    """Memory held by a cached value: arrays by their buffers, containers by what they hold."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value) + 8 * len(value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values()) + 64 * len(value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(nbytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return sys.getsizeof(value)


class JobCache:
    """A thread-safe LRU keyed by (job ids, kind, parameters), bounded by the bytes it holds.

    A value larger than a quarter of the bound is not kept: one huge series must not flush everything else.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[frozenset[str], Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: Hashable, job_ids: frozenset[str], value: Any) -> None:
        size = nbytes(value)
        if size > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[2]
            self._items[key] = (job_ids, value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def drop(self, job_id: str) -> None:
        """Forget every entry that shows ``job_id`` (it was deleted)."""
        with self._lock:
            for key in [k for k, (ids, _, _) in self._items.items() if job_id in ids]:
                self.bytes -= self._items.pop(key)[2]

    def __len__(self) -> int:
        return len(self._items)
