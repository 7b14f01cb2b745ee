"""A runtime that probes its own sandbox, run inside real workers by the isolation tests.

Operator-supplied runtimes are named as `module:Class`; this one is
`tests.workers.probe_runtime:ProbeRuntime`. Everything it tries comes from its options (see
tests/workers/sandbox_probe.py), and it answers a generate request with a JSON report of what
worked: {"tcp 127.0.0.1:4242": "ok" | "blocked: ENETUNREACH", "read /path": ..., "uid": ...}.

Options of its own: `exit_on_load` (exit code, after printing a line to stderr), `crash_after_s`
(exit 9 that long after loading).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from modelport.runtimes.base import TASK_CHAT, TASK_COMPLETION, Delta, GenerateRequest, ModelSpec, Runtime, Usage
from tests.workers.sandbox_probe import report


class ProbeRuntime(Runtime):
    name = "probe"
    tasks = frozenset({TASK_CHAT, TASK_COMPLETION})

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.options = options

    @classmethod
    def load(cls, spec: ModelSpec) -> ProbeRuntime:
        options = spec.options
        if "exit_on_load" in options:
            print("probe: exiting during load on purpose", file=sys.stderr, flush=True)
            os._exit(int(options["exit_on_load"]))
        if "crash_after_s" in options:
            threading.Timer(float(options["crash_after_s"]), os._exit, args=(9,)).start()
        return cls(options)

    @property
    def context_length(self) -> int:
        return 100

    def count_tokens(self, *, messages: Sequence[dict[str, Any]] | None = None,
                     prompt: str | None = None) -> int:
        return 1

    def generate(self, request: GenerateRequest, cancel: threading.Event) -> Iterator[Delta]:
        yield Delta(json.dumps(report(self.options)), finish_reason="stop", usage=Usage(1, 1))
