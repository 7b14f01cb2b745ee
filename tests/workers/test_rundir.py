"""SEC-H2: the run directory (worker sockets, sandbox directories) is trusted only when this
server made it, and a worker's socket is trusted only when the worker serves it.

The attacks: a local user creates the predictable run directory first (or a symbolic link in
its place) and lets the server chmod and empty another directory, or owns it and swaps a worker's
socket to receive prompts. Here "another user" is uid 65534 (nobody), played by this root test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.errors import ServiceUnavailable
from modelport.workers.client import WorkerClient
from modelport.workers.protocol import WorkerSpec
from modelport.workers.sandbox import UidPool, UnsafeDirectory, secure_directory
from tests.support.workers import LoopThread, make_supervisor

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays another local user with chown/setuid: needs root")


def echo() -> WorkerSpec:
    return WorkerSpec(runtime="echo", model_id="e")


def test_a_run_directory_created_first_by_another_user_is_refused_and_left_alone(loop: LoopThread,
                                                                                  run_root: Path) -> None:
    run_dir = run_root / "taken"
    run_dir.mkdir(mode=0o700)
    (run_dir / "workers").mkdir(mode=0o700)
    (run_dir / "workers" / "theirs").write_text("x")
    for path in (run_dir, run_dir / "workers", run_dir / "workers" / "theirs"):
        os.chown(path, NOBODY, NOBODY)
    sup = make_supervisor(loop, run_dir)
    with pytest.raises(UnsafeDirectory, match=f"refusing {run_dir}: it belongs to uid {NOBODY}, not to this "
                                              "server's uid 0"):
        loop.run(sup.start(echo(), "local"))
    st = os.stat(run_dir)
    assert (st.st_uid, st.st_mode & 0o7777) == (NOBODY, 0o700)  # not chmod'ed, not taken over
    assert (run_dir / "workers" / "theirs").read_text() == "x"  # not emptied


def test_a_symbolic_link_in_place_of_the_run_directory_is_refused_and_its_target_untouched(
        loop: LoopThread, run_root: Path) -> None:
    victim = run_root / "victim"
    (victim / "workers").mkdir(parents=True, mode=0o700)
    (victim / "workers" / "precious").write_text("keep me")
    victim.chmod(0o700)
    link = run_root / "linked"
    link.symlink_to(victim)
    sup = make_supervisor(loop, link)
    with pytest.raises(UnsafeDirectory, match=f"refusing {link}: it is a symbolic link"):
        loop.run(sup.start(echo(), "local"))
    assert os.stat(victim).st_mode & 0o7777 == 0o700
    assert (victim / "workers" / "precious").read_text() == "keep me"


def test_a_run_directory_with_a_wider_mode_or_under_a_parent_others_can_write_is_refused(
        loop: LoopThread, run_root: Path) -> None:
    wide = run_root / "wide"
    wide.mkdir(mode=0o700)
    wide.chmod(0o755)
    with pytest.raises(UnsafeDirectory, match="its mode is 0755; it must be 0700"):
        loop.run(make_supervisor(loop, wide).start(echo(), "local"))
    shared = run_root / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by all, not sticky: anyone could rename what lies below
    with pytest.raises(UnsafeDirectory, match=f"its parent {shared} is writable by other users"):
        secure_directory(shared / "run")
    assert not (shared / "run").exists()
    # The uid pool's lock directory is held to the same rule.
    lock_dir = run_root / "locks"
    lock_dir.symlink_to(run_root / "victim-locks")
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        UidPool(lock_dir=lock_dir).acquire()


def test_a_fresh_run_directory_is_private(loop: LoopThread, run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "fresh")
    handle = loop.run(sup.start(echo(), "local"))
    try:
        for path in (sup.run_dir, sup.run_dir / "workers"):
            st = os.lstat(path)
            assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700), path
        st = os.lstat(handle.directory)  # the worker's own directory: its uid only
        assert (st.st_uid, st.st_mode & 0o7777) == (handle.uid, 0o700)
    finally:
        loop.run(sup.stop_all())
    assert not (sup.run_dir / "workers").exists()  # tidied away once empty


SERVE_AS_NOBODY = r"""
import os, socket, sys
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
sock = socket.socket(fileno=int(sys.argv[1]))
sock.listen(8)  # the listener's credentials are what SO_PEERCRED reports
print("listening", flush=True)
got = 0
sock.settimeout(float(sys.argv[2]))
try:
    while True:
        conn, _ = sock.accept()
        conn.settimeout(1)
        try:
            while data := conn.recv(65536):
                got += len(data)
        except OSError:
            pass
        conn.close()
except OSError:
    pass
print(got, flush=True)
"""


def serve_as_nobody(path: Path, seconds: float) -> subprocess.Popen:
    """A Unix socket at `path`, listened on by a process of uid 65534, counting the bytes it gets."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    proc = subprocess.Popen([sys.executable, "-c", SERVE_AS_NOBODY, str(sock.fileno()), str(seconds)],
                            pass_fds=(sock.fileno(),), stdout=subprocess.PIPE, text=True)
    sock.close()
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def test_a_worker_socket_served_by_another_uid_is_refused(loop: LoopThread, run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "swap")
    handle = loop.run(sup.start(echo(), "local"))
    try:
        assert handle.client.peer_uid == handle.uid is not None
        assert loop.run(handle.client.health()).status == "ready"  # the real worker's socket: accepted
        # The swap: someone else's socket at the worker's path. The gateway's next connection must
        # not send it a byte (a generate request would carry the prompt).
        loop.run(handle.client.close())
        client = WorkerClient(handle.socket_path, peer_uid=handle.uid)
        handle.socket_path.unlink()
        fake = serve_as_nobody(handle.socket_path, seconds=3)
        with pytest.raises(ServiceUnavailable, match="not served by the worker itself"):
            loop.run(client.health(timeout=5))
        out, _ = fake.communicate(timeout=30)
        assert out.split() == ["0"]  # nothing was sent
        # Control: a client that expects uid 65534 does talk to it.
        handle.socket_path.unlink()
        fake = serve_as_nobody(handle.socket_path, seconds=3)
        with pytest.raises(ServiceUnavailable):  # not a worker: no answer
            loop.run(WorkerClient(handle.socket_path, peer_uid=65534).health(timeout=2))
        out, _ = fake.communicate(timeout=30)
        assert int(out.split()[0]) > 0
    finally:
        loop.run(sup.stop_all())
        shutil.rmtree(run_root / "swap", ignore_errors=True)
