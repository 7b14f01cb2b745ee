"""A runtime that probes its own sandbox, run inside real workers by the isolation tests.

Operator-supplied runtimes are named as `module:Class`; this one is
`tests.workers.probe_runtime:ProbeRuntime`. Everything it tries comes from its options, and
it answers a generate request with a JSON report of what worked:

    {"tcp 127.0.0.1:4242": "connected" | "blocked: ENETUNREACH", "read /path": ..., "unix /sock": ...}

Options: `tcp` [[host, port], ...], `read` [paths], `unix` [socket paths], `exit_on_load`
(exit code, after printing a line to stderr), `crash_after_s` (exit 9 that long after loading).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from modelport.runtimes.base import TASK_CHAT, TASK_COMPLETION, Delta, GenerateRequest, ModelSpec, Runtime, Usage


def _outcome(action) -> str:
    try:
        action()
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno or 0, str(exc.errno))}"
    return "ok"


def _tcp(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=3):
        pass


def _read(path: str) -> None:
    with open(path, "rb") as fh:
        fh.read(1)


def _unix(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(path)


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
        report: dict[str, str] = {}
        for host, port in self.options.get("tcp", []):
            report[f"tcp {host}:{port}"] = _outcome(lambda h=host, p=port: _tcp(h, p))
        for path in self.options.get("read", []):
            report[f"read {path}"] = _outcome(lambda p=path: _read(p))
        for path in self.options.get("unix", []):
            report[f"unix {path}"] = _outcome(lambda p=path: _unix(p))
        report["uid"] = str(os.getuid())
        yield Delta(json.dumps(report), finish_reason="stop", usage=Usage(1, 1))
