"""Fair admission to a pool's worker slots: per-workspace caps, shares and turns.

A pool has `capacity` slots (ready workers x requests each takes at once: a batching worker's
sequences). Every request takes one slot for as long as it runs. On the admission path, after
authentication, network settings, budget and the per-minute limits, a request meets, in order:

1. the per-workspace cap: one workspace may have at most `workspace_cap` requests in a pool at
   once, running and waiting together; beyond it the request is refused at once (429 with
   Retry-After), whatever the other workspaces do;
2. the fair queue. A request runs at once when a slot is free, its workspace holds fewer slots
   than its share, and none of its own requests are waiting. Otherwise it waits in its
   workspace's queue (at most `queue_limit` per deployment, then 429; a workspace's deployments
   take turns within it). Each freed slot goes to
   the waiting workspace that holds the fewest slots, among equals the one served longest ago, and
   never to one that already holds its share: a burst of one workspace is served in the gaps
   the others leave, never ahead of them.

The share is what keeps one workspace's burst from delaying another's next request: on a pool
shared by workspaces (`share` < 1) one workspace holds at most `max(1, floor(share x capacity))`
slots, so the rest stays free for the others' next requests instead of queueing them behind
the burst. Dedicated and private pools serve one workspace and use every slot (`share` = 1).
Nothing is kept for a workspace with nothing running or waiting.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from dataclasses import dataclass

from modelport.errors import TooManyRequests


@dataclass(eq=False)
class _Waiter:
    deployment: str
    future: asyncio.Future[None]


class _WorkspaceQueue:
    """One workspace's waiting requests: its deployments take turns too."""

    def __init__(self) -> None:
        self.by_deployment: dict[str, deque[_Waiter]] = {}
        self.turns: deque[str] = deque()
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def append(self, waiter: _Waiter) -> None:
        queue = self.by_deployment.get(waiter.deployment)
        if queue is None:
            queue = self.by_deployment[waiter.deployment] = deque()
            self.turns.append(waiter.deployment)
        queue.append(waiter)
        self.count += 1

    def popleft(self) -> _Waiter:
        deployment = self.turns.popleft()
        queue = self.by_deployment[deployment]
        waiter = queue.popleft()
        if queue:
            self.turns.append(deployment)
        else:
            del self.by_deployment[deployment]
        self.count -= 1
        return waiter

    def remove(self, waiter: _Waiter) -> bool:
        queue = self.by_deployment.get(waiter.deployment)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self.by_deployment[waiter.deployment]
            self.turns.remove(waiter.deployment)
        self.count -= 1
        return True

    def __iter__(self):
        for queue in self.by_deployment.values():
            yield from queue


class FairScheduler:
    def __init__(self, queue_limit: int, *, workspace_cap: int | None = None, share: float = 1.0) -> None:
        if queue_limit < 0 or not 0 < share <= 1 or (workspace_cap is not None and workspace_cap < 1):
            raise ValueError("queue_limit >= 0, 0 < share <= 1 and workspace_cap >= 1 (or None)")
        self.queue_limit = queue_limit
        self.workspace_cap = workspace_cap
        self.share = share
        self.capacity = 0
        self.in_use = 0
        self.running: Counter[str] = Counter()  # slots held, per workspace
        self._queues: dict[str, _WorkspaceQueue] = {}
        self._waiting_per_deployment: Counter[str] = Counter()
        self._turns: deque[str] = deque()  # workspaces with someone waiting
        self._granted = 0  # slots handed out so far: the clock of `_last_served`
        self._last_served: dict[str, int] = {}  # per workspace running or waiting

    # -- what the pool and the autoscaler read ------------------------------------------------

    def waiting(self, workspace: str | None = None) -> int:
        if workspace is not None:
            return len(self._queues.get(workspace, ()))
        return sum(len(q) for q in self._queues.values())

    def waiting_for(self, deployment: str) -> int:
        """Requests of one deployment in the queue (the metrics' queue depth)."""
        return self._waiting_per_deployment.get(deployment, 0)

    def limit(self) -> int:
        """Slots one workspace may hold at once."""
        if self.share >= 1:
            return self.capacity
        return max(1, math.floor(self.share * self.capacity))

    # -- admission ----------------------------------------------------------------------------

    async def acquire(self, workspace: str, deployment: str) -> None:
        """Take a slot for one request of `deployment` (of `workspace`); wait for it in turn."""
        queue = self._queues.get(workspace)
        held = self.running[workspace] + (len(queue) if queue else 0)
        if self.workspace_cap is not None and held >= self.workspace_cap:
            raise TooManyRequests(
                f"This workspace has {held} requests running or waiting on this model's workers, its cap "
                f"({self.workspace_cap}); retry after the time in Retry-After.",
                retry_after=1, details={"limit": "pool_requests_per_workspace"})
        if not queue and self.in_use < self.capacity and self.running[workspace] < self.limit():
            self._take(workspace)
            return
        if self._waiting_per_deployment[deployment] >= self.queue_limit:
            raise TooManyRequests(
                "This deployment has too many requests waiting; retry after the time in Retry-After.",
                retry_after=max(1, self._waiting_per_deployment[deployment] // max(self.capacity, 1)),
                details={"limit": "queue_per_deployment"})
        waiter = _Waiter(deployment, asyncio.get_running_loop().create_future())
        if queue is None:
            queue = self._queues[workspace] = _WorkspaceQueue()
        queue.append(waiter)
        self._waiting_per_deployment[deployment] += 1
        if workspace not in self._turns:
            self._turns.append(workspace)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(workspace)  # granted just as the caller went away: hand the slot on
            else:
                self._forget(workspace, waiter)
            raise

    def release(self, workspace: str) -> None:
        self.in_use -= 1
        self.running[workspace] -= 1
        if self.running[workspace] <= 0:
            del self.running[workspace]
        self._forget_idle(workspace)
        self._dispatch()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._dispatch()

    def fail_waiting(self, exc: BaseException) -> None:
        """Wake every waiter with `exc` (the pool went away)."""
        for queue in self._queues.values():
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        self._queues.clear()
        self._waiting_per_deployment.clear()
        self._turns.clear()
        self._last_served = {w: t for w, t in self._last_served.items() if self.running[w]}

    # -- internals ----------------------------------------------------------------------------

    def _take(self, workspace: str) -> None:
        self.in_use += 1
        self.running[workspace] += 1
        self._granted += 1
        self._last_served[workspace] = self._granted

    def _forget_idle(self, workspace: str) -> None:
        if not self.running[workspace] and workspace not in self._queues:
            self._last_served.pop(workspace, None)

    def _forget(self, workspace: str, waiter: _Waiter) -> None:
        queue = self._queues.get(workspace)
        if queue is None or not queue.remove(waiter):
            return
        self._unqueued(workspace, waiter)
        self._forget_idle(workspace)
        self._dispatch()  # the workspace may now be under its share with nobody of its own ahead

    def _unqueued(self, workspace: str, waiter: _Waiter) -> None:
        self._waiting_per_deployment[waiter.deployment] -= 1
        if self._waiting_per_deployment[waiter.deployment] <= 0:
            del self._waiting_per_deployment[waiter.deployment]
        if not self._queues[workspace]:
            del self._queues[workspace]
            if workspace in self._turns:
                self._turns.remove(workspace)

    def _dispatch(self) -> None:
        limit = self.limit()
        while self.in_use < self.capacity and self._turns:
            # The slot goes to the waiting workspace that holds the fewest slots (below its share);
            # among equals, to the one served longest ago (one never served first).
            workspace = min((w for w in self._turns if self.running[w] < limit),
                            key=lambda w: (self.running[w], self._last_served.get(w, -1)), default=None)
            if workspace is None:
                return  # everyone waiting holds their share: the free slots stay for newcomers
            self._turns.remove(workspace)
            queue = self._queues[workspace]
            waiter = queue.popleft()
            self._unqueued(workspace, waiter)
            if workspace in self._queues:
                self._turns.append(workspace)
            if waiter.future.done():  # cancelled, and its task has not run its cleanup yet
                self._forget_idle(workspace)
                continue
            self._take(workspace)
            waiter.future.set_result(None)
