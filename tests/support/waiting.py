"""Waiting on conditions instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float = 60, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until `check()` is truthy; returns its value. A deadline, not a timing assertion: a
    slow machine only makes the wait longer, and the test fails with `what` if it never holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
