"""Worker isolation (P7, and the file half of the worker's sandbox).

Applied in the child between fork and exec, before any worker code runs:

- network: `unshare(CLONE_NEWNET)` gives the worker a network namespace of its own whose only
  interface is a loopback that is down: every connect() fails and there is no route out. Unix
  sockets on filesystem paths still work, which is how the gateway talks to the worker.
  Without root it tries `CLONE_NEWUSER | CLONE_NEWNET` (unprivileged user namespaces), and
  the worker reports `egress_isolated=False` when neither is allowed.
- files: as root, each worker runs under a uid/gid of its own, with no supplementary groups,
  in a private directory (mode 0700) that holds its socket, so it cannot read the platform's
  0600/0700 files (database, keystore, blobs) nor reach another worker's socket; the gateway
  (root) still can. A private mount namespace (as root) adds two things: directories on the
  way to what the worker must read (its Python, the model) that are closed to other users,
  such as /root when Python lives in /root/.pyenv, are covered by a tmpfs that re-exposes only
  the needed entries; and `hidden_paths` (the platform's home) are covered by an empty tmpfs.
  Without root there is no uid to switch to, so `fs_isolated=False`.
- the child asks for SIGKILL when the supervisor dies (PR_SET_PDEATHSIG).

Python 3.11 has no os.unshare or mount, hence ctypes (resolved before fork: the child only
calls them). `_posixsubprocess` would switch user *before* running preexec_fn, dropping the
privilege unshare and mount need, so the switch is done at the end of our preexec function.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import functools
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


@dataclass(frozen=True, slots=True)
class IsolationPlan:
    """How one worker is started: namespaces, overlays, and the identity it runs under."""

    netns_flags: int = 0  # CLONE_NEWNET, CLONE_NEWUSER|CLONE_NEWNET, or 0 (not isolated)
    uid: int | None = None
    gid: int | None = None
    # (closed directory, entries to re-expose), outermost first; needs a mount namespace.
    overlays: tuple[tuple[str, tuple[str, ...]], ...] = ()
    hidden: tuple[str, ...] = ()

    @property
    def egress_isolated(self) -> bool:
        return self.netns_flags != 0

    @property
    def fs_isolated(self) -> bool:
        return self.uid is not None

    @property
    def mount_namespace(self) -> bool:
        return bool(self.overlays or self.hidden)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _apply_mounts(plan: IsolationPlan) -> None:
    _check(_mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    for directory, names in plan.overlays:
        # O_PATH handles to what stays visible, taken before the tmpfs covers them; a bind
        # mount from /proc/self/fd/N then puts each back at its old path.
        keep = [(name, os.open(os.path.join(directory, name), os.O_PATH | os.O_CLOEXEC)) for name in names]
        _check(_mount(b"tmpfs", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"),
               "cover a closed directory")
        for name, fd in keep:
            target = os.path.join(directory, name)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            _check(_mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None),
                   "re-expose a needed path")
            os.close(fd)
    for path in plan.hidden:
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        _check(_mount(b"tmpfs", path.encode(), b"tmpfs", flags, b"mode=0000,size=4k"), "hide a platform path")


def make_preexec(plan: IsolationPlan) -> Callable[[], None]:
    """The function run in the forked child before exec. Raising makes Popen fail."""
    flags = plan.netns_flags | (CLONE_NEWNS if plan.mount_namespace else 0)

    def preexec() -> None:
        if flags:
            _check(_unshare(flags), "unshare")
        if plan.mount_namespace:
            _apply_mounts(plan)
        if plan.uid is not None and plan.gid is not None:
            os.setgroups([])
            os.setresgid(plan.gid, plan.gid, plan.gid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        # After the uid switch: a credential change clears the parent-death signal.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def closed_ancestors(paths: Iterable[str | Path]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Directories above `paths` that other users cannot enter, with the entries to re-expose.

    Only ancestors are considered: a needed file or directory that is itself closed stays
    closed (the caller reports it), and what is re-exposed keeps its own permissions.
    """
    needed: dict[str, set[str]] = {}
    for raw in paths:
        real = Path(os.path.realpath(raw))
        parts = real.parts
        for depth in range(1, len(parts)):  # "/" then each directory above `real`
            ancestor = Path(*parts[:depth])
            try:
                mode = ancestor.stat().st_mode
            except OSError:
                break
            if str(ancestor) != "/" and not mode & stat.S_IXOTH:
                needed.setdefault(str(ancestor), set()).add(parts[depth])
    ordered = sorted(needed.items(), key=lambda item: len(Path(item[0]).parts))
    return tuple((directory, tuple(sorted(names))) for directory, names in ordered)


def runtime_paths() -> list[str]:
    """What every worker must be able to read: the interpreter, its stdlib, the virtualenv
    and the modelport package."""
    import modelport

    package_parent = str(Path(modelport.__file__).resolve().parent.parent)
    return [sys.base_prefix, sys.prefix, os.path.realpath(sys.executable), package_parent]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this machine lets the supervisor do, probed once per process."""

    netns_flags: int
    can_switch_uid: bool
    can_mount: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def egress_isolation(self) -> bool:
        return self.netns_flags != 0


def _runs(plan: IsolationPlan, argv: list[str], env: dict[str, str] | None = None) -> bool:
    try:
        result = subprocess.run(argv, preexec_fn=make_preexec(plan), check=False, timeout=30, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/")
    except (subprocess.SubprocessError, OSError):
        return False
    return result.returncode == 0


@functools.cache
def probe() -> Capabilities:
    """Try each isolation step once with short-lived children (a few tens of ms in all)."""
    true = ["/bin/sh", "-c", "exit 0"]
    notes: list[str] = []
    netns = 0
    for candidate in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
        if _runs(IsolationPlan(netns_flags=candidate), true):
            netns = candidate
            break
    if not netns:
        notes.append("no network namespace can be created here (needs root or user namespaces)")
    root = os.geteuid() == 0
    can_mount = root and _runs(IsolationPlan(hidden=("/mnt",)), true)
    can_switch = False
    if root:
        overlays = closed_ancestors(runtime_paths()) if can_mount else ()
        probe_uid = 65534  # nobody: an unprivileged uid that certainly exists
        plan = IsolationPlan(uid=probe_uid, gid=probe_uid, overlays=overlays)
        env = {"PATH": os.defpath, "PYTHONPATH": runtime_paths()[-1], "PYTHONDONTWRITEBYTECODE": "1"}
        can_switch = _runs(plan, [sys.executable, "-c", "import modelport.workers.main"], env)
        if not can_switch:
            notes.append("a worker under its own uid cannot run this Python installation "
                         "(its files are not readable by other users)")
    else:
        notes.append("not running as root: workers share the supervisor's uid")
    return Capabilities(netns_flags=netns, can_switch_uid=can_switch, can_mount=can_mount, notes=tuple(notes))


class UidPool:
    """Uids for sandboxed processes, unique on this machine across every process that uses
    the same `lock_dir` (supervisors, fine-tuning runners): a uid in use holds an exclusive
    flock on `lock_dir/<uid>.lock`, which the kernel also releases if its holder dies."""

    def __init__(self, base: int = 61000, count: int = 1000,
                 lock_dir: Path = Path("/run/lock/modelport-worker-uids")) -> None:
        self.base = base
        self.count = count
        self.lock_dir = Path(lock_dir)
        self._held: dict[int, int] = {}  # uid -> fd holding its lock

    def acquire(self) -> int | None:
        """A free uid, or None when all are taken."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for uid in range(self.base, self.base + self.count):
            if uid in self._held:
                continue
            fd = os.open(self.lock_dir / f"{uid}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        return None

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)


def netns_inode() -> int:
    """Inode of this process's network namespace; a worker reporting the same one is not isolated."""
    return os.stat("/proc/self/ns/net").st_ino
