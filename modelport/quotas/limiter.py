"""Requests and tokens per minute, checked and charged at admission with the `limits` library's
async storage: in this process's memory by default, in Redis when MODELPORT_REDIS_URL is set, so
that several servers share one count.

Both dimensions are sliding-window counters (the library's `acquire_sliding_window_entry`: one
atomic check-and-charge, a Lua script in Redis; a refused request charges nothing):

- requests per minute are evaluated over short windows, as Azure does: a limit of N admits N // 6
  requests per 10 seconds (below 6, N per 60 seconds), so a minute's limit cannot be spent in
  its first second;
- tokens per minute over 60 seconds, charged with the request's estimate (quotas/estimate.py).

Requests are checked first: a request refused for tokens has still spent a request.
Under a steady overload each window admits exactly its limit (the previous window's weight and
the current count add up to it); when a window starts after an idle one, its whole limit is
available at once.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from limits.errors import StorageError
from limits.storage import storage_from_string

from modelport.errors import InvalidInput, RateLimited, ServiceUnavailable
from modelport.quotas.rates import RateLimits

#: Key prefix in the shared store; the rest of the key is the dimension and the deployment id.
PREFIX = "modelport"
#: Added to a computed wait, so that a client retrying on time finds the room there.
EPSILON = 0.01
#: The limit an unconditional charge is made under (tokens used beyond an estimate: already spent).
UNCONDITIONAL = 2**52


@dataclass(frozen=True)
class Window:
    amount: int
    seconds: int


def request_window(requests_per_minute: int) -> Window:
    if requests_per_minute >= 6:
        return Window(requests_per_minute // 6, 10)
    return Window(requests_per_minute, 60)


def token_window(tokens_per_minute: int) -> Window:
    return Window(tokens_per_minute, 60)


@dataclass(frozen=True)
class Decision:
    """An admitted request's view of its deployment's limits (the x-ratelimit-* headers)."""

    limits: RateLimits
    remaining_requests: int  # in the current short window
    remaining_tokens: int

    def headers(self) -> dict[str, str]:
        return ratelimit_headers(self.limits, self.remaining_requests, self.remaining_tokens)


def ratelimit_headers(limits: RateLimits, remaining_requests: int, remaining_tokens: int) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(limits.requests_per_minute),
            "x-ratelimit-remaining-requests": str(max(0, remaining_requests)),
            "x-ratelimit-limit-tokens": str(limits.tokens_per_minute),
            "x-ratelimit-remaining-tokens": str(max(0, remaining_tokens))}


def storage_uri(redis_url: str | None) -> str:
    """The `limits` storage for MODELPORT_REDIS_URL (redis://, rediss://, redis+unix://), or memory."""
    if not redis_url:
        return "async+memory://"
    return "async+" + redis_url


def wait_seconds(window: Window, state: tuple[int, float, int, float], cost: int) -> float:
    """How long until `cost` fits in a sliding window whose storage state is `state` (previous
    count, seconds until the current window ends, current count, current ttl). The storage admits
    when floor(previous * time left / period) + current + cost <= limit."""
    previous, previous_ttl, current, current_ttl = state
    period, limit = window.seconds, window.amount
    window_end = max(0.0, current_ttl - period) if current else previous_ttl
    if current + cost <= limit:
        if previous == 0:
            return 0.0
        # The previous window's weight shrinks linearly until the current window ends.
        return max(0.0, previous_ttl - period * (limit - current - cost + 1) / previous) + EPSILON
    # Only once the current window has become the previous one.
    return window_end + max(0.0, period - period * (limit - cost + 1) / current) + EPSILON


class RateLimiter:
    """Check-and-charge for one deployment's requests and tokens (see the module docstring)."""

    def __init__(self, uri: str = "async+memory://") -> None:
        options: dict[str, Any] = {}
        self.remote = not uri.startswith("async+memory")
        self._pool: Any = None
        if self.remote:
            import redis.asyncio

            # redis-py's asyncio client (the library's default, coredis, is not a dependency here),
            # on a connection pool of ours, which `close` disconnects.
            url = uri.removeprefix("async+")
            self._pool = redis.asyncio.ConnectionPool.from_url(
                "unix://" + url.removeprefix("redis+unix://") if url.startswith("redis+unix://") else url)
            options = {"implementation": "redispy", "key_prefix": PREFIX, "wrap_exceptions": True,
                       "connection_pool": self._pool}
        self.storage: Any = storage_from_string(uri, **options)
        self.uri = uri

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def admit(self, deployment_id: str, limits: RateLimits, tokens: int) -> Decision:
        """Admit and charge one request of `tokens` estimated tokens, or raise RateLimited (429,
        nothing charged for the dimension that refused) or InvalidInput (400: it can never fit)."""
        if tokens > limits.tokens_per_minute:
            raise InvalidInput(
                f"This request may use up to {tokens} tokens (its prompt estimate plus max_tokens), more than this "
                f"deployment's limit of {limits.tokens_per_minute} tokens per minute. Lower max_tokens, or ask "
                "the workspace owner to raise the deployment's tokens_per_minute.", field="max_tokens")
        rw, tw = request_window(limits.requests_per_minute), token_window(limits.tokens_per_minute)
        rkey, tkey = f"rpm/{deployment_id}", f"tpm/{deployment_id}"
        storage = self.storage
        try:
            if not await storage.acquire_sliding_window_entry(rkey, rw.amount, rw.seconds, 1):
                raise await self._refused(limits, rw, tw, rkey, tkey, 1, "requests")
            if not await storage.acquire_sliding_window_entry(tkey, tw.amount, tw.seconds, tokens):
                raise await self._refused(limits, rw, tw, rkey, tkey, tokens, "tokens")
            if self.remote:
                rstate, tstate = await asyncio.gather(storage.get_sliding_window(rkey, rw.seconds),
                                                      storage.get_sliding_window(tkey, tw.seconds))
            else:
                rstate = await storage.get_sliding_window(rkey, rw.seconds)
                tstate = await storage.get_sliding_window(tkey, tw.seconds)
        except RateLimited:
            raise
        except Exception as exc:
            if self.remote and _is_storage_error(exc):
                raise ServiceUnavailable("The rate-limit store (Redis) cannot be reached, so requests are not "
                                         "admitted; retry shortly.") from exc
            raise
        return Decision(limits, _remaining(rw, rstate), _remaining(tw, tstate))

    async def charge(self, deployment_id: str, limits: RateLimits, tokens: int) -> None:
        """Add `tokens` to the deployment's current tokens-per-minute window whatever it holds:
        tokens a request used beyond its admission estimate (quotas/settle.py). The same atomic
        step as an admission (window rotation included), under a limit nothing reaches."""
        tw = token_window(limits.tokens_per_minute)
        await self.storage.acquire_sliding_window_entry(f"tpm/{deployment_id}", UNCONDITIONAL, tw.seconds, tokens)

    async def peek(self, deployment_id: str, limits: RateLimits) -> Decision:
        """The deployment's limits and what is left of them, charging nothing."""
        rw, tw = request_window(limits.requests_per_minute), token_window(limits.tokens_per_minute)
        try:
            rstate = await self.storage.get_sliding_window(f"rpm/{deployment_id}", rw.seconds)
            tstate = await self.storage.get_sliding_window(f"tpm/{deployment_id}", tw.seconds)
        except Exception as exc:
            if self.remote and _is_storage_error(exc):
                raise ServiceUnavailable("The rate-limit store (Redis) cannot be reached; retry shortly.") from exc
            raise
        return Decision(limits, _remaining(rw, rstate), _remaining(tw, tstate))

    async def _refused(self, limits: RateLimits, rw: Window, tw: Window, rkey: str, tkey: str, cost: int,
                       dimension: str) -> RateLimited:
        rstate = await self.storage.get_sliding_window(rkey, rw.seconds)
        tstate = await self.storage.get_sliding_window(tkey, tw.seconds)
        window, state = (rw, rstate) if dimension == "requests" else (tw, tstate)
        wait = max(0.001, wait_seconds(window, state, cost))
        if dimension == "requests":
            what = f"{limits.requests_per_minute} requests per minute ({rw.amount} per {rw.seconds} seconds)"
        else:
            what = f"{limits.tokens_per_minute} tokens per minute (this request is charged {cost})"
        return RateLimited(
            f"This deployment's rate limit of {what} is reached. Retry after {math.ceil(wait)} seconds.",
            retry_after_ms=math.ceil(wait * 1000),
            headers=ratelimit_headers(limits, _remaining(rw, rstate), _remaining(tw, tstate)),
            details={"openai_code": "rate_limit_exceeded", "azure_code": "429", "limit": dimension})


def _remaining(window: Window, state: tuple[int, float, int, float]) -> int:
    previous, previous_ttl, current, _ = state
    used = math.floor(previous * previous_ttl / window.seconds) + current
    return max(0, window.amount - used)


def _is_storage_error(exc: Exception) -> bool:
    return isinstance(exc, StorageError | ConnectionError | OSError | TimeoutError)
