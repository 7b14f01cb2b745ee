"""Inside the sandbox: builds it, then runs the payload (a model worker or a trainer).

The host side (sandbox.py) decides what a sandbox holds and starts

    python -m modelport.workers.isolation keep --plan-fd N --report-fd M

This *keeper* is a fresh process (no fork of the multi-threaded gateway runs our code: the old
preexec_fn could only say "Exception occurred in preexec_fn"). It reads the plan, then:

1. `unshare(CLONE_NEWPID)` (with `CLONE_NEWUSER` when not root: an unprivileged user namespace
   that maps only the server's own uid) and forks. The child is PID 1 of a new PID namespace:
   when it exits the kernel kills every process it started, and the exit is reaped only once
   they are all gone, so a uid is free for reuse when the keeper has reaped the child.
2. The child unshares a mount, network (unless the operator allowed egress), IPC and UTS
   namespace (host name `sandbox`) and builds a new root from nothing: a tmpfs holding
   read-only bind mounts of what the plan lists (the system's /usr and library directories,
   the interpreter, modelport, the model), a few device nodes, a fresh /proc (its own
   processes only), a private /tmp and /dev/shm (memory), and its own directory at /sandbox
   (the worker's socket). The platform's home, /run, /var/run, the host's /tmp and every
   other socket directory simply do not exist in it. Sources are opened (O_PATH) before
   anything is mounted, so no later mount can hide one. `pivot_root` makes the tmpfs the
   root; the old root is detached.
3. As root, the child drops to the plan's uid/gid with no supplementary groups (in a user
   namespace it already is the server's uid and loses every capability at exec), sets
   no_new_privs, RLIMIT_CORE=0, and asks for SIGKILL when the keeper dies; then it execs
   `python -m modelport.workers.isolation run MODULE ARGS...`, which marks the process not
   dumpable (execve resets that flag) before importing the payload.
4. The keeper reports the child's host pid, or the step that failed and why, as one JSON line
   on the report fd; then it forwards SIGTERM/SIGINT/SIGHUP to the child, waits for it and
   exits the same way (same code, or killed by the same signal). It gets SIGKILL when the
   server dies, and the payload when the keeper dies: nothing outlives the server.

Only the standard library here: the keeper must start fast and hold nothing of the gateway.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import runpy
import select
import signal
import stat
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 3, 4, 38
# statvfs f_flag bits that a bind remount must keep (the kernel locks them in user namespaces).
_KEPT_FLAGS = ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
               (os.ST_RELATIME, MS_RELATIME))
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "s390x": 217}
# Device nodes a payload may use; everything else under /dev is absent.
DEVICES = ("null", "zero", "full", "random", "urandom")
NEW_ROOT = "/tmp"  # noqa: S108 - the mount point of the new root, in the child's own mount namespace
SANDBOX_DIR = "/sandbox"
HOST_PID_ENV = "MODELPORT_SANDBOX_HOST_PID"
HOSTNAME = b"sandbox"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


class SandboxError(Exception):
    """A step of building the sandbox failed; the message names the step and the reason."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(errno)}")


def unshare(flags: int, what: str) -> None:
    _check(_libc.unshare(flags), what)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), what)


def harden_process() -> None:
    """No core dumps, and no ptrace or /proc/<pid>/mem, environ or fd access by other processes
    of the same uid. For the server, every sandboxed process and the keeper."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "mark the process not dumpable")


def dumpable() -> int:
    return int(_libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def host_pid() -> int:
    """This process's pid on the host (inside a sandbox, os.getpid() is 1)."""
    return int(os.environ.get(HOST_PID_ENV) or os.getpid())


# -- the child: PID 1 of the new PID namespace ---------------------------------------------

def _bind_flags(fd: int, writable: bool) -> int:
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
    f_flag = os.fstatvfs(fd).f_flag
    for st_flag, ms_flag in _KEPT_FLAGS:
        if f_flag & st_flag:
            flags |= ms_flag
    return flags | (MS_NOEXEC if writable else MS_RDONLY)


def _make_target(path: str, is_dir: bool) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if is_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
    elif not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))


def _build_root(plan: dict[str, Any]) -> None:
    """Mount namespace: a new root with only what the plan lists (see the module docstring)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make the mounts private")
    # (fd, target, writable): opened before the first mount, so that none can hide a source.
    sources = []
    for source, target, writable in plan["binds"]:
        try:
            fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"open {source}: {exc.strerror}") from None
        sources.append((fd, target, writable))
    devices = [(os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC), f"/dev/{name}") for name in DEVICES]
    root = NEW_ROOT
    os.umask(0o022)  # what is created in the new root is enterable by the payload's uid
    mount("sandbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m", "mount the sandbox's root")
    size = int(plan["tmp_bytes"])
    for path in ("/tmp", "/dev/shm"):  # noqa: S108 - private, in memory; binds below may lie under /tmp
        os.makedirs(root + path, mode=0o755)
        mount("sandbox-tmp", root + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              f"mode=1777,size={size}", f"mount {path}")
    for fd, target, writable in sources:
        inside = root + target
        _make_target(inside, stat.S_ISDIR(os.fstat(fd).st_mode))
        mount(f"/proc/self/fd/{fd}", inside, None, MS_BIND | MS_REC, None, f"bind {target}")
        mount(None, inside, None, _bind_flags(fd, writable), None, f"make {target} read-only"
              if not writable else f"restrict {target}")
        os.close(fd)
    for link_target, link in plan["symlinks"]:
        os.symlink(link_target, root + link)
    dev = root + "/dev"
    for fd, target in devices:
        _make_target(root + target, False)
        mount(f"/proc/self/fd/{fd}", root + target, None, MS_BIND, None, f"bind {target}")
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(root + "/proc", 0o555)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None,
          "mount /proc for the new PID namespace")
    os.chdir(root)
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise SandboxError(f"pivot_root: no system call number known for {platform.machine()}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root into the sandbox's root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None, "make the root read-only")


def _become(plan: dict[str, Any]) -> None:
    if plan["mode"] == "root":
        os.setgroups([])
        os.setresgid(plan["gid"], plan["gid"], plan["gid"])
        os.setresuid(plan["uid"], plan["uid"], plan["uid"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    # After the uid switch: a credential change clears the parent-death signal.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "ask for SIGKILL when the keeper dies")


def _child(plan: dict[str, Any], go_r: int, err_w: int) -> NoReturn:
    """Build the sandbox and exec the payload; on failure, say why on err_w and exit 127."""
    try:
        host_pid = os.read(go_r, 32).decode()  # also: the keeper is alive and listening
        if not host_pid:
            raise SandboxError("the keeper exited before the sandbox was built")
        flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWNET if plan["network"] else 0)
        unshare(flags, "unshare the mount, IPC, UTS and network namespaces")
        _check(_libc.sethostname(HOSTNAME, len(HOSTNAME)), "set the host name")
        _build_root(plan)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _become(plan)
        if select.select([go_r], [], [], 0)[0] and not os.read(go_r, 1):
            raise SandboxError("the keeper exited while the sandbox was built")
        os.close(go_r)
        os.chdir(SANDBOX_DIR)
        os.umask(0o077)
        env = {**plan["env"], HOST_PID_ENV: host_pid}
        argv = [plan["python"], "-m", "modelport.workers.isolation", "run", *plan["argv"]]
        os.execve(plan["python"], argv, env)  # noqa: S606 - no shell on purpose
    except BaseException as exc:  # any failure ends the child with a reason
        message = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
        try:
            os.write(err_w, message.encode()[:4000])
        finally:
            os._exit(127)
    os._exit(127)  # pragma: no cover - execve does not return


# -- the keeper ----------------------------------------------------------------------------

def _write_id_maps(uid: int, gid: int) -> None:
    """In a fresh user namespace, map only our own uid and gid (to themselves)."""
    for name, data in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"), ("gid_map", f"{gid} {gid} 1\n")):
        try:
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(data)
        except OSError as exc:
            raise SandboxError(f"write /proc/self/{name}: {exc.strerror}") from None


def _report(fd: int, event: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(event).encode() + b"\n")
    finally:
        os.close(fd)


def _exit_like(status: int) -> NoReturn:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # pragma: no cover - the signal ends the process first
    os._exit(os.waitstatus_to_exitcode(status))


def _forward(pid: int) -> None:
    def handler(sig: int, _frame: object) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it is exiting; waitpid below sees it

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def keep(plan: dict[str, Any], report_fd: int) -> NoReturn:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        if plan["mode"] == "userns":
            uid, gid = os.getuid(), os.getgid()
            unshare(CLONE_NEWUSER | CLONE_NEWPID, "unshare a user and PID namespace")
            _write_id_maps(uid, gid)
        else:
            unshare(CLONE_NEWPID, "unshare a PID namespace")
        # Only now: a process that is not dumpable may not write its own /proc/self/uid_map.
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "mark the keeper not dumpable")
        # Die with the server (its payload follows: it asks for SIGKILL when the keeper dies).
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "ask for SIGKILL when the server dies")
        if os.getppid() != plan["server_pid"]:
            raise SandboxError("the server exited while the sandbox was built")
    except SandboxError as exc:
        _report(report_fd, {"event": "error", "message": str(exc)})
        os._exit(127)
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(err_r)
        os.close(report_fd)
        _child(plan, go_r, err_w)
    os.close(go_r)
    os.close(err_w)
    for fd in plan["keep_fds"]:  # the payload holds the only copies (EOF on its pipes means it is gone)
        try:
            os.close(fd)
        except OSError:
            pass
    _forward(pid)
    os.write(go_w, str(pid).encode())
    chunks = []
    while chunk := os.read(err_r, 4096):  # EOF at the child's exec (close-on-exec) or exit
        chunks.append(chunk)
    os.close(err_r)
    if chunks:
        _report(report_fd, {"event": "error", "message": b"".join(chunks).decode(errors="replace")})
    else:
        _report(report_fd, {"event": "started", "pid": pid})
    _, status = os.waitpid(pid, 0)
    os.close(go_w)
    _exit_like(status)


def run_payload(argv: Sequence[str]) -> None:
    """The payload's first step, in its own process: not dumpable, then its module as __main__."""
    harden_process()
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        run_payload(args[1:])
        return 0
    parser = argparse.ArgumentParser(prog="modelport-sandbox")
    parser.add_argument("command", choices=["keep"])
    parser.add_argument("--plan-fd", type=int, required=True)
    parser.add_argument("--report-fd", type=int, required=True)
    ns = parser.parse_args(args)
    os.set_inheritable(ns.plan_fd, False)
    os.set_inheritable(ns.report_fd, False)
    with os.fdopen(ns.plan_fd, "rb") as fh:
        plan = json.loads(fh.read())
    keep(plan, ns.report_fd)


if __name__ == "__main__":
    sys.exit(main())
