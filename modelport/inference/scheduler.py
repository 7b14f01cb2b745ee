"""Fair admission to a pool's worker capacity: bounded per-deployment queues, round-robin.

Each deployment using a pool has its own bounded queue; when capacity frees up, the next
waiting request is taken from the deployments in turn, so a tenant that floods a shared
serverless pool gets one turn in N and cannot starve the others. Beyond the queue bound the
caller gets TooManyRequests (429 with Retry-After), never an unbounded wait.
"""

from __future__ import annotations

import asyncio
from collections import deque

from modelport.errors import TooManyRequests


class FairScheduler:
    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self.capacity = 0
        self.in_use = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()

    def waiting(self, key: str | None = None) -> int:
        if key is not None:
            return sum(1 for f in self._waiting.get(key, ()) if not f.done())
        return sum(self.waiting(k) for k in self._waiting)

    async def acquire(self, key: str) -> None:
        if self.in_use < self.capacity and not self._turns:
            self.in_use += 1
            return
        queue = self._waiting.setdefault(key, deque())
        if self.waiting(key) >= self.queue_limit:
            raise TooManyRequests(
                "This deployment has too many requests waiting; retry after the time in Retry-After.",
                retry_after=max(1, self.waiting(key) // max(self.capacity, 1)),
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        if key not in self._turns:
            self._turns.append(key)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as the caller went away: hand the slot on
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._dispatch()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._dispatch()

    def fail_waiting(self, exc: BaseException) -> None:
        """Wake every waiter with `exc` (the pool went away)."""
        for queue in self._waiting.values():
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_exception(exc)
        self._turns.clear()

    def _dispatch(self) -> None:
        while self.in_use < self.capacity and self._turns:
            key = self._turns.popleft()
            queue = self._waiting[key]
            while queue and queue[0].done():
                queue.popleft()  # cancelled while waiting
            if not queue:
                continue
            fut = queue.popleft()
            self.in_use += 1
            fut.set_result(None)
            while queue and queue[0].done():
                queue.popleft()
            if queue:
                self._turns.append(key)
