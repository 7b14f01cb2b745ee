"""A bound on how much screening one workspace runs at once.

Screening a prompt costs CPU in proportion to its length (the classifier windows a long text;
blocklists get a time budget per text), and the gateway's threads are shared by every tenant.
So each workspace may have `concurrency` prompts in screening at once and `queue` more waiting
for their turn; a request beyond that is refused at once with 429 and Retry-After, and other
workspaces are not affected. Nothing is kept for a workspace with nothing in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from modelport.errors import TooManyRequests

RETRY_AFTER_S = 1


@dataclass
class _Workspace:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding a place or waiting for one


class WorkspaceGate:
    """At most `concurrency` screenings of one workspace at once, `queue` more waiting, then 429."""

    def __init__(self, concurrency: int, queue: int) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError("screening concurrency must be at least 1 and its queue at least 0")
        self.concurrency = concurrency
        self.queue = queue
        self._workspaces: dict[str, _Workspace] = {}

    @property
    def idle(self) -> bool:
        return not self._workspaces

    @contextlib.asynccontextmanager
    async def enter(self, workspace_id: str) -> AsyncIterator[None]:
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            ws = self._workspaces[workspace_id] = _Workspace(asyncio.Semaphore(self.concurrency))
        if ws.users >= self.concurrency + self.queue:
            raise TooManyRequests(
                f"Too many of this workspace's requests are in content screening at once ({self.concurrency} at a "
                f"time, {self.queue} waiting); retry shortly.", retry_after=RETRY_AFTER_S)
        ws.users += 1
        try:
            async with ws.semaphore:
                yield
        finally:
            ws.users -= 1
            if ws.users == 0:
                del self._workspaces[workspace_id]
