"""Worker isolation through the real spawn path: a probe runtime inside a real worker tries to
reach the network, the platform's files and another worker's socket.

Each blocked case has a control that runs the same probe without that isolation and gets
through, so these tests fail on this machine if isolation is not applied. The one thing this
machine (root, namespaces allowed) cannot produce is a machine *without* network namespaces;
that case overrides the supervisor's capability probe (`capabilities=`), and says so.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.workers import isolation
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import IsolationUnavailable, WorkerHandle, WorkerSupervisor
from tests.support.workers import LoopThread, collect, make_supervisor

PROBE = "tests.workers.probe_runtime:ProbeRuntime"



@pytest.fixture(scope="module", autouse=True)
def _needs_isolation() -> None:
    caps = isolation.probe()
    if os.geteuid() != 0 or not (caps.egress_isolation and caps.can_switch_uid):
        pytest.skip(f"isolation tests need root and namespaces: {'; '.join(caps.notes)}")


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
              **options: object) -> tuple[WorkerHandle, dict[str, str]]:
    spec = WorkerSpec(runtime=PROBE, model_id="probe", model_path="/dev/null", options=options,
                      allow_egress=allow_egress)
    handle = loop.run(sup.start(spec, region="local"))
    texts, _ = loop.run(collect(handle, GenerateBody(prompt="probe")))
    return handle, json.loads(texts[0])


def test_code_in_a_worker_cannot_open_tcp_connections_to_the_host(loop: LoopThread, run_root: Path,
                                                                 listener: int) -> None:
    targets = [["127.0.0.1", listener]]
    address = host_address()
    if address:
        targets.append([address, listener])
    sup = make_supervisor(loop, run_root / "net")
    try:
        isolated, report = run_probe(loop, sup, tcp=targets)
        assert isolated.egress == "isolated" and isolated.egress_isolated
        for host, port in targets:
            assert report[f"tcp {host}:{port}"] == "blocked: ENETUNREACH"
        # Control: the same probe where the operator allowed egress reaches the listener.
        allowed, report = run_probe(loop, sup, allow_egress=True, tcp=targets)
        assert allowed.egress == "not isolated"
        for host, port in targets:
            assert report[f"tcp {host}:{port}"] == "ok"
    finally:
        loop.run(sup.stop_all())


def test_without_network_namespaces_egress_shows_not_isolated_or_fails_when_required(
        loop: LoopThread, run_root: Path, listener: int) -> None:
    """Faked edge: this machine can make namespaces, so the probe result is overridden."""
    real = isolation.probe()
    cannot = isolation.Capabilities(netns_flags=0, can_switch_uid=real.can_switch_uid, can_mount=real.can_mount)
    strict = make_supervisor(loop, run_root / "strict", capabilities=cannot, require_egress_isolation=True)
    with pytest.raises(IsolationUnavailable, match="cannot isolate model workers from the network"):
        loop.run(strict.start(WorkerSpec(runtime=PROBE, model_id="p", model_path="/dev/null"), "local"))
    lenient = make_supervisor(loop, run_root / "lenient", capabilities=cannot)
    try:
        handle, report = run_probe(loop, lenient, tcp=[["127.0.0.1", listener]])
        assert handle.egress == "not isolated"
        assert report[f"tcp 127.0.0.1:{listener}"] == "ok"
    finally:
        loop.run(lenient.stop_all())


@pytest.fixture(scope="module")
def platform_files(run_root: Path) -> dict[str, Path]:
    """Stand-ins for the platform's files, in directories other users may enter."""
    run_root.chmod(0o755)
    platform = run_root / "platform"
    platform.mkdir(mode=0o755)
    secret = platform / "modelport.db"
    secret.write_bytes(b"rows")
    secret.chmod(0o600)
    public = platform / "public.txt"
    public.write_bytes(b"hello")
    public.chmod(0o644)
    hidden = run_root / "home"
    hidden.mkdir(mode=0o755)
    keystore = hidden / "keystore.json"
    keystore.write_bytes(b"{}")
    keystore.chmod(0o644)  # readable by mode: only the mount namespace hides it
    return {"secret": secret, "public": public, "keystore": keystore, "home": hidden}


def test_a_worker_cannot_read_platform_files_nor_reach_another_worker(
        loop: LoopThread, run_root: Path, platform_files: dict[str, Path]) -> None:
    sup = make_supervisor(loop, run_root / "fs", hidden_paths=[platform_files["home"]])
    try:
        neighbour = loop.run(sup.start(WorkerSpec(runtime="echo", model_id="neighbour"), "local"))
        reads = [str(platform_files[k]) for k in ("secret", "public", "keystore")]
        handle, report = run_probe(loop, sup, read=reads, unix=[str(neighbour.socket_path)])
        assert handle.fs_isolated and int(report["uid"]) == handle.uid >= 61000
        assert neighbour.uid != handle.uid
        assert report[f"read {platform_files['secret']}"] == "blocked: EACCES"
        assert report[f"read {platform_files['public']}"] == "ok"  # reads work: the denial is isolation
        assert report[f"read {platform_files['keystore']}"] == "blocked: EACCES"  # hidden by the mount ns
        assert report[f"unix {neighbour.socket_path}"] == "blocked: EACCES"
        assert loop.run(neighbour.client.health()).status == "ready"  # the gateway (root) still can
    finally:
        loop.run(sup.stop_all())
    # Control: without file isolation the same probe reads the secret and reaches the neighbour.
    open_sup = make_supervisor(loop, run_root / "open", isolate_files=False)
    try:
        neighbour = loop.run(open_sup.start(WorkerSpec(runtime="echo", model_id="neighbour"), "local"))
        handle, report = run_probe(loop, open_sup, read=[str(platform_files["secret"])],
                                   unix=[str(neighbour.socket_path)])
        assert not handle.fs_isolated
        assert report[f"read {platform_files['secret']}"] == "ok"
        assert report[f"unix {neighbour.socket_path}"] == "ok"
    finally:
        loop.run(open_sup.stop_all())
