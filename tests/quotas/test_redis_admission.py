"""Admission in Redis in one round trip (quotas/limiter.py ADMIT_SCRIPT) against the `limits`
library's own steps, on a real Redis server (database 15).

Over random sequences of admissions, from random window states (counts of a previous window,
a current window due to rotate), the script and the library decide alike, report the same
remaining requests and tokens, and leave the same counts in the library's keys, which the
library's readers (`peek`) then read alike. Concurrent callers never get more than a limit.

The previous window's weight depends on time (its ttl shrinks), so the two sides, run a
millisecond apart, could fall either side of a rounding step: an admission during which a
weight could have changed its integer part is not compared, and ends the comparison for its
sequence (the two sides may differ from then on for that reason alone).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from modelport.errors import RateLimited
from modelport.quotas.limiter import RateLimiter, request_window, storage_uri, token_window, window_keys
from modelport.quotas.rates import RateLimits
from tests.support.redis import require_redis

#: Margin (ms) around an admission's time when judging whether a weight could have changed.
SLACK_MS = 5


def _dep() -> str:
    return "dep_" + secrets.token_hex(8)


class _Loop:
    """One event loop for a whole example (the limiters' connections belong to it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


async def _outcome(limiter: RateLimiter, dep: str, limits: RateLimits, tokens: int) -> tuple:
    try:
        d = await limiter.admit(dep, limits, tokens)
    except RateLimited as exc:
        h = exc.headers
        return ("refused", exc.details["limit"], h["x-ratelimit-remaining-requests"],
                h["x-ratelimit-remaining-tokens"])
    return "admitted", None, d.remaining_requests, d.remaining_tokens


def _weighted(state: st.DataObject, period_ms: int, latest_ms: int) -> tuple[int, int]:
    """A count that will be weighted by its ttl (a previous window, or a current one due to
    rotate), with a ttl half-way between two steps of the weight's integer part: the weight keeps
    its integer part for period / (2 * count) ms, at least 250 ms (counts up to 20)."""
    count = state.draw(st.integers(1, 20))
    steps = [k for k in range(count) if 1000 <= (k + 0.5) * period_ms / count <= latest_ms]
    k = state.draw(st.sampled_from(steps))
    return count, int((k + 0.5) * period_ms / count)


def _windows(state: st.DataObject, period_ms: int, limit: int) -> dict[str, tuple[int, int]]:
    """A random state of a window's two keys: (count, ttl in ms) of the previous one and of the
    current one (which is due to rotate when its ttl is below the period)."""
    keys: dict[str, tuple[int, int]] = {}
    if state.draw(st.booleans()):
        keys["previous"] = _weighted(state, period_ms, period_ms)
    if state.draw(st.booleans()):
        if state.draw(st.booleans()):  # due to rotate at the first admission: it becomes the previous one
            keys["current"] = _weighted(state, period_ms, period_ms - 1000)
        else:
            keys["current"] = (state.draw(st.integers(0, limit)),
                               state.draw(st.integers(period_ms + 2000, 2 * period_ms)))
    return keys


class AdmissionMachine(RuleBasedStateMachine):
    url: str

    def __init__(self) -> None:
        super().__init__()
        self.io = _Loop()
        uri = storage_uri(self.url)
        self.ours, self.library = RateLimiter(uri), RateLimiter(uri, one_round_trip=False)
        self.redis = redis.asyncio.Redis.from_url(self.url)
        self.a, self.b = _dep(), _dep()
        self.comparing = True
        self.weights: list[tuple[int, int, int]] = []  # (count, ttl ms at seeding, period ms)
        self.rotations: list[tuple[int, int]] = []  # (ttl ms at seeding, period ms)
        self.seeded_at = 0.0
        self.limits = RateLimits(60, 1000)
        self.compared = 0

    @initialize(data=st.data(), rpm=st.integers(1, 120), tpm=st.integers(10, 2000))
    def seed(self, data: st.DataObject, rpm: int, tpm: int) -> None:
        self.limits = RateLimits(rpm, tpm)
        rw, tw = request_window(rpm), token_window(tpm)
        seeds = {"rpm": (_windows(data, rw.seconds * 1000, rw.amount), rw.seconds * 1000),
                 "tpm": (_windows(data, tw.seconds * 1000, tw.amount), tw.seconds * 1000)}

        async def go() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                for dep in (self.a, self.b):
                    for dim, (keys, _) in seeds.items():
                        previous, current = window_keys(f"{dim}/{dep}")
                        for name, key in (("previous", previous), ("current", current)):
                            if name in keys:
                                count, ttl = keys[name]
                                p.set(key, count, px=ttl)
                await p.execute()

        self.io.run(go())
        self.seeded_at = time.monotonic()
        for keys, period in seeds.values():
            for count, ttl in keys.values():
                if ttl < period:  # weighted by its ttl
                    self.weights.append((count, ttl, period))
                else:  # a current window that must not come due during the sequence
                    self.rotations.append((ttl, period))

    def _steady(self, start: float, end: float) -> bool:
        """No time-weighted count can have changed its integer part between start and end."""
        lo = (start - self.seeded_at) * 1000 - SLACK_MS
        hi = (end - self.seeded_at) * 1000 + SLACK_MS
        for count, ttl, period in self.weights:
            if ttl - hi <= 0 or math.floor(count * (ttl - lo) / period) != math.floor(count * (ttl - hi) / period):
                return False
        return all(ttl - hi > period for ttl, period in self.rotations)

    @rule(share=st.floats(0.0, 1.0))
    def admit(self, share: float) -> None:
        tokens = max(1, int(self.limits.tokens_per_minute * share * share))
        start = time.monotonic()
        ours = self.io.run(_outcome(self.ours, self.a, self.limits, tokens))
        theirs = self.io.run(_outcome(self.library, self.b, self.limits, tokens))
        seen_ours = self.io.run(self.library.peek(self.a, self.limits))  # the library's reader on our keys
        seen_theirs = self.io.run(self.library.peek(self.b, self.limits))
        counts = self.io.run(self._counts())
        if not (self.comparing and self._steady(start, time.monotonic())):
            self.comparing = False
            return
        assert ours == theirs
        assert (seen_ours.remaining_requests, seen_ours.remaining_tokens) == \
               (seen_theirs.remaining_requests, seen_theirs.remaining_tokens)
        assert counts[0][0] == counts[1][0]  # the same counts in the same keys
        for ours_ttl, theirs_ttl in zip(counts[0][1], counts[1][1], strict=True):  # and the same expiries
            assert (ours_ttl < 0) == (theirs_ttl < 0) and abs(ours_ttl - theirs_ttl) < 1000
        self.compared += 1

    async def _counts(self) -> list[tuple[list[Any], list[int]]]:
        """For each side: the counts in the four keys, and their ttls in ms (negative: none)."""
        out = []
        for dep in (self.a, self.b):
            keys = [*window_keys(f"rpm/{dep}"), *window_keys(f"tpm/{dep}")]
            out.append((await self.redis.mget(keys), [await self.redis.pttl(k) for k in keys]))
        return out

    def teardown(self) -> None:
        async def close() -> None:
            await self.ours.close()
            await self.library.close()
            await self.redis.aclose()

        self.io.run(close())
        self.io.close()
        type(self).total_compared += self.compared

    total_compared = 0


def test_one_round_trip_admits_exactly_what_the_library_admits() -> None:
    AdmissionMachine.url = require_redis()
    AdmissionMachine.total_compared = 0
    run_state_machine_as_test(AdmissionMachine, settings=settings(
        max_examples=60, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck)))
    # the comparison ran: most admissions were steady enough to compare
    assert AdmissionMachine.total_compared >= 200


@pytest.mark.parametrize("dimension", ["requests", "tokens"])
def test_concurrent_callers_never_exceed_a_limit(dimension: str) -> None:
    """64 tasks on two limiters (two connection pools, as two servers) race for one window: the
    window admits exactly its limit, never one more."""
    uri = storage_uri(require_redis())
    limits = RateLimits(60, 10**9) if dimension == "requests" else RateLimits(10**6, 1000)
    tokens = 7
    expected = request_window(60).amount if dimension == "requests" else 1000 // tokens

    async def run() -> int:
        limiters = [RateLimiter(uri), RateLimiter(uri)]
        d = _dep()
        admitted = 0

        async def caller(limiter: RateLimiter) -> None:
            nonlocal admitted
            for _ in range(6):
                try:
                    await limiter.admit(d, limits, tokens)
                except RateLimited:
                    continue
                admitted += 1

        try:
            await asyncio.gather(*(caller(limiters[i % 2]) for i in range(64)))
        finally:
            for limiter in limiters:
                await limiter.close()
        return admitted

    assert asyncio.run(run()) == expected
