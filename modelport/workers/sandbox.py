"""The one launcher of sandboxed processes: model workers and fine-tuning trainers.

    launcher = SandboxLauncher(settings.run_dir, "workers")      # "trainers" for the job runner
    sandbox = await launcher.create(read_only=[model_path], allow_egress=False)
    process = await sandbox.spawn(["modelport.workers.main", "--spec-fd", "5"], pass_fds=(5,), threads=2)
    await process.wait()
    await sandbox.close()        # frees its uid once none of its processes is left; removes its directory

A sandbox is isolated three ways, shown as `isolation: {network, files, processes}`:
- network: its own network namespace, whose only interface is a loopback that is down (no
  route out), unless the operator allowed egress for that deployment;
- files: a root built from nothing but read-only binds of the system's libraries, the
  interpreter, modelport and the model, plus its own directory (/sandbox: the worker's socket)
  and private in-memory /tmp and /dev/shm; the platform's home, /run, the host's /tmp and every
  other socket directory are absent. As root it also runs under a uid of its own;
- processes: its own PID namespace with a fresh /proc (the host's processes, their command lines
  and environments are not visible), all its processes die with it, no core dumps, not dumpable.

isolation.py builds it inside a fresh keeper process. As root, uids come from one machine-wide
pool (`UidPool`: flock'ed files under /run/modelport/uids) shared by workers and trainers of every
server on the host; without root, an unprivileged user namespace gives the same three
isolations under the server's own uid. Where neither works, `create` fails with the reason:
isolation is required. Only `allow_unisolated=True` (MODELPORT_ALLOW_UNISOLATED_WORKERS, refused
in production) runs processes without a sandbox, and they show `isolation` all false.

Directories are trusted only when they are what they should be (`secure_directory`): the run
directory is /run/modelport/<hash of the home> as root, $MODELPORT_HOME/run otherwise, mode 0700,
owned by the server's uid, never a symbolic link, in parents that no other user can change.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelport import errors
from modelport.offload import run_blocking
from modelport.workers.isolation import SANDBOX_DIR

log = logging.getLogger("modelport.workers")

Mode = Literal["root", "userns"]
RUN_ROOT = Path("/run/modelport")  # as root: run directories and the uid pool live here
TMP_BYTES = 64 * 1024**2  # each sandbox's /tmp and /dev/shm (memory)
REPORT_TIMEOUT = 60.0


class SandboxUnavailable(errors.ServiceUnavailable):
    """A sandbox could not be built here, and isolation is required."""

    code = "isolation_unavailable"


class UnsafeDirectory(errors.ServiceUnavailable):
    """A directory the server must trust is not one it created for itself."""

    code = "unsafe_directory"


@dataclass(frozen=True, slots=True)
class Isolation:
    network: bool
    files: bool
    processes: bool

    def as_dict(self) -> dict[str, bool]:
        return {"network": self.network, "files": self.files, "processes": self.processes}

    def __and__(self, other: Isolation) -> Isolation:
        return Isolation(self.network and other.network, self.files and other.files,
                         self.processes and other.processes)


UNISOLATED = Isolation(network=False, files=False, processes=False)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """How this machine builds sandboxes: as root, in a user namespace, or not at all (`reason`)."""

    mode: Mode | None
    reason: str | None = None


# -- trusted directories -------------------------------------------------------------------

def _refuse(path: Path, why: str) -> UnsafeDirectory:
    return UnsafeDirectory(f"refusing {path}: {why}. Another local user may have prepared it; remove it "
                           "(or fix its owner and mode) and start again", field="run_dir")


def _check_parents(path: Path) -> None:
    """Every directory above `path` (as written, and resolved) can be changed only by root or by
    us: otherwise someone could swap what lies below it. Sticky directories such as /tmp are fine."""
    euid = os.geteuid()
    literal = [Path(*path.parts[:i]) for i in range(1, len(path.parts))]
    real = Path(os.path.realpath(path.parent))
    for parent in [*literal, *reversed(real.parents), real]:
        try:
            st = os.lstat(parent)
        except OSError as exc:
            raise _refuse(path, f"its parent {parent} cannot be examined ({exc.strerror})") from None
        if st.st_uid not in (0, euid):
            raise _refuse(path, f"its parent {parent} belongs to uid {st.st_uid}")
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise _refuse(path, f"its parent {parent} is writable by other users")


def secure_directory(path: Path) -> Path:
    """Create `path` (mode 0700) or accept it only if it is a directory, not a symbolic link, owned
    by the effective uid, with no permission for anyone else. Returns the path."""
    path = Path(os.path.abspath(path))
    _check_parents(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        kind = "a symbolic link" if os.path.islink(path) else f"not a directory ({exc.strerror})"
        raise _refuse(path, f"it is {kind}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != os.geteuid():
        raise _refuse(path, f"it belongs to uid {st.st_uid}, not to this server's uid {os.geteuid()}")
    if st.st_mode & 0o077:
        raise _refuse(path, f"its mode is {stat.S_IMODE(st.st_mode):04o}; it must be 0700")
    return path


def secure_run_dir(run_dir: Path) -> Path:
    """Check (or create) a run directory, and /run/modelport above it as root."""
    if Path(os.path.abspath(run_dir)).parent == RUN_ROOT:
        secure_directory(RUN_ROOT)
    return secure_directory(run_dir)


def run_dir_for(home: Path) -> Path:
    """Where a server with this home keeps sockets and sandbox directories."""
    if os.geteuid() == 0:
        return RUN_ROOT / hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return home / "run"


# -- the uid pool --------------------------------------------------------------------------

def uids_in_use() -> set[int]:
    """Every uid (real, effective, saved, filesystem) of every process on this machine."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Uid:"):
                        found.update(int(u) for u in line.split()[1:])
                        break
        except OSError:
            continue  # exited meanwhile
    return found


class UidPool:
    """Uids for sandboxes, unique on this machine across every server and runner that uses the
    same `lock_dir`: a uid in use holds an exclusive flock on `lock_dir/<uid>.lock`, which the
    kernel also releases if its holder dies. A uid that any process on the machine runs under is
    never handed out, and one whose processes are still alive is kept until they are gone."""

    def __init__(self, base: int = 61000, count: int = 1000, lock_dir: Path = RUN_ROOT / "uids") -> None:
        self.base = base
        self.count = count
        self.lock_dir = Path(lock_dir)
        self._held: dict[int, int] = {}  # uid -> fd holding its lock
        self._draining: set[int] = set()  # released by their sandbox, processes still alive

    def acquire(self) -> int | None:
        """A free uid, or None when all are taken."""
        secure_run_dir(self.lock_dir)
        busy = uids_in_use()
        for uid in self._draining - busy:  # their last processes are gone now
            self._draining.discard(uid)
            self._drop(uid)
        for uid in range(self.base, self.base + self.count):
            if uid in self._held or uid in busy:
                continue
            fd = os.open(self.lock_dir / f"{uid}.lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        return None

    def release(self, uid: int) -> bool:
        """Give `uid` back once no process runs under it; False when some still do (it is kept,
        and freed by a later acquire that finds them gone)."""
        if uid in uids_in_use():
            self._draining.add(uid)
            return False
        self._drop(uid)
        return True

    def _drop(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    def held(self) -> set[int]:
        return set(self._held)


# -- what a sandbox sees -------------------------------------------------------------------

def python_path() -> list[str]:
    """What the payload's PYTHONPATH holds: modelport's parent and what the server's own adds."""
    import modelport

    entries = [str(Path(modelport.__file__).resolve().parent.parent)]
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and os.path.isabs(entry) and os.path.isdir(entry) and entry not in entries:
            entries.append(entry)
    return entries


def runtime_paths(python: str) -> list[str]:
    """What every payload must read: the interpreter, its prefixes, modelport, PYTHONPATH."""
    paths = [sys.base_prefix, sys.prefix, os.path.realpath(sys.executable), os.path.realpath(python),
             *python_path()]
    return [os.path.realpath(p) for p in paths]


def sandbox_env(*, threads: int, home: str) -> dict[str, str]:
    """The whole environment of a payload: nothing of the server's own is passed on."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONPATH": os.pathsep.join(python_path()),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # Never reach a model hub, never write its cache, no progress bars in the log.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HOME": os.path.join(home, "hf"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def _system_layout() -> tuple[list[str], list[tuple[str, str]]]:
    """The system's program and library directories (bound) and top-level links such as
    /lib -> usr/lib (recreated), the dynamic linker's configuration, and the CPU topology."""
    binds, links = [], []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            links.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append(path)
    for path in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/sys/devices/system/cpu"):
        if os.path.exists(path):
            binds.append(os.path.realpath(path))
    return binds, links


def _outermost(paths: Iterable[str]) -> list[str]:
    """`paths` without those that lie inside another one."""
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: (len(Path(p).parts), p)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _readable_by_others(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise errors.InvalidInput(f"model path cannot be read ({exc.strerror})", field="model_path") from exc
        needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & needed != needed:
            raise errors.InvalidInput(
                "the model file is not readable by worker processes, which run under their own "
                "user; make it world-readable or hand it over as a file descriptor (model_fd)",
                field="model_path")


# -- processes -----------------------------------------------------------------------------

class SandboxProcess:
    """A payload running in a sandbox. `pid` is the payload's pid on the host; the asyncio
    process is its keeper (the same process when there is no sandbox), whose exit mirrors the
    payload's: same exit code, or killed by the same signal."""

    def __init__(self, process: asyncio.subprocess.Process, pid: int) -> None:
        self._process = process
        self.pid = pid
        self._pidfd: int | None = None
        if pid != process.pid:
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(pid)

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return self._process.stderr

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        code = await self._process.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return code

    def send_signal(self, sig: int) -> None:
        """To the payload; the keeper forwards SIGTERM, SIGINT and SIGHUP and follows a kill."""
        if self._process.returncode is not None:
            return
        if self._pidfd is not None and sig not in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def kill_and_wait(self, timeout: float = 10.0) -> int:
        """SIGKILL the payload and wait for the keeper; kill the keeper too if it lingers."""
        self.kill()
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            return await self.wait()


@dataclass(eq=False)
class Sandbox:
    """One sandbox: its directory (/sandbox inside), its uid (as root), its isolation. A payload
    may be spawned in it again after the previous one ended (a worker's restart)."""

    launcher: SandboxLauncher
    name: str
    directory: Path
    mode: Mode | None
    isolation: Isolation
    read_only: tuple[str, ...] = ()
    uid: int | None = None
    closed: bool = field(default=False, repr=False)

    @property
    def peer_uid(self) -> int:
        """The uid its processes run under, as the server sees it (SO_PEERCRED)."""
        return self.uid if self.uid is not None else os.geteuid()

    async def spawn(self, argv: Sequence[str], *, pass_fds: Sequence[int] = (), threads: int = 1,
                    stderr: int = asyncio.subprocess.DEVNULL) -> SandboxProcess:
        """Start `python -m argv[0] argv[1:]` in the sandbox; raise SandboxUnavailable with the
        step that failed when it cannot be built."""
        if self.closed:
            raise errors.ServiceUnavailable("this sandbox was closed; create a new one")
        launcher = self.launcher
        if self.mode is None:
            env = sandbox_env(threads=threads, home=str(self.directory))
            process = await asyncio.create_subprocess_exec(
                launcher.python, "-m", "modelport.workers.isolation", "run", *argv, env=env,
                cwd=self.directory, pass_fds=tuple(pass_fds), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True)
            return SandboxProcess(process, process.pid)
        plan = self._plan(argv, pass_fds, threads)
        plan_r, plan_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                launcher.python, "-m", "modelport.workers.isolation", "keep", "--plan-fd", str(plan_r),
                "--report-fd", str(report_w), env=plan["env"], cwd="/", pass_fds=(plan_r, report_w, *pass_fds),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)
        except BaseException:
            for fd in (plan_r, plan_w, report_r, report_w):
                os.close(fd)
            raise
        os.close(plan_r)
        os.close(report_w)
        try:
            await run_blocking(_write_all, plan_w, json.dumps(plan).encode())
            report = await asyncio.wait_for(read_json_line(report_r), REPORT_TIMEOUT)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:
            os.close(report_r)
        if report is None or report.get("event") != "started":
            code = await process.wait()
            why = report.get("message") if report else f"its keeper ended with code {code} without a report"
            raise SandboxUnavailable(f"could not build the sandbox of a {launcher.kind[:-1]} process: {why}")
        return SandboxProcess(process, int(report["pid"]))

    def _plan(self, argv: Sequence[str], pass_fds: Sequence[int], threads: int) -> dict[str, Any]:
        launcher = self.launcher
        system, links = _system_layout()
        read_only = _outermost([*system, *runtime_paths(launcher.python), *self.read_only])
        binds = [[path, path, False] for path in read_only] + [[str(self.directory), SANDBOX_DIR, True]]
        return {
            "mode": self.mode, "uid": self.uid, "gid": self.uid, "network": self.isolation.network,
            "binds": binds, "symlinks": links, "tmp_bytes": launcher.tmp_bytes, "python": launcher.python,
            "argv": list(argv), "env": sandbox_env(threads=threads, home="/tmp"),  # noqa: S108 - private tmpfs
            "keep_fds": list(pass_fds), "server_pid": os.getpid(),
        }

    async def close(self) -> None:
        """After its process ended: give the uid back and remove the directory.

        Once the keeper has been reaped, every process of the payload is gone: the kernel lets
        the parent reap a PID namespace's init only after all other processes in it were
        reaped. So is a restart's previous run. A uid that some process still runs under (one
        that escaped this accounting, or a foreign user of the range) stays reserved until a
        later acquire finds it free."""
        if self.closed:
            return
        self.closed = True
        if self.uid is not None and not await run_blocking(self.launcher.uids.release, self.uid):
            log.warning("sandbox uid %d still runs processes; it stays reserved until they are gone", self.uid)
        await run_blocking(self.launcher.remove_directory, self.name)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass  # the keeper died; its report (or its absence) says so
    finally:
        os.close(fd)


async def read_json_line(fd: int) -> dict[str, Any] | None:
    """One JSON line from a child's pipe (its report or status), or None when it closed without one."""
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
        return json.loads(line)
    except ValueError:
        return None


# -- the launcher --------------------------------------------------------------------------

_probed: dict[tuple[str, int], Capabilities] = {}


class SandboxLauncher:
    """Creates sandboxes of one kind ("workers" or "trainers") under `run_dir/<kind>/`, which it
    owns: entries left there by a server that died are removed on first use."""

    def __init__(self, run_dir: Path, kind: str, *, allow_unisolated: bool = False, uid_base: int = 61000,
                 uid_count: int = 1000, uid_lock_dir: Path | None = None, python: str | None = None,
                 capabilities: Capabilities | None = None, tmp_bytes: int = TMP_BYTES) -> None:
        """`capabilities` overrides the probe: for tests of a machine that cannot build sandboxes,
        on one that can (they say so)."""
        self.run_dir = Path(os.path.abspath(run_dir))
        self.kind = kind
        self.allow_unisolated = allow_unisolated
        self.uids = UidPool(uid_base, uid_count, uid_lock_dir or RUN_ROOT / "uids")
        self.python = python or sys.executable
        self.tmp_bytes = tmp_bytes
        self._caps = capabilities
        self._prepared = False
        # prepare() runs in worker threads, and two pools may provision at once: the lock keeps
        # its sweep of stale entries from removing a sandbox created meanwhile (a82bf51's CI: a
        # dedicated worker's directory vanished before its keeper opened it), and `_live` keeps
        # a later sweep (after tidy()) away from the sandboxes this launcher still holds.
        self._lock = threading.Lock()
        self._live: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Any, kind: str) -> SandboxLauncher:
        return cls(settings.run_dir, kind, allow_unisolated=settings.allow_unisolated_workers,
                   uid_base=settings.worker_uid_base)

    @property
    def directory(self) -> Path:
        return self.run_dir / self.kind

    def prepare(self) -> None:
        """Check (or create) the run directory and this kind's directory; remove stale entries
        (left by a server that died: its processes died too), never one of this launcher's."""
        with self._lock:
            if self._prepared:
                return
            secure_run_dir(self.run_dir)
            secure_directory(self.directory)
            for stale in os.listdir(self.directory):
                if stale in self._live:
                    continue
                path = self.directory / stale
                if os.path.islink(path) or not os.path.isdir(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path, ignore_errors=True)
            self._prepared = True

    def tidy(self) -> None:
        """Remove this kind's directory when nothing is left in it, and the run directory too when
        it is one of /run/modelport's (a run directory given by the caller stays theirs)."""
        paths = [self.directory, self.run_dir] if self.run_dir.parent == RUN_ROOT else [self.directory]
        with self._lock:
            for path in paths:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            self._prepared = False

    def _make_directory(self, name: str, uid: int | None) -> Path:
        """A new sandbox's directory, counted as live before it exists."""
        directory = self.directory / name
        with self._lock:
            self._live.add(name)
            try:
                os.mkdir(directory, 0o700)
                if uid is not None:
                    os.chown(directory, uid, uid)
            except BaseException:
                self._live.discard(name)
                raise
        return directory

    def remove_directory(self, name: str) -> None:
        """Remove a sandbox's directory (its processes have ended) and stop counting it as live."""
        with self._lock:
            shutil.rmtree(self.directory / name, ignore_errors=True)
            self._live.discard(name)

    async def capabilities(self) -> Capabilities:
        if self._caps is None:
            key = (self.python, os.geteuid())
            if key not in _probed:
                _probed[key] = await self._probe()
                if _probed[key].mode is None:
                    log.warning("model processes cannot be sandboxed here: %s", _probed[key].reason)
            self._caps = _probed[key]
        return self._caps

    async def _probe(self) -> Capabilities:
        """Build one sandbox and import the worker in it, the way every payload will."""
        mode: Mode = "root" if os.geteuid() == 0 else "userns"
        await run_blocking(self.prepare)
        sandbox = await self._create(mode, Isolation(True, True, True), (), "probe-" + secrets.token_hex(4))
        try:
            process = await sandbox.spawn(["modelport.workers.main", "--help"])
            code = await process.wait()
        except SandboxUnavailable as exc:
            return Capabilities(None, exc.message.split(": ", 1)[-1])
        finally:
            await sandbox.close()
        if code != 0:
            return Capabilities(None, f"a probe process in the sandbox ended with code {code} (the "
                                      "interpreter or modelport is not readable by the sandbox's uid?)")
        return Capabilities(mode)

    async def create(self, *, read_only: Sequence[str] = (), allow_egress: bool = False,
                     name: str | None = None) -> Sandbox:
        """A new sandbox, or SandboxUnavailable when this machine cannot build one and
        `allow_unisolated` is off."""
        await run_blocking(self.prepare)
        caps = await self.capabilities()
        name = name or secrets.token_hex(6)
        if caps.mode is None:
            if not self.allow_unisolated:
                raise SandboxUnavailable(
                    f"this machine cannot sandbox model processes ({caps.reason}); isolation of network, "
                    "files and processes is required: run modelport as root or allow unprivileged user "
                    "namespaces (on a development machine only: MODELPORT_ALLOW_UNISOLATED_WORKERS=true)")
            return await self._create(None, UNISOLATED, read_only, name)
        return await self._create(caps.mode, Isolation(network=not allow_egress, files=True, processes=True),
                                  read_only, name)

    async def _create(self, mode: Mode | None, isolation: Isolation, read_only: Sequence[str],
                      name: str) -> Sandbox:
        paths = tuple(os.path.realpath(p) for p in read_only)
        uid = None
        if mode == "root":
            _readable_by_others(paths)
            uid = await run_blocking(self.uids.acquire)
            if uid is None:
                raise errors.TooManyRequests(f"all {self.uids.count} sandbox uids are in use; stop a worker "
                                             "or a fine-tuning job first")
        try:
            directory = await run_blocking(self._make_directory, name, uid)
        except BaseException:
            if uid is not None:
                self.uids.release(uid)
            raise
        return Sandbox(self, name, directory, mode, isolation, paths, uid)
