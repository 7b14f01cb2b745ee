"""Waiting on conditions instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


async def wait_until_async(check: Callable[[], Awaitable[Any]], timeout: float = 60, interval: float = 0.02,
                           what: str = "condition") -> Any:
    """`wait_until` for a coroutine check, inside a running event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
