"""`WorkerSupervisor`: starts, health-checks, restarts and stops local worker processes.

    supervisor = WorkerSupervisor(run_dir, require_egress_isolation=True)
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

Isolation (see isolation.py): each worker gets its own network namespace unless its spec
allows egress; where that is impossible, `handle.egress_isolated` is False (deployments show
`egress: not isolated`), and with `require_egress_isolation=True` the start fails instead.
The supervisor verifies isolation rather than trusting the plan: the worker reports the inode
of its network namespace, which must differ from the supervisor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from modelport import errors
from modelport.runtimes.base import default_threads
from modelport.workers import isolation
from modelport.workers.client import WorkerClient
from modelport.workers.protocol import Health, WorkerSpec, error_from_wire

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


class IsolationUnavailable(errors.ServiceUnavailable):
    """The operator requires egress isolation and this machine cannot provide it."""

    code = "isolation_unavailable"


StateListener = Callable[["WorkerHandle", WorkerState, WorkerState], Any]


@dataclass(eq=False)
class WorkerHandle:
    """One supervised worker. Stable across restarts: id, socket_path, client, uid."""

    id: str
    spec: WorkerSpec
    region: str
    directory: Path
    socket_path: Path
    client: WorkerClient
    plan: isolation.IsolationPlan
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    egress_isolated: bool = False
    restarts: int = 0
    last_exit: str | None = None
    last_error: str | None = None
    last_health: Health | None = None
    ready_since: float | None = None
    consecutive_failures: int = 0
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _monitor: asyncio.Task[None] | None = field(default=None, repr=False)
    _fds: tuple[int, ...] = field(default=(), repr=False)
    _stopping: bool = field(default=False, repr=False)
    _health_failures: int = field(default=0, repr=False)

    @property
    def fs_isolated(self) -> bool:
        return self.plan.fs_isolated

    @property
    def uid(self) -> int | None:
        return self.plan.uid

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
        require_egress_isolation: bool = False,
        isolate_files: bool = True,
        uid_base: int = 61000,
        uid_count: int = 1000,
        uid_lock_dir: Path = Path("/run/lock/modelport-worker-uids"),
        hidden_paths: Sequence[Path] = (),
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
        capabilities: isolation.Capabilities | None = None,
    ) -> None:
        """`capabilities` overrides the isolation probe: for a machine where the operator knows
        better, and for tests of the "cannot isolate here" path on a machine that can."""
        self.run_dir = Path(run_dir).absolute()
        longest = len(str(self.run_dir / "workers" / ("wrk_" + "0" * 12) / SOCKET_NAME))
        if longest > _MAX_UNIX_PATH:
            raise errors.InvalidInput(
                f"the worker run directory path is too long for Unix socket paths ({longest} > "
                f"{_MAX_UNIX_PATH} bytes); choose a shorter run directory", field="run_dir")
        self.regions = frozenset(regions) if regions is not None else None
        self.require_egress_isolation = require_egress_isolation
        self.isolate_files = isolate_files
        self.uids = isolation.UidPool(uid_base, uid_count, uid_lock_dir)
        self.hidden_paths = tuple(str(Path(p).resolve()) for p in hidden_paths)
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.health_failures = health_failures
        self.start_timeout = start_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_consecutive_failures = max_consecutive_failures
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self.python = python or sys.executable
        self._listeners: list[StateListener] = [on_state_change] if on_state_change else []
        self._handles: dict[str, WorkerHandle] = {}
        self._listener_tasks: set[asyncio.Future[Any]] = set()
        self._health_task: asyncio.Task[None] | None = None
        self._host_netns = isolation.netns_inode()
        self._caps = capabilities
        self._prepared = False

    # -- public API -------------------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Call `listener(handle, old_state, new_state)` on every change (may be async)."""
        self._listeners.append(listener)

    def handles(self) -> list[WorkerHandle]:
        return list(self._handles.values())

    async def capabilities(self) -> isolation.Capabilities:
        if self._caps is None:
            self._caps = await asyncio.get_running_loop().run_in_executor(None, isolation.probe)
            for note in self._caps.notes:
                log.warning("worker isolation: %s", note)
        return self._caps

    async def start(self, spec: WorkerSpec, region: str) -> WorkerHandle:
        """Start a worker and return once it is ready; raise with an actionable message."""
        if self.regions is not None and region not in self.regions:
            raise errors.Conflict(f"this machine runs workers in {sorted(self.regions)}, not in {region!r}",
                                  field="region")
        self._prepare_run_dir()
        caps = await self.capabilities()
        handle_id = "wrk_" + secrets.token_hex(6)
        plan = self._plan(spec, caps)
        directory = self.run_dir / "workers" / handle_id
        fds: tuple[int, ...] = ()
        try:
            directory.mkdir(mode=0o700)
            if plan.uid is not None:
                os.chown(directory, plan.uid, plan.gid or plan.uid)
            fds, spec = self._dup_fds(spec)
            handle = WorkerHandle(id=handle_id, spec=spec, region=region, directory=directory,
                                  socket_path=directory / SOCKET_NAME,
                                  client=WorkerClient(directory / SOCKET_NAME), plan=plan, _fds=fds)
            await self._launch(handle)
        except BaseException:
            self._release(plan, fds, directory)
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
        self._release(handle.plan, handle._fds, handle.directory)
        self._set_state(handle, WorkerState.STOPPED)

    async def stop_all(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        await asyncio.gather(*(self.stop(h) for h in list(self._handles.values())))

    # -- planning ---------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        if self._prepared:
            return
        workers = self.run_dir / "workers"
        workers.mkdir(parents=True, exist_ok=True)
        # Root-owned, enterable by the gateway only; each worker owns one 0700 entry inside.
        os.chmod(self.run_dir, 0o711)  # noqa: S103 - search only, no listing: by design
        os.chmod(workers, 0o711)  # noqa: S103
        for stale in workers.iterdir():  # left by a supervisor that died (its workers died too)
            shutil.rmtree(stale, ignore_errors=True)
        self._prepared = True

    def _plan(self, spec: WorkerSpec, caps: isolation.Capabilities) -> isolation.IsolationPlan:
        netns = 0 if spec.allow_egress else caps.netns_flags
        if not spec.allow_egress and not netns and self.require_egress_isolation:
            raise IsolationUnavailable(
                "this machine cannot isolate model workers from the network (no network "
                "namespaces: run as root or enable user namespaces), and the operator requires it "
                "(require_egress_isolation); the deployment was not started")
        uid = gid = None
        overlays: tuple[tuple[str, tuple[str, ...]], ...] = ()
        hidden: tuple[str, ...] = ()
        if self.isolate_files and caps.can_switch_uid:
            model_paths = [p for p in (spec.model_path, spec.lora_path) if p is not None]
            self._check_readable(model_paths)
            uid = gid = self._allocate_uid()  # last: nothing below can fail and leak it
            if caps.can_mount:
                overlays = isolation.closed_ancestors([*isolation.runtime_paths(), *model_paths])
                hidden = self.hidden_paths
        return isolation.IsolationPlan(netns_flags=netns, uid=uid, gid=gid, overlays=overlays, hidden=hidden)

    @staticmethod
    def _check_readable(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                raise errors.InvalidInput(f"model path cannot be read ({exc.strerror})",
                                          field="model_path") from exc
            needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
            if mode & needed != needed:
                raise errors.InvalidInput(
                    "the model file is not readable by worker processes, which run under their own "
                    "user; make it world-readable or hand it over as a file descriptor (model_fd)",
                    field="model_path")

    def _allocate_uid(self) -> int:
        uid = self.uids.acquire()
        if uid is None:
            raise errors.TooManyRequests(f"all {self.uids.count} worker uids are in use; stop a worker first")
        return uid

    @staticmethod
    def _dup_fds(spec: WorkerSpec) -> tuple[tuple[int, ...], WorkerSpec]:
        """Own copies of the caller's fds, valid for restarts; the caller may close its own."""
        updates: dict[str, int] = {}
        for name in ("model_fd", "lora_fd"):
            fd = getattr(spec, name)
            if fd is not None:
                updates[name] = os.dup(fd)
        return tuple(updates.values()), spec.model_copy(update=updates)

    def _release(self, plan: isolation.IsolationPlan, fds: tuple[int, ...], directory: Path) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if plan.uid is not None:
            self.uids.release(plan.uid)
        shutil.rmtree(directory, ignore_errors=True)

    def _env(self, handle: WorkerHandle) -> dict[str, str]:
        threads = str(handle.spec.threads or default_threads())
        home = str(handle.directory)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": home,
            "TMPDIR": home,
            "PYTHONPATH": isolation.runtime_paths()[-1],
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # Never reach a model hub, never write its cache, no progress bars in the log.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HOME": os.path.join(home, "hf"),
            "TOKENIZERS_PARALLELISM": "false",
        }
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        return env

    # -- process lifecycle ------------------------------------------------------------------

    async def _launch(self, handle: WorkerHandle) -> None:
        """Spawn the worker, hand it its spec, wait for ready (or say why not)."""
        spec_r, spec_w = os.pipe()
        status_r, status_w = os.pipe()
        with contextlib.suppress(FileNotFoundError):
            handle.socket_path.unlink()
        try:
            process = await asyncio.create_subprocess_exec(
                self.python, "-m", "modelport.workers.main", "--spec-fd", str(spec_r),
                "--status-fd", str(status_w), "--socket", SOCKET_NAME,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, cwd=handle.directory, env=self._env(handle),
                pass_fds=(spec_r, status_w, *handle._fds), preexec_fn=isolation.make_preexec(handle.plan),
                start_new_session=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: preexec_fn raised
            for fd in (spec_r, spec_w, status_r, status_w):
                os.close(fd)
            raise errors.ServiceUnavailable(
                f"could not start a worker process ({type(exc).__name__}: {exc})") from exc
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
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            raise

    async def _handshake(self, handle: WorkerHandle, process: asyncio.subprocess.Process, spec_w: int,
                         status_r: int, stderr_task: asyncio.Task[None], stderr_tail: deque[str]) -> None:
        """Hand the spec over, wait for the worker's status line, check its health and isolation."""
        loop = asyncio.get_running_loop()
        payload = handle.spec.model_dump_json().encode()
        try:
            # A thread owns spec_w from here and closes it, even if we are cancelled meanwhile.
            await asyncio.shield(loop.run_in_executor(None, self._write_all, spec_w, payload))
            status = await asyncio.wait_for(self._read_status(status_r, process), self.start_timeout)
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
        handle.egress_isolated = handle.plan.egress_isolated and health.netns_inode != self._host_netns
        if self.require_egress_isolation and not handle.spec.allow_egress and not handle.egress_isolated:
            await self._kill(process)
            raise IsolationUnavailable("the worker started without network isolation although the "
                                       "operator requires it; the deployment was not started")
        handle.ready_since = time.monotonic()
        handle._health_failures = 0
        log.info("worker %s ready: model=%s pid=%s egress=%s fs_isolated=%s", handle.id,
                 handle.spec.model_id, process.pid, handle.egress, handle.fs_isolated)

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
    async def _read_status(fd: int, process: asyncio.subprocess.Process) -> dict[str, Any] | None:
        """The worker's one status line, or None when it exited without writing one."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(os.dup(fd), "rb", 0))
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if not line:
            return None
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            return None

    @staticmethod
    async def _read_stderr(handle: WorkerHandle, process: asyncio.subprocess.Process,
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
    async def _wait_exit(process: asyncio.subprocess.Process, timeout: float = 5.0) -> int | None:
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            await WorkerSupervisor._kill(process)
            return process.returncode

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _terminate(self, handle: WorkerHandle, timeout: float) -> None:
        process = handle._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
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
                        with contextlib.suppress(ProcessLookupError):
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
