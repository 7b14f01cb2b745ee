"""SEC-H1 without root: a server running as an ordinary user still isolates its workers
(network, files, processes) through an unprivileged user namespace, under its own uid.

The test runs a real supervisor and a real probe worker as uid 65534 (nobody). The development
machines keep the interpreter under a 0700 /root, which nobody cannot read, so the supervisor
runs on the system's Python of the same version, with this checkout and the virtualenv's
site-packages on its PYTHONPATH; without such a Python (or without root to become nobody) the
test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ROOT

NOBODY = 65534

SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerSupervisor
from tests.support.workers import collect

run_dir, secret = Path(sys.argv[1]), sys.argv[2]
options = {"read": [secret], "tcp": [["127.0.0.1", 22]], "list": ["/run", str(Path(secret).parent)]}

async def main():
    sup = WorkerSupervisor(run_dir)
    spec = WorkerSpec(runtime="tests.workers.probe_runtime:ProbeRuntime", model_id="p", model_path="/dev/null",
                      options=options)
    handle = await sup.start(spec, "local")
    try:
        texts, _ = await collect(handle, GenerateBody(prompt="probe"))
        isolation = getattr(handle, "isolation", None)
        print(json.dumps({"report": json.loads(texts[0]), "uid": handle.uid,
                          "isolation": isolation.as_dict() if isolation else None,
                          "control": open(secret).read()}))
    finally:
        await sup.stop_all()

asyncio.run(main())
"""


def unprivileged_python() -> str | None:
    """A Python of this version that uid 65534 can run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # It must also be able to stat its own binary and read its standard library (a binary under a
    # closed directory may still start, and then find the wrong library).
    check = "import os, sys; os.stat(os.path.realpath(sys.executable)); open(os.__file__).close(); " \
            "print(sys.version_info[:2])"
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", sys.executable):
        if not os.path.exists(candidate):
            continue
        ok = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", candidate,
                             "-c", check], capture_output=True, text=True)
        if ok.returncode == 0 and ok.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    return None


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("becoming uid 65534 needs root and setpriv")
    path = Path(tempfile.mkdtemp(prefix="mpu-", dir="/tmp"))
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_an_unprivileged_server_still_sandboxes_its_workers(nobody_dir: Path) -> None:
    python = unprivileged_python()
    if python is None:
        pytest.skip("no Python of this version that uid 65534 can run")
    home = nobody_dir / "home"  # stands for MODELPORT_HOME: the server's user may read it, the worker may not
    home.mkdir(mode=0o700)
    secret = home / "modelport.db"
    secret.write_text("rows")
    secret.chmod(0o600)
    for path in (home, secret):
        os.chown(path, NOBODY, NOBODY)
    site_packages = sysconfig.get_paths()["purelib"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(nobody_dir), "PYTHONPATH": f"{ROOT}{os.pathsep}{site_packages}"}
    result = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
                             "-c", SCRIPT, str(nobody_dir / "run"), str(secret)],
                            env=env, cwd=str(nobody_dir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    report = out["report"]
    assert out["control"] == "rows"  # the server's own user reads it...
    assert report[f"read {secret}"] == "blocked: ENOENT"  # ...its worker does not even see it
    assert report[f"list {home}"] == report["list /run"] == "blocked: ENOENT"
    assert report["tcp 127.0.0.1:22"] == "blocked: ENETUNREACH"
    assert report["pids"] == [1]
    assert report["uid"] == NOBODY and report["capabilities"] == "0000000000000000"
    assert report["dumpable"] == 0 and report["core_limit"] == [0, 0]
    assert out["isolation"] == {"network": True, "files": True, "processes": True}
    assert out["uid"] is None  # no uid of its own without root: the user namespace maps only the server's
