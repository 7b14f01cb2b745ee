"""Echo runtimes with a fixed pace, for the plumbing tests (fairness, disconnects, draining,
worker crashes): they need a request to last long enough to act on while it runs.

The built-in `echo` runtime takes `delay_ms` as an option, but a deployment hands its worker
no runtime options, so these subclasses fix them. The server loads them exactly the way an
operator would load a runtime shipped outside any distribution, by `module:Class` in
MODELPORT_RUNTIME_OVERRIDES; the worker imports them from the repository root (its PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import time

from modelport.runtimes.base import ModelSpec
from modelport.runtimes.echo import EchoRuntime

SLOW = "tests.support.runtimes:SlowEcho"
SLOW_LOAD = "tests.support.runtimes:SlowLoadEcho"


class SlowEcho(EchoRuntime):
    """`echo` at 40 ms a token: 10 tokens take 0.4 s."""

    name = "slow-echo"
    delay_ms = 40

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(dataclasses.replace(spec, options={**spec.options, "delay_ms": self.delay_ms}))


class SlowLoadEcho(EchoRuntime):
    """`echo` whose load takes 3 s, so that a deployment stays `creating` long enough to call it."""

    name = "slow-load-echo"
    load_seconds = 3.0

    @classmethod
    def load(cls, spec: ModelSpec) -> EchoRuntime:
        time.sleep(cls.load_seconds)
        return cls(spec)

FLOOD = "tests.support.runtimes:FloodEcho"


class FloodEcho(EchoRuntime):
    """`echo` at 2 ms a token with room for 32k-token answers: a long stream fills the socket
    buffers between gateway and client within a second or two when nobody reads it, and runs
    for a minute if nothing stops it."""

    name = "flood-echo"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(dataclasses.replace(spec, options={**spec.options, "delay_ms": 2,
                                                            "context_length": 1_000_000}))
