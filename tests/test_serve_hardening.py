"""`modelport serve` itself: what it writes is private (SEC-L7), it dumps no core (SEC-L3), it
refuses a run directory someone else prepared (SEC-H2), it says loudly when the escape hatch for
unisolated workers is on, and a removed setting stops it (SEC-H1); deployments show how their
workers are isolated, over REST and in the CLI.

One real server (lean: no default deployment, the bundled chat model on the instant `echo`
runtime), started with core dumps allowed by its parent so that the limit it ends with is its own.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.config import Settings
from tests.support.inference import CHAT_MODEL, create_deployment
from tests.support.models import SMOLLM2_GGUF
from tests.support.server import KEEP_ENV, ROOT, Server, lean_env, start_server
from tests.support.tenants import ok


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # inherited by the server
    try:
        s = start_server(tmp_path_factory.mktemp("hard") / "home",
                         env_extra=lean_env({CHAT_MODEL: "echo"}, MODELPORT_ALLOW_UNISOLATED_WORKERS="true"))
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    try:
        yield s
    finally:
        s.stop()


def test_the_server_dumps_no_core(server: Server) -> None:
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("core dumps are off for this whole machine: nothing to turn off")
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text().splitlines()
    (core,) = [line for line in limits if line.startswith("Max core file size")]
    assert core.split()[4:6] == ["0", "0"], core


def test_the_server_is_not_dumpable() -> None:
    """What `serve` calls first, in a process of its own (prctl answers only for the caller)."""
    code = ("from modelport.workers.isolation import harden_process, dumpable; import resource; "
            "assert dumpable() == 1; harden_process(); print(dumpable(), resource.getrlimit(resource.RLIMIT_CORE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "(0,", "0)"]
    main = (ROOT / "modelport" / "cli" / "main.py").read_text()
    assert main.index("harden_process()") < main.index("build_settings(None, **overrides)")


def test_everything_the_server_writes_is_private(server: Server, tmp_path: Path) -> None:
    """SEC-L7: a stat of every file under a fresh home (and the run directory) after a start, a
    deployment, an API key, a dataset upload and a model import. The one exception is the
    imported model's own files, which its workers (other uids) must read: 0644 inside 0700
    directories, so that no other user reaches them."""
    owner = {"Authorization": f"Bearer {server.admin_key}"}
    model = tmp_path / "m.gguf"
    shutil.copyfile(SMOLLM2_GGUF, model)
    imported = json.loads(server.cli("models", "import", str(model), "--name", "private-smol", "--license",
                                     "Apache-2.0", "--json", check=True).stdout)
    with server.client() as c:
        ok(c.post("/api/v1/apikeys", json={"name": "more"}), 201)
        rows = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                 {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
                        for i in range(3))
        ok(c.post("/api/v1/datasets", params={"name": "private"}, content=rows,
                  headers={**owner, "Content-Type": "application/jsonl"}), 201)
    create_deployment(server, "hardened")
    seen = []
    model_files = []
    for root in (server.home, Settings(home=server.home).run_dir):
        for path in [root, *root.rglob("*")]:
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode):
                continue  # a worker's socket, inside its 0700 directory
            seen.append(path)
            if imported["id"] in path.parts:
                model_files.append(path)
                assert stat.S_IMODE(st.st_mode) in (0o644, 0o755), path
                continue
            assert st.st_mode & 0o077 == 0, f"{path} has mode {stat.S_IMODE(st.st_mode):04o}"
    names = {p.name for p in seen}
    assert {"modelport.db", "modelport.db-wal", "server.log", "admin.key"} <= names
    assert any("blobs" in p.parts for p in seen) and any(p.name == "m.gguf" for p in model_files)
    assert all(p.parent.name != imported["id"] or os.stat(p.parent.parent).st_mode & 0o077 == 0
               for p in model_files)  # the directory above the model's is private


def test_deployments_show_how_their_workers_are_isolated(server: Server) -> None:
    d = create_deployment(server, "shown")
    assert d["isolation"] == {"network": True, "files": True, "processes": True} and d["egress"] == "isolated"
    shown = server.cli("deployments", "show", "shown", check=True).stdout
    assert "Isolation" in shown and "network, files, processes" in shown
    listed = server.cli("deployments", "list", check=True).stdout
    assert "ISOLATION" in listed and "EGRESS" not in listed


def test_the_escape_hatch_is_announced_at_every_start(server: Server) -> None:
    assert "MODELPORT_ALLOW_UNISOLATED_WORKERS=true" in server.logs()
    # ...and on this machine, which can build sandboxes, it changes nothing (see above).


def _serve(home: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_") or k in KEEP_ENV}
    return subprocess.run([sys.executable, "-m", "modelport", "serve"], env={**clean, "MODELPORT_HOME": str(home),
                          "MODELPORT_PORT": "1", **env}, capture_output=True, text=True, timeout=120, cwd=str(ROOT))


def test_a_removed_setting_and_the_hatch_in_production_stop_the_server(tmp_path: Path) -> None:
    r = _serve(tmp_path / "h", MODELPORT_REQUIRE_EGRESS_ISOLATION="true")
    assert r.returncode == 2
    assert "MODELPORT_REQUIRE_EGRESS_ISOLATION was removed" in r.stderr
    assert "MODELPORT_ALLOW_UNISOLATED_WORKERS" in r.stderr
    r = _serve(tmp_path / "h", MODELPORT_ENVIRONMENT="production", MODELPORT_DATABASE_URL="postgresql://x@127.0.0.1/x",
               MODELPORT_ALLOW_UNISOLATED_WORKERS="true")
    assert r.returncode == 2 and "refused when MODELPORT_ENVIRONMENT=production" in r.stderr


def test_the_server_refuses_a_run_directory_someone_else_prepared(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_dir = Settings(home=home).run_dir
    run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    run_dir.symlink_to(decoy)
    try:
        r = _serve(home)
    finally:
        run_dir.unlink()
    assert r.returncode == 2, r.stderr
    assert f"Cannot start: refusing {run_dir}: it is a symbolic link" in r.stderr
    assert os.stat(decoy).st_mode & 0o777 == 0o700
