"""Worker process entry point: `python -m modelport.workers.main --spec-fd N --status-fd M --socket PATH`.

Started by the supervisor through the sandbox launcher (sandbox.py), already inside its sandbox
(own network, mount and PID namespaces, own uid as root, not dumpable, no core dumps). It:
1. reads its WorkerSpec from the inherited pipe `--spec-fd` (the spec, and later data keys,
   never travel in argv or the environment, which other users can read in /proc);
2. loads the runtime; a model given as an inherited fd is opened as /proc/self/fd/N;
3. binds its Unix socket (a path relative to its own directory, /sandbox) and writes one
   JSON line to `--status-fd`: {"event": "ready", ...} or {"event": "error", "code", "message"},
   so that the supervisor learns why a start failed without parsing logs;
4. serves until SIGTERM, then drains (see server.py) and exits 0.

Exit codes: 0 after SIGTERM, 3 when the model could not be loaded, 2 for a bad spec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import traceback
from typing import Any

import orjson
from pydantic import ValidationError

from modelport import errors
from modelport.runtimes.base import ModelSpec, Runtime
from modelport.runtimes.registry import resolve_runtime
from modelport.workers.protocol import WorkerSpec

EXIT_BAD_SPEC = 2
EXIT_LOAD_FAILED = 3


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _report(status_fd: int, event: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(status_fd, orjson.dumps(event) + b"\n")
        os.close(status_fd)


def _fd_path(fd: int | None, path: str | None) -> str | None:
    return f"/proc/self/fd/{fd}" if fd is not None else path


def load_runtime(spec: WorkerSpec) -> Runtime:
    cls = resolve_runtime(spec.runtime)
    model_spec = ModelSpec(
        model_path=_fd_path(spec.model_fd, spec.model_path) or "",
        lora_path=_fd_path(spec.lora_fd, spec.lora_path),
        n_ctx=spec.n_ctx, threads=spec.threads, options=spec.options,
    )
    return cls.load(model_spec)


async def serve(runtime: Runtime, spec: WorkerSpec, socket_path: str, status_fd: int) -> None:
    from aiohttp import web

    from modelport.workers.server import WorkerServer

    server = WorkerServer(runtime, spec)
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    site = web.UnixSite(runner, socket_path, shutdown_timeout=2.0)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _report(status_fd, {"event": "ready", "pid": os.getpid(), "context_length": runtime.context_length,
                        "tasks": sorted(runtime.supported_tasks)})
    await stop.wait()
    await server.drain()
    await runner.cleanup()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelport-worker")
    parser.add_argument("--spec-fd", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    os.umask(0o077)
    try:
        spec = WorkerSpec.model_validate_json(_read_all(args.spec_fd))
    except (OSError, ValidationError) as exc:
        _report(args.status_fd, {"event": "error", "code": "invalid_input",
                                 "message": f"the worker spec is not valid ({type(exc).__name__})"})
        return EXIT_BAD_SPEC
    try:
        runtime = load_runtime(spec)
    except errors.ModelportError as exc:
        _report(args.status_fd, {"event": "error", "code": exc.code, "message": exc.message})
        return EXIT_LOAD_FAILED
    except Exception as exc:
        # Load-time only: no request has been seen yet, so the traceback holds no user data.
        traceback.print_exc(file=sys.stderr)
        _report(args.status_fd, {"event": "error", "code": "internal_error",
                                 "message": f"the {spec.runtime} runtime failed to load the model "
                                            f"({type(exc).__name__})"})
        return EXIT_LOAD_FAILED
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(serve(runtime, spec, args.socket, args.status_fd))
    else:
        uvloop.run(serve(runtime, spec, args.socket, args.status_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
