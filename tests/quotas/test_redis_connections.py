"""The limiter's own Redis calls (quotas/limiter.py, `_Evalsha`) on real Redis servers: what
redis-py's client did for it before, it must still do: survive a restarted server (its idle
connections closed, its script cache empty) without refusing or double-counting, and never read
another call's answer after a call was cancelled mid-way.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.quotas.limiter import RateLimiter, request_window, storage_uri
from modelport.quotas.rates import RateLimits
from tests.support.redis import require_redis, wait_for_private_redis
from tests.support.server import free_port


def dep() -> str:
    return "dep_" + secrets.token_hex(8)


class PrivateRedis:
    """A redis-server of this test's own (nothing persisted), which the test may restart."""

    def __init__(self, directory: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed (the test restarts a private one)")
        self.binary = server
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_private_redis(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_restarted_redis_is_reconnected_and_counts_from_scratch(private_redis: PrivateRedis) -> None:
    """Its idle connections were closed by the old server and the new one knows no script: the
    next admission is admitted (not 503) and charged once."""
    limits = RateLimits(60, 1000)
    per_window = request_window(60).amount
    d = dep()

    async def run() -> None:
        limiter = RateLimiter(storage_uri(f"redis://127.0.0.1:{private_redis.port}/0"))
        try:
            for i in range(3):  # the first loads the script (EVAL), the others call it by digest
                decision = await limiter.admit(d, limits, 10)
                assert (decision.remaining_requests, decision.remaining_tokens) == (per_window - 1 - i, 990 - 10 * i)
            private_redis.stop()
            private_redis.start()  # same port, empty: no counts, no scripts
            for i in range(3):
                decision = await limiter.admit(d, limits, 10)
                assert (decision.remaining_requests, decision.remaining_tokens) == (per_window - 1 - i, 990 - 10 * i)
        finally:
            await limiter.close()

    asyncio.run(run())


def test_a_restart_after_concurrent_admissions_refuses_nothing(private_redis: PrivateRedis) -> None:
    """Concurrent admissions leave several idle connections, all closed by a restart: the next
    admissions, alone and concurrent, are admitted (one stale connection must not lead to trying
    the next stale one until the attempts run out) and each is charged once."""
    limits = RateLimits(6000, 10**9)
    per_window = request_window(6000).amount
    d = dep()

    async def run() -> None:
        limiter = RateLimiter(storage_uri(f"redis://127.0.0.1:{private_redis.port}/0"))
        try:
            await asyncio.gather(*(limiter.admit(d, limits, 1) for _ in range(8)))
            private_redis.stop()
            private_redis.start()
            first = await limiter.admit(d, limits, 1)
            assert first.remaining_requests == per_window - 1
            decisions = await asyncio.gather(*(limiter.admit(d, limits, 1) for _ in range(8)))
            assert sorted(x.remaining_requests for x in decisions) == list(range(per_window - 9, per_window - 1))
        finally:
            await limiter.close()

    asyncio.run(run())


def test_a_stopped_redis_answers_503_and_a_started_one_admits_again(private_redis: PrivateRedis) -> None:
    """Fail closed while Redis is away, and no lasting harm once it is back."""
    from modelport.errors import ServiceUnavailable

    limits = RateLimits(60, 1000)
    d = dep()

    async def run() -> None:
        limiter = RateLimiter(storage_uri(f"redis://127.0.0.1:{private_redis.port}/0"))
        try:
            await limiter.admit(d, limits, 1)
            private_redis.stop()
            for _ in range(2):
                with pytest.raises(ServiceUnavailable):
                    await limiter.admit(d, limits, 1)
            private_redis.start()
            decision = await limiter.admit(d, limits, 1)
            assert decision.remaining_requests == request_window(60).amount - 1
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 8])
def test_a_cancelled_admission_leaves_no_answer_for_the_next(turns: int) -> None:
    """An admission cancelled while it waits for Redis (its client went away) may have been
    charged, but its answer must not be read as another admission's: after each cancelled one,
    an admission's x-ratelimit state equals what the store holds right after it. (Two layers keep
    it so: `_Evalsha` disconnects a connection whose call did not end, and redis-py's
    `read_response` already disconnects on any exception; this test holds either to it.)"""
    url = require_redis()
    limits = RateLimits(6000, 10**9)
    d = dep()

    async def run() -> None:
        limiter = RateLimiter(storage_uri(url))
        reference = RateLimiter(storage_uri(url))  # reads the windows on connections of its own
        try:
            for _ in range(20):
                task = asyncio.create_task(limiter.admit(d, limits, 3))
                for _ in range(turns):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                await asyncio.sleep(0.01)  # Redis has run the cancelled one, if it was sent
                decision = await limiter.admit(d, limits, 3)
                held = await reference.peek(d, limits)
                assert (decision.remaining_requests, decision.remaining_tokens) == (
                    held.remaining_requests, held.remaining_tokens)
        finally:
            await limiter.close()
            await reference.close()

    asyncio.run(run())
