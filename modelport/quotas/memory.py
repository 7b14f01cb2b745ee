"""Sliding-window counters in this process's memory: the rate limiter's default storage.

The same windows and the same arithmetic as the `limits` library's sliding-window counter
(`MemoryStorage.acquire_sliding_window_entry`, which its Redis script and ours also follow):
windows aligned to the clock (window i covers [i * period, (i + 1) * period)); a charge of
`amount` is admitted when floor(previous * previous_ttl / period) + current + amount <= limit,
where previous_ttl is the time left in the current window, the previous window's weight.
tests/quotas/test_memory_windows.py compares its decisions and states with the library's over
random sequences.

Why not the library's storage itself: on the request path every admission made about 20 of its
storage calls (each through its error wrapper, most with a clock read and a string key built
per window) and started an expiry task (async storage) or a thread every 10 ms (its synchronous
storage); benchmarks/bench_gateway.py measured it at 35-60 µs of CPU per admission here against
a few for this class (BENCHMARKS.md). A deployment's windows are two small lists, found by one
dictionary lookup; one clock read serves both dimensions of an admission; nothing expires in the
background (two windows per deployment and dimension: the memory is bounded by the deployments).
"""

from __future__ import annotations

import math
import threading
import time

#: A window's state as the library's `get_sliding_window` returns it: previous count, seconds
#: the previous count still weighs (the time left in the current window), current count,
#: seconds until the current count's key would expire (the end of the next window).
State = tuple[int, float, int, float]


class MemoryWindows:
    """Counters of sliding windows by key; thread-safe (one lock, never held across an await)."""

    def __init__(self) -> None:
        self._windows: dict[str, list[int]] = {}  # key -> [window index, previous count, current count]
        self._lock = threading.Lock()

    def _window(self, key: str, period: int, now: float) -> list[int]:
        """The key's counters, rotated to the window holding `now`."""
        index = int(now / period)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = [index, 0, 0]
        elif w[0] != index:
            # the current window became the previous one, or both are older than that
            w[1] = w[2] if w[0] == index - 1 else 0
            w[0], w[2] = index, 0
        return w

    @staticmethod
    def _state(w: list[int], period: int, now: float) -> State:
        previous = w[1]
        # the library's expressions, so that the floating-point results are the same
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - period) / period) % 1)) * period
        return previous, previous_ttl, w[2], (1 - ((now / period) % 1)) * period + period

    def admit(self, key1: str, limit1: int, period1: int, amount1: int,
              key2: str, limit2: int, period2: int, amount2: int) -> tuple[int, State, State]:
        """Check and charge two windows (key, limit, period, amount), the first before the second,
        at one instant: 0 and both charged, 1 (the first refused: nothing charged) or 2 (the second
        refused: only the first charged); with both windows' state after it. Each state is computed
        once (a charge changes only its current count): every request pays for this call."""
        now = time.time()
        state = self._state
        with self._lock:
            w1, w2 = self._window(key1, period1, now), self._window(key2, period2, now)
            s1, s2 = state(w1, period1, now), state(w2, period2, now)
            if amount1 > limit1 or math.floor(s1[0] * s1[1] / period1 + s1[2]) + amount1 > limit1:
                return 1, s1, s2
            w1[2] += amount1
            s1 = (s1[0], s1[1], w1[2], s1[3])
            if amount2 > limit2 or math.floor(s2[0] * s2[1] / period2 + s2[2]) + amount2 > limit2:
                return 2, s1, s2
            w2[2] += amount2
            return 0, s1, (s2[0], s2[1], w2[2], s2[3])

    def charge(self, key: str, period: int, amount: int) -> None:
        """Add `amount` to the key's current window whatever it holds."""
        now = time.time()
        with self._lock:
            self._window(key, period, now)[2] += amount

    def state(self, key: str, period: int) -> State:
        """The key's window now, charging nothing."""
        now = time.time()
        with self._lock:
            return self._state(self._window(key, period, now), period, now)
