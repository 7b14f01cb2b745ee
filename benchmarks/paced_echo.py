"""`echo` at a fixed pace, for benchmarks of admission and pools (not of a model): the server
loads it by `module:Class` in MODELPORT_RUNTIME_OVERRIDES, as an operator would load a runtime
shipped outside any distribution; the worker imports it from the repository root."""

from __future__ import annotations

import dataclasses

from modelport.runtimes.base import ModelSpec
from modelport.runtimes.echo import EchoRuntime

ECHO_10MS = "benchmarks.paced_echo:Echo10ms"


class Echo10ms(EchoRuntime):
    """`echo` at 10 ms a token: about the pace of SmolLM2-135M on two cores."""

    name = "echo-10ms"
    delay_ms = 10

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(dataclasses.replace(spec, options={**spec.options, "delay_ms": self.delay_ms}))
