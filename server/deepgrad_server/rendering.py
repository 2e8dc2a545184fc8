"""Figures render on threads of their own, a bounded number at once, behind a bounded queue.

Rendering a figure is CPU work of 0.1-0.3 s. On the request threads, 24 concurrent uncached heatmaps
took every thread, and ``/health`` waited up to 21 s behind them (a container's health check gives up
after 4 s and restarts a server that is merely busy). Here renders take ``render_threads`` threads
apart from the request threads; at most ``render_queue`` more wait, and beyond that a render is refused
with 503 and ``Retry-After`` while every other request is served as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from fastapi import HTTPException, status

T = TypeVar("T")
RETRY_AFTER_S = 2


class RenderPool:
    def __init__(self, threads: int, queue: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.queue = queue

    async def run(self, render: Callable[[], T]) -> T:
        """``render()`` on a render thread; 503 when ``queue`` renders already wait for one."""
        if self.limiter.available_tokens == 0 and self.limiter.statistics().tasks_waiting >= self.queue:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                detail=f"{self.limiter.total_tokens:g} figures are rendering and {self.queue} "
                                       f"waiting; retry in {RETRY_AFTER_S} s (DEEPGRAD_RENDER_QUEUE)",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return await anyio.to_thread.run_sync(render, limiter=self.limiter)
