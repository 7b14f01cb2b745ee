"""`WorkerSupervisor`: starts, health-checks, restarts and stops local worker processes.

    supervisor = WorkerSupervisor(run_dir)
    handle = await supervisor.start(WorkerSpec(runtime="llamacpp", model_id="dep_1",
                                               model_path=gguf), region="eu")
    async for event in handle.client.generate(GenerateBody(messages=[...])): ...
    await supervisor.stop(handle)          # SIGTERM: drain, then SIGKILL after the grace time
    await supervisor.stop_all()

`start` returns once the worker answered its health check, or raises an error a person can act
on (the worker's own load error such as "model file is not a valid GGUF", or "exited with code
X" plus the last lines the worker printed while starting: no request has reached it then, so
they hold no user data; once ready, its output is discarded, P1).

A worker that dies (or fails `health_failures` health checks in a row: it is then killed) is
replaced at the same socket path, after an exponential backoff (`backoff_initial` doubling to
`backoff_max`); requests in flight on the dead one fail with ServiceUnavailable (the client
sees the stream cut). After `max_consecutive_failures` crashes or failed starts without a
stable period in between, the handle goes to `failed` and stays there.

Isolation (sandbox.py): each worker runs in a sandbox of its own (network, files, processes),
built by the one launcher that trainers use too; where none can be built, `start` fails with
the reason, unless the launcher allows unisolated workers (a development machine's escape
hatch). The supervisor verifies what it can rather than trusting the plan: the worker reports
the inode of its network namespace, which must differ from the supervisor's, and its uid; and
the worker's client checks the uid behind the socket (SO_PEERCRED) on every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport import errors
from modelport.offload import run_blocking
from modelport.runtimes.base import default_threads
from modelport.workers.client import WorkerClient
from modelport.workers.protocol import Health, WorkerSpec, error_from_wire
from modelport.workers.sandbox import (
    Isolation,
    Sandbox,
    SandboxLauncher,
    SandboxProcess,
    SandboxUnavailable,
    read_json_line,
)

log = logging.getLogger("modelport.workers")

SOCKET_NAME = "worker.sock"
_STDERR_LINES = 20
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


IsolationUnavailable = SandboxUnavailable  # the worker's sandbox could not be built or verified


StateListener = Callable[["WorkerHandle", WorkerState, WorkerState], Any]


@dataclass(eq=False)
class WorkerHandle:
    """One supervised worker. Stable across restarts: id, socket_path, client, uid."""

    id: str
    spec: WorkerSpec
    region: str
    sandbox: Sandbox
    socket_path: Path
    client: WorkerClient
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None  # on the host
    isolation: Isolation = field(default=Isolation(False, False, False))  # as verified at the last start
    restarts: int = 0
    last_exit: str | None = None
    last_error: str | None = None
    last_health: Health | None = None
    ready_since: float | None = None
    consecutive_failures: int = 0
    _process: SandboxProcess | None = field(default=None, repr=False)
    _monitor: asyncio.Task[None] | None = field(default=None, repr=False)
    _fds: tuple[int, ...] = field(default=(), repr=False)
    _stopping: bool = field(default=False, repr=False)
    _health_failures: int = field(default=0, repr=False)

    @property
    def directory(self) -> Path:
        return self.sandbox.directory

    @property
    def uid(self) -> int | None:
        return self.sandbox.uid

    @property
    def egress_isolated(self) -> bool:
        return self.isolation.network

    @property
    def fs_isolated(self) -> bool:
        return self.isolation.files

    @property
    def egress(self) -> str:
        """What a deployment shows: `isolated` or `not isolated`."""
        return "isolated" if self.egress_isolated else "not isolated"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class WorkerSupervisor:
    """Local worker processes for this machine (a cluster engine replaces it at scale)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        regions: Collection[str] | None = None,
        launcher: SandboxLauncher | None = None,
        health_interval: float = 5.0,
        health_timeout: float = 2.0,
        health_failures: int = 3,
        start_timeout: float = 120.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_consecutive_failures: int = 5,
        stable_after: float = 60.0,
        stop_grace: float = 5.0,
        python: str | None = None,
        on_state_change: StateListener | None = None,
    ) -> None:
        """`launcher` builds the sandboxes (default: one for `run_dir/workers`, isolation required)."""
        self.python = python or sys.executable
        self.launcher = launcher or SandboxLauncher(Path(run_dir), "workers", python=self.python)
        self.run_dir = self.launcher.run_dir
        longest = len(str(self.run_dir / "workers" / ("wrk_" + "0" * 12) / SOCKET_NAME))
        if longest > _MAX_UNIX_PATH:
            raise errors.InvalidInput(
                f"the worker run directory path is too long for Unix socket paths ({longest} > "
                f"{_MAX_UNIX_PATH} bytes); choose a shorter run directory", field="run_dir")
        self.regions = frozenset(regions) if regions is not None else None
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.health_failures = health_failures
        self.start_timeout = start_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_consecutive_failures = max_consecutive_failures
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self._listeners: list[StateListener] = [on_state_change] if on_state_change else []
        self._handles: dict[str, WorkerHandle] = {}
        self._listener_tasks: set[asyncio.Future[Any]] = set()
        self._health_task: asyncio.Task[None] | None = None
        self._host_netns = os.stat("/proc/self/ns/net").st_ino

    # -- public API -------------------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Call `listener(handle, old_state, new_state)` on every change (may be async)."""
        self._listeners.append(listener)

    def handles(self) -> list[WorkerHandle]:
        return list(self._handles.values())

    async def start(self, spec: WorkerSpec, region: str) -> WorkerHandle:
        """Start a worker and return once it is ready; raise with an actionable message."""
        if self.regions is not None and region not in self.regions:
            raise errors.Conflict(f"this machine runs workers in {sorted(self.regions)}, not in {region!r}",
                                  field="region")
        handle_id = "wrk_" + secrets.token_hex(6)
        model_paths = [p for p in (spec.model_path, spec.lora_path) if p is not None]
        sandbox = await self.launcher.create(read_only=model_paths, allow_egress=spec.allow_egress, name=handle_id)
        fds: tuple[int, ...] = ()
        try:
            fds, spec = self._dup_fds(spec)
            socket_path = sandbox.directory / SOCKET_NAME
            handle = WorkerHandle(id=handle_id, spec=spec, region=region, sandbox=sandbox, socket_path=socket_path,
                                  client=WorkerClient(socket_path, peer_uid=sandbox.peer_uid), _fds=fds)
            await self._launch(handle)
        except BaseException:
            await self._release(sandbox, fds)
            raise
        self._handles[handle.id] = handle
        handle._monitor = asyncio.create_task(self._monitor(handle), name=f"monitor-{handle.id}")
        self._set_state(handle, WorkerState.READY)
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.create_task(self._health_loop(), name="worker-health")
        return handle

    async def stop(self, handle: WorkerHandle, *, drain_seconds: float | None = None) -> None:
        """SIGTERM (the worker drains for its drain_seconds), then SIGKILL after the grace time."""
        if handle._stopping:
            return
        handle._stopping = True
        if handle._monitor is not None:
            handle._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handle._monitor
        drain = handle.spec.drain_seconds if drain_seconds is None else drain_seconds
        await self._terminate(handle, drain + self.stop_grace)
        await handle.client.close()
        self._handles.pop(handle.id, None)
        await self._release(handle.sandbox, handle._fds)
        self._set_state(handle, WorkerState.STOPPED)

    async def stop_all(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        await asyncio.gather(*(self.stop(h) for h in list(self._handles.values())))
        self.launcher.tidy()

    @staticmethod
    def _dup_fds(spec: WorkerSpec) -> tuple[tuple[int, ...], WorkerSpec]:
        """Own copies of the caller's fds, valid for restarts; the caller may close its own."""
        updates: dict[str, int] = {}
        for name in ("model_fd", "lora_fd"):
            fd = getattr(spec, name)
            if fd is not None:
                updates[name] = os.dup(fd)
        return tuple(updates.values()), spec.model_copy(update=updates)

    @staticmethod
    async def _release(sandbox: Sandbox, fds: tuple[int, ...]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        await sandbox.close()

    # -- process lifecycle ------------------------------------------------------------------

    async def _launch(self, handle: WorkerHandle) -> None:
        """Spawn the worker, hand it its spec, wait for ready (or say why not)."""
        spec_r, spec_w = os.pipe()
        status_r, status_w = os.pipe()
        with contextlib.suppress(FileNotFoundError):
            handle.socket_path.unlink()
        try:
            process = await handle.sandbox.spawn(
                ["modelport.workers.main", "--spec-fd", str(spec_r), "--status-fd", str(status_w),
                 "--socket", SOCKET_NAME],
                pass_fds=(spec_r, status_w, *handle._fds), threads=handle.spec.threads or default_threads(),
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            for fd in (spec_r, spec_w, status_r, status_w):
                os.close(fd)
            raise errors.ServiceUnavailable(
                f"could not start a worker process ({type(exc).__name__}: {exc.strerror})") from exc
        except BaseException:
            for fd in (spec_r, spec_w, status_r, status_w):
                os.close(fd)
            raise
        os.close(spec_r)
        os.close(status_w)
        handle._process = process
        handle.pid = process.pid
        stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES)
        stderr_task = asyncio.create_task(self._read_stderr(handle, process, stderr_tail))
        try:
            await self._handshake(handle, process, spec_w, status_r, stderr_task, stderr_tail)
        except BaseException:  # includes cancellation of start(): never leave a worker behind
            if process.returncode is None:
                process.kill()
            raise

    async def _handshake(self, handle: WorkerHandle, process: SandboxProcess, spec_w: int,
                         status_r: int, stderr_task: asyncio.Task[None], stderr_tail: deque[str]) -> None:
        """Hand the spec over, wait for the worker's status line, check its health and isolation."""
        payload = handle.spec.model_dump_json().encode()
        try:
            # A thread owns spec_w from here and closes it, even if we are cancelled meanwhile.
            await asyncio.shield(run_blocking(self._write_all, spec_w, payload))
            status = await asyncio.wait_for(read_json_line(status_r), self.start_timeout)
        except TimeoutError:
            await self._kill(process)
            raise errors.ServiceUnavailable(
                f"the worker for {handle.spec.model_id} did not become ready within "
                f"{self.start_timeout:.0f} s; it was stopped") from None
        finally:
            os.close(status_r)
        if status is None or status.get("event") != "ready":
            code = await self._wait_exit(process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stderr_task), 2.0)
            if status is not None and status.get("event") == "error":
                message = f"the worker for {handle.spec.model_id} could not start: {status.get('message')}"
                raise error_from_wire(status.get("code", "internal_error"), message)
            tail = "\n".join(stderr_tail)
            raise errors.ServiceUnavailable(
                f"the worker for {handle.spec.model_id} {_describe_exit(code)} while starting"
                + (f"; its last output:\n{tail}" if tail else ""))
        try:
            health = await handle.client.health(timeout=self.health_timeout * 5)
        except errors.ModelportError:
            await self._kill(process)
            raise
        handle.last_health = health
        planned = handle.sandbox.isolation
        broken = []
        if planned.network and health.netns_inode == self._host_netns:
            broken.append("it shares the server's network namespace")
        if handle.uid is not None and health.uid != handle.uid:
            broken.append(f"it runs as uid {health.uid}, not its own uid {handle.uid}")
        if broken:
            await self._kill(process)
            raise SandboxUnavailable(f"the worker for {handle.spec.model_id} did not start in its sandbox ("
                                     + "; ".join(broken) + "); it was stopped")
        handle.isolation = planned
        handle.ready_since = time.monotonic()
        handle._health_failures = 0
        log.info("worker %s ready: model=%s pid=%s isolation=%s", handle.id, handle.spec.model_id, process.pid,
                 planned.as_dict())

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            pass  # the worker died before reading it; the status read reports why
        finally:
            os.close(fd)

    @staticmethod
    async def _read_stderr(handle: WorkerHandle, process: SandboxProcess,
                           tail: deque[str]) -> None:
        """Keep the last lines printed while starting; discard everything after ready (P1)."""
        assert process.stderr is not None
        while True:
            line = await process.stderr.readline()
            if not line:
                return
            if handle.ready_since is None and handle._process is process:
                tail.append(line.decode("utf-8", "replace").rstrip())

    @staticmethod
    async def _wait_exit(process: SandboxProcess, timeout: float = 5.0) -> int | None:
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            await WorkerSupervisor._kill(process)
            return process.returncode

    @staticmethod
    async def _kill(process: SandboxProcess) -> None:
        if process.returncode is None:
            await process.kill_and_wait()

    async def _terminate(self, handle: WorkerHandle, timeout: float) -> None:
        process = handle._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            log.warning("worker %s did not stop within %.0f s; killing it", handle.id, timeout)
            await self._kill(process)

    async def _monitor(self, handle: WorkerHandle) -> None:
        """Wait for the worker to exit; unless we are stopping it, replace it with backoff."""
        while not handle._stopping:
            process = handle._process
            assert process is not None
            code = await process.wait()
            if handle._stopping:
                return
            handle.last_exit = _describe_exit(code)
            since = handle.ready_since
            stable = since is not None and time.monotonic() - since >= self.stable_after
            handle.consecutive_failures = 1 if stable else handle.consecutive_failures + 1
            handle.ready_since = None
            log.warning("worker %s (model %s) %s; restarting", handle.id, handle.spec.model_id,
                        handle.last_exit)
            self._set_state(handle, WorkerState.RESTARTING)
            while True:
                if handle.consecutive_failures > self.max_consecutive_failures:
                    self._set_state(handle, WorkerState.FAILED)
                    return
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (handle.consecutive_failures - 1))
                await asyncio.sleep(delay)
                try:
                    await self._launch(handle)
                except errors.ModelportError as exc:
                    handle.last_error = exc.message
                    handle.consecutive_failures += 1
                    log.warning("worker %s restart failed: %s", handle.id, exc.message)
                    continue
                handle.restarts += 1
                self._set_state(handle, WorkerState.READY)
                break

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            for handle in list(self._handles.values()):
                if handle.state != WorkerState.READY or handle._stopping:
                    continue
                try:
                    handle.last_health = await handle.client.health(timeout=self.health_timeout)
                    handle._health_failures = 0
                except errors.ModelportError:
                    handle._health_failures += 1
                    if handle._health_failures >= self.health_failures and handle._process is not None:
                        log.warning("worker %s failed %d health checks; killing it", handle.id,
                                    handle._health_failures)
                        handle._health_failures = 0
                        handle._process.kill()  # the monitor restarts it

    def _set_state(self, handle: WorkerHandle, new: WorkerState) -> None:
        old = handle.state
        handle.state = new
        if old == new:
            return
        for listener in self._listeners:
            try:
                result = listener(handle, old, new)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_tasks.discard)
            except Exception:
                log.exception("worker state listener failed")
