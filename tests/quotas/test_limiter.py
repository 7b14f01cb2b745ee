"""The rate limiter on its real storages: this process's memory and a real Redis server.

Counts are exact: a window admits its limit and not one more, a refused request charges nothing,
a client that waits `retry-after-ms` gets in, and 32 concurrent tasks (or two processes sharing
Redis) admit the limit within 2%.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.errors import InvalidInput, RateLimited, ServiceUnavailable
from modelport.quotas.limiter import RateLimiter, Window, request_window, storage_uri, token_window
from modelport.quotas.rates import RateLimits
from tests.support.redis import require_redis, wait_for_private_redis
from tests.support.server import ROOT, free_port

BIG = 10**9


def dep() -> str:
    return "dep_" + secrets.token_hex(8)


class Limiter(RateLimiter):
    """The real limiter, whose connections close at the end of each `run` (one event loop each)."""

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        async def main() -> None:
            try:
                await coro
            finally:
                await self.close()

        asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[Limiter]:
    url = require_redis() if request.param == "redis" else None
    yield Limiter(storage_uri(url))


async def window_start(seconds: int, room: float) -> None:
    """Memory windows are aligned to the clock: wait until at least `room` seconds are left in
    the current one, so that a test's hits fall in one window."""
    left = seconds - time.time() % seconds
    if left < room:
        await asyncio.sleep(left + 0.05)


def test_request_windows_are_short_and_never_above_the_limit() -> None:
    assert request_window(1000) == Window(166, 10)  # Azure's default: 1,000 RPM over 10-second windows
    assert request_window(6) == Window(1, 10)
    assert request_window(61) == Window(10, 10)
    assert request_window(5) == Window(5, 60)  # too few for 10-second windows
    assert token_window(200_000) == Window(200_000, 60)
    for rpm in range(1, 2000):
        w = request_window(rpm)
        assert w.amount >= 1 and w.amount * (60 // w.seconds) <= rpm


def test_a_window_admits_its_limit_then_429_with_headers(limiter: Limiter) -> None:
    async def run() -> None:
        await window_start(10, 5)
        d, limits = dep(), RateLimits(60, BIG)  # 10 per 10 seconds
        decisions = [await limiter.admit(d, limits, 1) for _ in range(10)]
        assert [x.remaining_requests for x in decisions] == list(range(9, -1, -1))
        assert decisions[-1].headers() == {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                                           "x-ratelimit-limit-tokens": str(BIG),
                                           "x-ratelimit-remaining-tokens": str(BIG - 10)}
        with pytest.raises(RateLimited) as err:
            await limiter.admit(d, limits, 1)
        exc = err.value
        assert exc.status_code == 429 and exc.details["limit"] == "requests"
        assert 0 < exc.retry_after_ms <= 10_000 + 100 and exc.retry_after == -(-exc.retry_after_ms // 1000)
        assert exc.headers["x-ratelimit-remaining-requests"] == "0"
        assert "10 per 10 seconds" in exc.message

    limiter.run(run())


def test_a_refused_request_charges_no_tokens(limiter: Limiter) -> None:
    async def run() -> None:
        d, limits = dep(), RateLimits(BIG, 1000)
        assert (await limiter.admit(d, limits, 600)).remaining_tokens == 400
        with pytest.raises(RateLimited) as err:
            await limiter.admit(d, limits, 600)
        assert err.value.details["limit"] == "tokens"
        assert err.value.headers["x-ratelimit-remaining-tokens"] == "400"
        # The refused 600 were not charged: 400 still fit.
        assert (await limiter.admit(d, limits, 400)).remaining_tokens == 0

    limiter.run(run())


def test_a_request_larger_than_the_minute_is_400_not_429(limiter: Limiter) -> None:
    async def run() -> None:
        with pytest.raises(InvalidInput) as err:
            await limiter.admit(dep(), RateLimits(BIG, 500), 501)
        assert "500 tokens per minute" in err.value.message and err.value.field == "max_tokens"

    limiter.run(run())


def test_waiting_retry_after_ms_is_enough(limiter: Limiter) -> None:
    """A client that waits what the 429 says is admitted (once per window: 6 requests a minute)."""
    async def run() -> None:
        d, limits = dep(), RateLimits(6, BIG)
        await limiter.admit(d, limits, 1)
        with pytest.raises(RateLimited) as err:
            await limiter.admit(d, limits, 1)
        wait = err.value.retry_after_ms / 1000
        assert wait <= 10.1
        await asyncio.sleep(wait)
        await limiter.admit(d, limits, 1)

    limiter.run(run())


def test_32_concurrent_tasks_admit_the_limit(limiter: Limiter) -> None:
    # Memory windows are aligned to the clock, Redis windows start at the first hit: either way the
    # run stays inside one window, long enough for Redis round trips on a loaded machine.
    seconds = 6.0 if limiter.remote else 2.0

    async def run() -> None:
        if not limiter.remote:
            await window_start(10, seconds + 1)
        d, limits = dep(), RateLimits(3000, BIG)  # 500 per 10 seconds
        admitted = refused = 0

        async def client() -> None:
            nonlocal admitted, refused
            until = time.time() + seconds
            while time.time() < until:
                try:
                    await limiter.admit(d, limits, 1)
                    admitted += 1
                except RateLimited:
                    refused += 1
                    await asyncio.sleep(0)

        await asyncio.gather(*(client() for _ in range(32)))
        assert refused > 0, "the clients never reached the limit: the test proves nothing"
        assert abs(admitted - 500) <= 10, admitted

    limiter.run(run())


@pytest.mark.parametrize("dimension", ["requests", "tokens"])
def test_two_processes_share_one_limit_through_redis(dimension: str) -> None:
    url = require_redis()
    d = dep()
    rpm, tpm, cost = (1800, BIG, 1) if dimension == "requests" else (BIG // 1000, 2100, 7)  # 300 either way
    start = time.time() + 3  # both processes are up by then
    # 6 seconds: inside one window (Redis windows start at the first hit), long enough on a loaded machine
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.ratelimit_client", url, d, str(rpm), str(tpm),
                               str(cost), str(start), "6", "16"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(r["admitted"] > 0 and r["refused"] > 0 for r in results), results  # both competed, both hit it
    total = sum(r["admitted"] for r in results)
    assert abs(total - 300) <= 6, results


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(costs=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40))
def test_any_sequence_admits_within_both_limits_and_refuses_only_what_would_not_fit(costs: list[int]) -> None:
    """Within one window, any sequence of requests against 5 requests and 1,000 tokens a minute:
    what is admitted fits both limits; a request is refused for requests only when 5 were taken,
    for tokens only when its cost would not fit (and then it has still taken a request)."""
    limiter = RateLimiter()

    async def run() -> None:
        await window_start(60, 2)
        d, limits = dep(), RateLimits(5, 1000)
        requests = tokens = 0
        for cost in costs:
            try:
                decision = await limiter.admit(d, limits, cost)
            except RateLimited as exc:
                if exc.details["limit"] == "requests":
                    assert requests == 5
                else:
                    assert tokens + cost > 1000
                    requests += 1
                continue
            requests += 1
            tokens += cost
            assert (decision.remaining_requests, decision.remaining_tokens) == (5 - requests, 1000 - tokens)
        assert requests <= 5 and tokens <= 1000

    asyncio.run(run())


def test_an_unreachable_redis_refuses_requests_with_503() -> None:
    """Fail closed: without its shared count a server must not admit requests unlimited."""
    limiter = Limiter(storage_uri(f"redis://127.0.0.1:{free_port()}/0"))  # nothing listens there

    async def run() -> None:
        with pytest.raises(ServiceUnavailable) as err:
            await limiter.admit(dep(), RateLimits(60, 1000), 1)
        assert "Redis" in err.value.message and err.value.status_code == 503

    limiter.run(run())


def test_a_redis_that_refuses_the_check_answers_503(tmp_path: Path) -> None:
    """A Redis that answers with an error (here out of memory: maxmemory 1 byte, no eviction; also
    READONLY after a failover, MISCONF, BUSY) admits nothing, and the caller hears 503, as on the
    library's own path, not a 500."""
    import shutil

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (the test starts a private one that refuses writes)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--maxmemory", "1", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_private_redis(port)
        limiter = Limiter(storage_uri(f"redis://127.0.0.1:{port}/0"))

        async def run() -> None:
            with pytest.raises(ServiceUnavailable) as err:
                await limiter.admit(dep(), RateLimits(60, 1000), 1)
            assert "Redis" in err.value.message and err.value.status_code == 503

        limiter.run(run())
    finally:
        proc.terminate()
        proc.wait(10)
