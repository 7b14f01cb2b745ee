"""Requests and tokens per minute, checked and charged at admission: in this process's memory by
default (quotas/memory.py), in Redis when MODELPORT_REDIS_URL is set, so that several servers
share one count (the `limits` library's async Redis storage, and one script of ours beside it).

Both dimensions are sliding-window counters with the arithmetic of the `limits` library's
`acquire_sliding_window_entry` (one atomic check-and-charge: a Lua script in Redis, one call under
a lock in memory; a refused request charges nothing):

- requests per minute are evaluated over short windows, as Azure does: a limit of N admits N // 6
  requests per 10 seconds (below 6, N per 60 seconds), so a minute's limit cannot be spent in
  its first second;
- tokens per minute over 60 seconds, charged with the request's estimate (quotas/estimate.py).

Requests are checked first: a request refused for tokens has still spent a request.
Under a steady overload each window admits exactly its limit (the previous window's weight and
the current count add up to it); when a window starts after an idle one, its whole limit is
available at once.

In Redis an admission is one round trip: one Lua script (ADMIT_SCRIPT, loaded once and called
by its digest, EVALSHA) does both dimensions' check-and-charge and returns both windows' state
for the x-ratelimit headers, on the same keys and with the same arithmetic as the library's
sliding-window script, so that the library's readers (`peek`, `charge`) see what it wrote
(tests/quotas/test_redis_admission.py compares its decisions with the library's). The library's
own steps took four round trips (two charges, then two reads of the windows). Its keys live on
one Redis server (redis://, rediss://, redis+unix://; not Redis Cluster, where the four keys of an
admission would be on different nodes).

The admission's command goes out on redis-py's connections (which connect, authenticate, select
the database, speak TLS or a Unix socket) but not through redis-py's client layers: `_Evalsha`
packs the command itself (the keys and limits of a deployment once, the tokens per call), keeps
its idle connections in a list of its own, writes and reads the answer with the connection's
parser (hiredis, redis-py's C parser, when it is installed: a dependency here). Through the
client, its command packing, pool, retry wrapper and observability hooks cost more CPU than the
round trip itself (benchmarks/bench_gateway.py, `redis-client` in the quota check; BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, cast

from limits.errors import StorageError
from limits.storage import storage_from_string

from modelport.errors import InvalidInput, RateLimited, ServiceUnavailable
from modelport.quotas.memory import MemoryWindows, State
from modelport.quotas.rates import RateLimits

#: Key prefix in the shared store; the rest of the key is the dimension and the deployment id.
PREFIX = "modelport"
#: Added to a computed wait, so that a client retrying on time finds the room there.
EPSILON = 0.01
#: The limit an unconditional charge is made under (tokens used beyond an estimate: already spent).
UNCONDITIONAL = 2**52

#: One admission in Redis: KEYS are the requests' previous and current window, then the tokens';
#: ARGV the requests' limit and period (seconds), the tokens' limit and period, and the tokens
#: charged. Each window is rotated, checked and charged as the library's
#: acquire_sliding_window.lua does (times in milliseconds). Returns the outcome (0 admitted,
#: 1 refused for requests, 2 refused for tokens) and both windows' state after it, as the library's
#: sliding_window.lua reads it: previous count, previous ttl, current count, current ttl, for
#: requests then tokens.
ADMIT_SCRIPT = """
local function rotate(previous_key, current_key, expiry)
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + expiry)
    end
end

local function acquire(previous_key, current_key, limit, expiry, amount)
    if amount > limit then
        return false
    end
    rotate(previous_key, current_key, expiry)
    local previous_count = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = tonumber(redis.call('pttl', previous_key)) or 0
    local current_count = tonumber(redis.call('get', current_key)) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    if math.floor(previous_count * previous_ttl / expiry) + current_count + amount > limit then
        return false
    end
    if redis.call('exists', current_key) == 1 then
        redis.call('incrby', current_key, amount)
    else
        redis.call('set', current_key, amount, 'PX', expiry * 2)
    end
    return true
end

local function state(previous_key, current_key, expiry)
    rotate(previous_key, current_key, expiry)
    return {tonumber(redis.call('get', previous_key)) or 0, tonumber(redis.call('pttl', previous_key)),
            tonumber(redis.call('get', current_key)) or 0, tonumber(redis.call('pttl', current_key))}
end

local outcome = 0
if not acquire(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000, 1) then
    outcome = 1
elseif not acquire(KEYS[3], KEYS[4], tonumber(ARGV[3]), tonumber(ARGV[4]) * 1000, tonumber(ARGV[5])) then
    outcome = 2
end
local r = state(KEYS[1], KEYS[2], tonumber(ARGV[2]) * 1000)
local t = state(KEYS[3], KEYS[4], tonumber(ARGV[4]) * 1000)
return {outcome, r[1], r[2], r[3], r[4], t[1], t[2], t[3], t[4]}
"""


@dataclass(frozen=True)
class Window:
    amount: int
    seconds: int


@functools.lru_cache(maxsize=4096)
def request_window(requests_per_minute: int) -> Window:
    if requests_per_minute >= 6:
        return Window(requests_per_minute // 6, 10)
    return Window(requests_per_minute, 60)


@functools.lru_cache(maxsize=4096)
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

    def __init__(self, uri: str = "async+memory://", *, one_round_trip: bool = True,
                 library_memory: bool = False, redis_client: bool = False, parser_class: Any = None) -> None:
        """`one_round_trip=False` admits in Redis with the library's own steps (four round trips):
        the reference that tests and benchmarks compare ADMIT_SCRIPT with; `library_memory=True`
        admits in memory with the library's async memory storage, the reference that
        benchmarks/bench_gateway.py compares quotas/memory.py with; `redis_client=True` calls
        ADMIT_SCRIPT through redis-py's client (its Script object: the path before `_Evalsha`),
        and `parser_class` sets redis-py's reply parser (the benchmarks' references; by default
        redis-py's own choice, hiredis when installed)."""
        options: dict[str, Any] = {}
        self.remote = not uri.startswith("async+memory")
        self._pool: Any = None
        if self.remote:
            import redis.asyncio

            # redis-py's asyncio client (the library's default, coredis, is not a dependency here),
            # on a connection pool of ours, which `close` disconnects.
            url = uri.removeprefix("async+")
            self._pool = redis.asyncio.ConnectionPool.from_url(
                "unix://" + url.removeprefix("redis+unix://") if url.startswith("redis+unix://") else url,
                **({"parser_class": parser_class} if parser_class is not None else {}))
            options = {"implementation": "redispy", "key_prefix": PREFIX, "wrap_exceptions": True,
                       "connection_pool": self._pool}
        # in memory: our windows (quotas/memory.py, the library's arithmetic without its storage's
        # per-call costs); in Redis: the library's storage (charge, peek, the four-round-trip reference)
        own_memory = not self.remote and not library_memory
        self.memory: MemoryWindows | None = MemoryWindows() if own_memory else None
        self.storage: Any = None if own_memory else storage_from_string(uri, **options)
        self.uri = uri
        self._admit_script: Any = None
        if self.remote and one_round_trip:
            if redis_client:
                self._admit_script = redis.asyncio.Redis(connection_pool=self._pool).register_script(ADMIT_SCRIPT)
            else:
                self._admit_script = _Evalsha(self._pool, ADMIT_SCRIPT)

    @property
    def parser(self) -> str:
        """The reply parser of the Redis connections ("hiredis" or redis-py's Python one); "" in memory."""
        if self._pool is None:
            return ""
        name = getattr(self._pool.connection_kwargs.get("parser_class"), "__name__", "")
        if not name:
            from redis.asyncio.connection import DefaultParser

            name = DefaultParser.__name__
        return "hiredis" if "Hiredis" in name else f"python ({name})"

    async def close(self) -> None:
        if isinstance(self._admit_script, _Evalsha):
            self._admit_script.idle.clear()  # they belong to the pool, which disconnects them
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
        if self.memory is not None:
            outcome, rstate, tstate = self.memory.admit(rkey, rw.amount, rw.seconds, 1, tkey, tw.amount, tw.seconds,
                                                        tokens)
            if outcome == 0:
                return Decision(limits, _remaining(rw, rstate), _remaining(tw, tstate))
            raise _refusal(limits, rw, tw, rstate, tstate, 1 if outcome == 1 else tokens,
                           "requests" if outcome == 1 else "tokens")
        if self._admit_script is not None:
            return await self._admit_in_redis(limits, rw, tw, rkey, tkey, tokens)
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

    async def _admit_in_redis(self, limits: RateLimits, rw: Window, tw: Window, rkey: str, tkey: str,
                              tokens: int) -> Decision:
        """`admit` in one round trip (ADMIT_SCRIPT)."""
        try:
            out = await self._admit_script(
                keys=[*window_keys(rkey), *window_keys(tkey)],
                args=[rw.amount, rw.seconds, tw.amount, tw.seconds, tokens])
        except Exception as exc:
            from redis.exceptions import RedisError

            # every error of Redis (unreachable, or a refusal: OOM, READONLY after a failover,
            # MISCONF, BUSY, NOPERM) admits nothing and says so, as the library's own path does
            if _is_storage_error(exc) or isinstance(exc, RedisError):
                raise ServiceUnavailable("The rate-limit store (Redis) cannot be reached or refused the check, so "
                                         "requests are not admitted; retry shortly.") from exc
            raise
        outcome = int(out[0])
        rstate, tstate = _state(out[1:5]), _state(out[5:9])
        if outcome == 0:
            return Decision(limits, _remaining(rw, rstate), _remaining(tw, tstate))
        raise _refusal(limits, rw, tw, rstate, tstate, 1 if outcome == 1 else tokens,
                       "requests" if outcome == 1 else "tokens")

    async def charge(self, deployment_id: str, limits: RateLimits, tokens: int) -> None:
        """Add `tokens` to the deployment's current tokens-per-minute window whatever it holds:
        tokens a request used beyond its admission estimate (quotas/settle.py). The same atomic
        step as an admission (window rotation included), under a limit nothing reaches."""
        tw = token_window(limits.tokens_per_minute)
        if self.memory is not None:
            self.memory.charge(f"tpm/{deployment_id}", tw.seconds, tokens)
            return
        await self.storage.acquire_sliding_window_entry(f"tpm/{deployment_id}", UNCONDITIONAL, tw.seconds, tokens)

    async def peek(self, deployment_id: str, limits: RateLimits) -> Decision:
        """The deployment's limits and what is left of them, charging nothing."""
        rw, tw = request_window(limits.requests_per_minute), token_window(limits.tokens_per_minute)
        try:
            rstate = await self.state(f"rpm/{deployment_id}", rw.seconds)
            tstate = await self.state(f"tpm/{deployment_id}", tw.seconds)
        except Exception as exc:
            if self.remote and _is_storage_error(exc):
                raise ServiceUnavailable("The rate-limit store (Redis) cannot be reached; retry shortly.") from exc
            raise
        return Decision(limits, _remaining(rw, rstate), _remaining(tw, tstate))

    async def state(self, key: str, seconds: int) -> State:
        """A window's state (previous count, its weight's seconds, current count, its ttl), as the
        library's `get_sliding_window` returns it; `key` is "rpm/<deployment id>" or "tpm/..."."""
        if self.memory is not None:
            return self.memory.state(key, seconds)
        return cast(State, await self.storage.get_sliding_window(key, seconds))

    async def _refused(self, limits: RateLimits, rw: Window, tw: Window, rkey: str, tkey: str, cost: int,
                       dimension: str) -> RateLimited:
        rstate = await self.storage.get_sliding_window(rkey, rw.seconds)
        tstate = await self.storage.get_sliding_window(tkey, tw.seconds)
        return _refusal(limits, rw, tw, rstate, tstate, cost, dimension)


class _Evalsha:
    """One script called by its digest on connections of a redis-py pool, without the client's
    layers (see the module docstring): `await evalsha(keys, args)` returns the script's answer
    or raises what redis-py raises (a RedisError for an error reply or a lost connection).

    A connection goes back to the idle list only after its whole answer was read, so an idle
    one never holds a stale reply; one that failed is disconnected and returned to the pool.
    An idle connection the server closed meanwhile (a restart, a timeout) fails on its first use:
    every idle connection is dropped then and the call is made once more on a fresh connection
    (if the server ran the script before the connection broke, that charges twice: refusing too
    much, never admitting too much; redis-py's client retries the same way). An unknown digest
    (a restarted or flushed Redis) is answered by sending the script itself (EVAL), which also
    caches it there again."""

    def __init__(self, pool: Any, script: str) -> None:
        self.pool = pool
        sha = hashlib.sha1(script.encode()).hexdigest().encode()  # noqa: S324 - Redis names scripts by SHA-1
        self._by_digest = _bulk(b"EVALSHA") + _bulk(sha)
        self._by_text = _bulk(b"EVAL") + _bulk(script.encode())
        self.idle: list[Any] = []
        self._packed: dict[tuple[Any, ...], bytes] = {}  # keys and all arguments but the last, packed

    def _pack(self, head: bytes, keys: list[str], args: list[int]) -> bytes:
        """The RESP array of EVALSHA/EVAL (`head`: command and digest or text), the number of
        keys, the keys, the arguments; all but the last argument are packed once per distinct
        value (a deployment's keys and limits) and kept."""
        fixed = (*keys, *args[:-1])
        rest = self._packed.get(fixed)
        if rest is None:
            if len(self._packed) >= 10_000:  # deployments come and go: bounded
                self._packed.clear()
            rest = self._packed[fixed] = (_bulk(b"%d" % len(keys)) + b"".join(_bulk(k.encode()) for k in keys)
                                          + b"".join(_bulk(b"%d" % a) for a in args[:-1]))
        return b"*%d\r\n" % (3 + len(keys) + len(args)) + head + rest + _bulk(b"%d" % args[-1])

    async def __call__(self, keys: list[str], args: list[int]) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, ResponseError

        head = self._by_digest
        for _ in range(3):  # at most: a stale idle connection, an unknown digest, the call
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await self.pool.get_connection()
            try:
                await conn.send_packed_command(self._pack(head, keys, args), check_health=False)
                answer = await conn.read_response()
            except NoScriptError:  # an error reply, read whole: the connection is clean
                self.idle.append(conn)
                if head is self._by_text:
                    raise
                head = self._by_text
                continue
            except ResponseError:  # the same
                self.idle.append(conn)
                raise
            except RedisConnectionError:
                await self._discard(conn)
                if not reused:
                    raise
                # the server closed an idle connection (a restart, a timeout): it closed the other
                # idle ones too, so all go, and the call is made once more on a fresh connection
                stale, self.idle = self.idle, []
                for other in stale:
                    await self._discard(other)
                continue
            except BaseException:  # cancelled or failed mid-answer: a reply may still be on its way
                await self._discard(conn)
                raise
            self.idle.append(conn)
            return answer
        raise RedisConnectionError("Redis closed the connections of the rate limiter while admitting")

    async def _discard(self, conn: Any) -> None:
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self.pool.release(conn)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def window_keys(key: str) -> tuple[str, str]:
    """The Redis keys of a sliding window, previous then current, as the `limits` library names
    them for its redis storage with our key prefix (the braces keep both on one cluster slot)."""
    current = f"{PREFIX}:{{{key}}}"
    return f"{current}/-1", current


def _state(values: list[Any]) -> State:
    """A window's state from ADMIT_SCRIPT (ttls in ms, negative when the key has none), as the
    library's get_sliding_window returns it (ttls in seconds, at least 0)."""
    previous, previous_ttl, current, current_ttl = (int(v) for v in values)
    return previous, max(0, previous_ttl) / 1000, current, max(0, current_ttl) / 1000


def _refusal(limits: RateLimits, rw: Window, tw: Window, rstate: tuple[int, float, int, float],
             tstate: tuple[int, float, int, float], cost: int, dimension: str) -> RateLimited:
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
