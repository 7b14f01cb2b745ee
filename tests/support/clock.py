"""A clock that tests move by hand, for code that takes an injectable `clock` (time.monotonic)."""

from __future__ import annotations


class ManualClock:
    """Monotonic seconds that only advance when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock does not go back"
        self.now += seconds
