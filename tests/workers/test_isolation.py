"""Worker isolation through the real spawn path: a probe runtime inside a real worker tries to
reach the network, the platform's files, socket directories, other processes and core dumps.

Each blocked case has a control that runs the same probe without that isolation (egress
allowed, or the development escape hatch on a faked machine) or from the host, and gets
through: these tests fail on this machine if isolation is not applied. The one thing this
machine (root, namespaces allowed) cannot produce is a machine where no sandbox can be built;
those cases override the launcher's probe (`capabilities=`), and say so.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.sandbox import Capabilities, SandboxLauncher, SandboxUnavailable, uids_in_use
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor
from tests.support.workers import LoopThread, collect, make_supervisor, wait_for

PROBE = "tests.workers.probe_runtime:ProbeRuntime"
ALL = {"network": True, "files": True, "processes": True}


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("these tests run workers under uids of their own, which needs root (test_userns.py "
                    "covers the unprivileged path)")


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A TCP listener on the host, on every address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        yield server.getsockname()[1]


def host_address() -> str | None:
    """This machine's outbound address (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def run_probe(loop: LoopThread, sup: WorkerSupervisor, allow_egress: bool = False,
              **options: object) -> tuple[WorkerHandle, dict]:
    spec = WorkerSpec(runtime=PROBE, model_id="probe", model_path="/dev/null", options=options,
                      allow_egress=allow_egress)
    handle = loop.run(sup.start(spec, region="local"))
    texts, _ = loop.run(collect(handle, GenerateBody(prompt="probe")))
    return handle, json.loads(texts[0])


def unsandboxable(run_dir: Path, **kw: object) -> SandboxLauncher:
    """Faked edge: this machine can build sandboxes, so the probe's result is overridden."""
    return SandboxLauncher(run_dir, "workers", capabilities=Capabilities(None, "faked: no namespaces here"), **kw)


def test_code_in_a_worker_cannot_open_tcp_connections_to_the_host(loop: LoopThread, run_root: Path,
                                                                 listener: int) -> None:
    targets = [["127.0.0.1", listener]]
    address = host_address()
    if address:
        targets.append([address, listener])
    sup = make_supervisor(loop, run_root / "net")
    try:
        isolated, report = run_probe(loop, sup, tcp=targets)
        assert isolated.egress == "isolated" and isolated.isolation.as_dict() == ALL
        for host, port in targets:
            assert report[f"tcp {host}:{port}"] == "blocked: ENETUNREACH"
        # Control: the same probe where the operator allowed egress reaches the listener.
        allowed, report = run_probe(loop, sup, allow_egress=True, tcp=targets)
        assert allowed.egress == "not isolated"
        assert allowed.isolation.as_dict() == {"network": False, "files": True, "processes": True}
        for host, port in targets:
            assert report[f"tcp {host}:{port}"] == "ok"
    finally:
        loop.run(sup.stop_all())


def test_where_no_sandbox_can_be_built_a_worker_fails_with_the_reason_unless_the_hatch_is_set(
        loop: LoopThread, run_root: Path, listener: int) -> None:
    strict = make_supervisor(loop, run_root / "strict", launcher=unsandboxable(run_root / "strict"))
    with pytest.raises(SandboxUnavailable) as err:
        loop.run(strict.start(WorkerSpec(runtime=PROBE, model_id="p", model_path="/dev/null"), "local"))
    assert "cannot sandbox model processes (faked: no namespaces here)" in err.value.message
    assert "MODELPORT_ALLOW_UNISOLATED_WORKERS" in err.value.message
    assert strict.handles() == []
    # The escape hatch: the worker runs, says that it is not isolated, and is not.
    lenient = make_supervisor(loop, run_root / "lenient",
                              launcher=unsandboxable(run_root / "lenient", allow_unisolated=True))
    try:
        handle, report = run_probe(loop, lenient, tcp=[["127.0.0.1", listener]], list=["/run"])
        assert handle.isolation.as_dict() == {"network": False, "files": False, "processes": False}
        assert handle.egress == "not isolated"
        assert report[f"tcp 127.0.0.1:{listener}"] == "ok"
        assert isinstance(report["list /run"], list)
        assert os.getpid() in report["pids"]
    finally:
        loop.run(lenient.stop_all())


def test_a_sandbox_that_cannot_be_built_fails_with_the_step_and_the_reason(loop: LoopThread,
                                                                            run_root: Path) -> None:
    """A real failure inside the keeper: a /tmp size the kernel refuses."""
    launcher = SandboxLauncher(run_root / "broken", "workers", tmp_bytes=-1)
    sup = make_supervisor(loop, run_root / "broken", launcher=launcher)
    with pytest.raises(SandboxUnavailable, match=r"could not build the sandbox .*mount /tmp: Invalid argument"):
        loop.run(sup.start(WorkerSpec(runtime="echo", model_id="e"), "local"))
    assert sup.handles() == [] and list(launcher.directory.iterdir()) == []
    assert launcher.uids.held() == set()


@pytest.fixture(scope="module")
def platform_files(run_root: Path) -> dict[str, Path]:
    """Stand-ins for the platform's files: a closed one, one that every user may read, and a
    home directory whose files are readable by mode (only the sandbox's root hides them)."""
    run_root.chmod(0o755)
    platform = run_root / "platform"
    platform.mkdir(mode=0o755)
    secret = platform / "modelport.db"
    secret.write_bytes(b"rows")
    secret.chmod(0o600)
    public = platform / "public.txt"
    public.write_bytes(b"hello")
    public.chmod(0o644)
    home = run_root / "home"
    home.mkdir(mode=0o755)
    keystore = home / "keystore.json"
    keystore.write_bytes(b"{}")
    keystore.chmod(0o644)
    return {"secret": secret, "public": public, "keystore": keystore, "home": home}


def test_a_worker_sees_none_of_the_platforms_files_nor_another_workers_socket(
        loop: LoopThread, run_root: Path, platform_files: dict[str, Path]) -> None:
    sup = make_supervisor(loop, run_root / "fs")
    reads = [str(platform_files[k]) for k in ("secret", "public", "keystore")]
    try:
        neighbour = loop.run(sup.start(WorkerSpec(runtime="echo", model_id="neighbour"), "local"))
        handle, report = run_probe(loop, sup, read=reads, unix=[str(neighbour.socket_path)],
                                   list=[str(platform_files["home"]), str(neighbour.socket_path.parent)])
        assert handle.isolation.as_dict() == ALL and report["uid"] == handle.uid >= 61000
        assert neighbour.uid != handle.uid and report["groups"] == []
        for path in reads:  # not denied: absent, whatever their mode
            assert report[f"read {path}"] == "blocked: ENOENT"
        assert report[f"unix {neighbour.socket_path}"] == "blocked: ENOENT"
        assert report[f"list {platform_files['home']}"] == "blocked: ENOENT"
        assert report[f"list {neighbour.socket_path.parent}"] == "blocked: ENOENT"
        assert report["capabilities"] == "0000000000000000"
        assert loop.run(neighbour.client.health()).status == "ready"  # the gateway (root) still can
    finally:
        loop.run(sup.stop_all())
    # Control: without a sandbox (the hatch, on a faked machine) the same probe reads them all.
    open_sup = make_supervisor(loop, run_root / "open", launcher=unsandboxable(run_root / "open",
                                                                             allow_unisolated=True))
    try:
        neighbour = loop.run(open_sup.start(WorkerSpec(runtime="echo", model_id="neighbour"), "local"))
        handle, report = run_probe(loop, open_sup, read=reads, unix=[str(neighbour.socket_path)])
        assert not handle.fs_isolated
        assert all(report[f"read {path}"] == "ok" for path in reads)
        assert report[f"unix {neighbour.socket_path}"] == "ok"
    finally:
        loop.run(open_sup.stop_all())


@pytest.fixture
def host_sockets() -> Iterator[list[str]]:
    """Unix sockets listening where services put theirs (/run, /var/run, /tmp, /dev/shm), plus the
    real ones this machine has (D-Bus, PostgreSQL)."""
    made: list[socket.socket] = []
    paths = []
    for directory in ("/run", "/var/run", "/tmp", "/dev/shm"):  # where services keep sockets
        path = f"{directory}/modelport-test-{uuid.uuid4().hex[:8]}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o777)  # reachable by any uid: only the sandbox hides it
        server.listen(4)
        made.append(server)
        paths.append(path)
    for path in ("/run/dbus/system_bus_socket", "/var/run/postgresql/.s.PGSQL.5432", "/tmp/.s.PGSQL.5432"):
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            paths.append(path)
    try:
        yield paths
    finally:
        for server in made:
            path = server.getsockname()
            server.close()
            os.unlink(path)


def test_a_worker_reaches_no_socket_directory_and_no_other_process(
        loop: LoopThread, run_root: Path, host_sockets: list[str]) -> None:
    """SEC-L4, from inside a worker: filesystem sockets and the host's processes."""
    for path in host_sockets:  # control: they answer from the host
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    sup = make_supervisor(loop, run_root / "sockets")
    try:
        handle, report = run_probe(loop, sup, unix=host_sockets, list=["/", "/run", "/var/run", "/tmp", "/dev/shm",
                                                                       "/proc/1/fd"])
        for path in host_sockets:
            assert report[f"unix {path}"] == "blocked: ENOENT", path
        assert report["list /run"] == report["list /var/run"] == "blocked: ENOENT"
        assert report["list /tmp"] == report["list /dev/shm"] == []
        top = set(report["list /"])
        assert {"usr", "proc", "dev", "tmp", "sandbox"} <= top and not top & {"run", "var", "home", "mnt", "opt"}
        assert report["pids"] == [1]  # its own PID namespace: no host command line to read
        assert report["list /proc/1/fd"] != "blocked: ENOENT"  # pid 1 is the worker itself
        assert report["hostname"] == "sandbox"
        assert handle.pid != 1 and handle.pid in _pids_of_uid(handle.uid)  # the host sees its real pid
    finally:
        loop.run(sup.stop_all())


def _pids_of_uid(uid: int | None) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid or _status_uid(entry) == uid:
                    pids.add(int(entry))
            except OSError:
                continue
    return pids


def _status_uid(pid: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("Uid:")))


def test_a_workers_processes_die_with_it_and_only_then_is_its_uid_free(loop: LoopThread, run_root: Path) -> None:
    """SEC-M6: a detached grandchild used to outlive its worker under the worker's uid, which the
    pool then handed to the next worker. (Exact pids are followed: servers of other checkouts on
    this machine may run older code that takes uids from the same range.)"""
    sup = make_supervisor(loop, run_root / "orphans")
    try:
        handle, _ = run_probe(loop, sup, orphan=True)
        uid = handle.uid
        children = {pid for pid in _pids_of_uid(uid) if _parent(pid) == handle.pid}
        assert len(children) == 1
        # Right after exec, /proc/<pid>/cmdline can still be empty for a moment.
        wait_for(loop, lambda: [_cmdline(pid)[:2] for pid in children] == [["sleep", "600"]], timeout=10)
        mine = {handle.pid, *children}
        loop.run(sup.stop(handle))
        assert not any(_alive(pid) for pid in mine)  # the sleep died with the worker
        if uid not in uids_in_use():  # (unless an older server elsewhere took the same uid meanwhile)
            assert uid not in sup.launcher.uids.held()
    finally:
        loop.run(sup.stop_all())


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(line.split()[1] for line in fh if line.startswith("PPid:")))
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_have_no_core_dumps_and_are_not_dumpable(loop: LoopThread, run_root: Path) -> None:
    """SEC-L3: even when the server's own limit allows core dumps, a worker's does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    sup = make_supervisor(loop, run_root / "core")
    try:
        handle, report = run_probe(loop, sup)
        assert report["core_limit"] == [0, 0]
        assert report["dumpable"] == 0
        limits = Path(f"/proc/{handle.pid}/limits").read_text()
        assert any(line.startswith("Max core file size") and line.split()[4:6] == ["0", "0"]
                   for line in limits.splitlines()), limits
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
        loop.run(sup.stop_all())
