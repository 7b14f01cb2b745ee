"""Control-plane requests in flight, per workspace, so that a workspace deletion can close them out.

Every authenticated control-plane request holds its workspace for as long as it runs
(`api/deps.principal`). Deleting a workspace first closes it here: a request that arrives later
is refused, and uploads in flight stop at their next chunk (`guard`, `aguard`); then the deletion
waits until the requests already running are done (`wait_idle`), so that none of them writes a
row or a file of the workspace after the deletion removed them.

This is per server process: the database state `deleting` refuses the workspace's keys on every
server, and the datastore refuses writes once its key is destroyed; what this adds is that an
upload or write already under way on this server ends before the deletion proceeds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator

from modelport.errors import Conflict


def _closed_error() -> Conflict:
    return Conflict("This workspace is being deleted: the request was stopped and nothing of it was kept.")


class WorkspaceActivity:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: Counter[str] = Counter()
        self._closed: set[str] = set()

    @contextlib.contextmanager
    def hold(self, workspace_id: str) -> Iterator[None]:
        """Count a request of `workspace_id` while it runs; refuse it once the workspace is closed."""
        with self._cond:
            if workspace_id in self._closed:
                raise _closed_error()
            self._running[workspace_id] += 1
        try:
            yield
        finally:
            with self._cond:
                self._running[workspace_id] -= 1
                if self._running[workspace_id] <= 0:
                    del self._running[workspace_id]
                self._cond.notify_all()

    def close(self, workspace_id: str) -> None:
        with self._cond:
            self._closed.add(workspace_id)

    def forget(self, workspace_id: str) -> None:
        """The deletion finished: the id will never be used again, drop its entry."""
        with self._cond:
            self._closed.discard(workspace_id)

    def is_closed(self, workspace_id: str) -> bool:
        with self._cond:
            return workspace_id in self._closed

    def check(self, workspace_id: str) -> None:
        if self.is_closed(workspace_id):
            raise _closed_error()

    def guard(self, workspace_id: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass an upload's chunks on, stopping it at the next chunk once the workspace is closed."""
        for chunk in chunks:
            self.check(workspace_id)
            yield chunk

    async def aguard(self, workspace_id: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.check(workspace_id)
            yield chunk

    def wait_idle(self, workspace_id: str, timeout: float, own: int = 0) -> bool:
        """Wait until at most `own` requests of the workspace run (the deleting request itself, when
        it is one of them); False if that did not happen within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running[workspace_id] > own:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
