"""The in-process rate-limit windows (quotas/memory.py) against the `limits` library's own
in-memory sliding-window counter, whose arithmetic they follow.

Over random sequences of admissions (two windows, the first checked before the second), usage
charges and steps of time (within a window, across one, past several), both sides decide alike
and report the same states (counts, the previous count's weight, ttls), on the real
`limits.storage.MemoryStorage`. The clock is the one thing faked here: both read `time.time`,
which the test sets, so that they are compared at the same instants (the library's expiry
timer reads the same clock).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from limits.storage import MemoryStorage

from modelport.quotas.limiter import UNCONDITIONAL
from modelport.quotas.memory import MemoryWindows


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    yield c


def test_windows_admit_like_the_library(clock: Clock) -> None:
    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ours, self.library = MemoryWindows(), MemoryStorage()

        @rule(limit1=st.integers(1, 20), limit2=st.integers(1, 500), amount2=st.integers(1, 600))
        def admit(self, limit1: int, limit2: int, amount2: int) -> None:
            first, second = ("rpm/d", limit1, 10, 1), ("tpm/d", limit2, 60, amount2)
            outcome, s1, s2 = self.ours.admit(*first, *second)
            expected = 1
            if self.library.acquire_sliding_window_entry("rpm/d", limit1, 10, 1):
                expected = 0 if self.library.acquire_sliding_window_entry("tpm/d", limit2, 60, amount2) else 2
            assert outcome == expected
            assert s1 == self.library.get_sliding_window("rpm/d", 10)
            assert s2 == self.library.get_sliding_window("tpm/d", 60)

        @rule(amount=st.integers(1, 1000))
        def charge(self, amount: int) -> None:
            self.ours.charge("tpm/d", 60, amount)
            assert self.library.acquire_sliding_window_entry("tpm/d", UNCONDITIONAL, 60, amount)

        @rule(seconds=st.one_of(st.floats(0.001, 9.0), st.floats(9.0, 70.0), st.floats(100.0, 400.0)))
        def wait(self, seconds: float) -> None:
            clock.now += seconds

        @invariant()
        def same_states(self) -> None:
            assert self.ours.state("rpm/d", 10) == self.library.get_sliding_window("rpm/d", 10)
            assert self.ours.state("tpm/d", 60) == self.library.get_sliding_window("tpm/d", 60)

        def teardown(self) -> None:
            self.library.timer.cancel()

    run_state_machine_as_test(Machine, settings=settings(max_examples=150, stateful_step_count=40, deadline=None,
                                                          suppress_health_check=list(HealthCheck)))


def test_a_refusal_by_the_second_window_keeps_the_first_charged(clock: Clock) -> None:
    """The request is counted, its tokens are not (the limiter's rule: requests are checked first)."""
    w = MemoryWindows()
    assert w.admit("rpm/d", 5, 10, 1, "tpm/d", 100, 60, 80)[0] == 0
    outcome, requests, tokens = w.admit("rpm/d", 5, 10, 1, "tpm/d", 100, 60, 80)
    assert outcome == 2 and requests[2] == 2 and tokens[2] == 80
    outcome, requests, tokens = w.admit("rpm/d", 2, 10, 1, "tpm/d", 100, 60, 1)
    assert outcome == 1 and requests[2] == 2 and tokens[2] == 80
