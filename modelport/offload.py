"""The one way modelport moves blocking work off the event loop.

Database queries, file and pipe I/O, hashing and CPU-bound screening must never run on the event loop
that serves every request. They go through `run_blocking`, which runs them in anyio's worker threads
(the pool FastAPI's synchronous routes use, 40 threads by default; context variables travel along).

Cancellation: a cancelled caller waits for its thread to finish before the cancellation goes on, so a
write is never half-done behind a request that went away. Work that a cancelled caller must leave
running on its own (handing a spec to a child that may never read it) is wrapped in
`asyncio.shield(run_blocking(...))`.

Work that needs its own small pool, so that it cannot take every thread from other requests (model
scans), passes a `ThreadBudget`: `await budget.run(fn, *args)`.

Not offloading: a worker process's own threads that own a resource (the thread that owns the model, the
tokenizer's thread in `workers/server.py`) are executors of one thread each, on purpose, and stay so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread

P = ParamSpec("P")
T = TypeVar("T")


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Await `fn(*args, **kwargs)` run in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class ThreadBudget:
    """At most `threads` calls at once run through this budget; callers beyond it wait without a thread."""

    def __init__(self, threads: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)
