"""Nothing a client sends ends up in the logs, the database or the data directory, and no key is
stored or printed in plaintext.

One real server with the default configuration gets many requests carrying a canary string in
bodies, names in paths, query strings, headers and malformed or unknown API keys, plus real
API keys that are created and used. After it stops, its stdout/stderr capture, its log file and
every file under MODELPORT_HOME (the SQLite database and its WAL, blobs, key files) are scanned
byte by byte. Controls prove that each scan sees what it should (the access log lines, the rows
that were stored), so an empty result means something.
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.artifacts import real_gguf, truncated_copy
from tests.support.server import Server, free_port, start_server
from tests.support.tenants import begin_upload, make_tenant, ok, put_file

pytestmark = pytest.mark.chat_model  # the default configuration deploys `chat` (SmolLM2)

CANARY = "privcanary" + secrets.token_hex(10)


@dataclass
class Run:
    server: Server
    created_keys: list[str]
    fake_keys: list[str]
    deployment_key: str


def _drive(server: Server, tmp: Path) -> tuple[list[str], list[str]]:
    c = CANARY
    lookup = server.admin_key.split("_")[1]
    fake_keys = [f"mpk_{secrets.token_hex(8)}_{c}{'A' * 40}", f"mpk_{lookup}_{c}{'B' * 40}", f"{c}-not-even-a-key"]
    created = []
    with server.client() as admin:
        team = make_tenant(server, "privacy-team")
        created += list(team.keys.values())
        created.append(ok(admin.post("/api/v1/apikeys", json={"name": "privacy"})).json()["key"])
        # bodies that are refused
        for method, url, body in [
            ("POST", "/api/v1/users", {"name": f"Bad {c}"}),
            ("POST", "/api/v1/users", {"name": "u1", "email": {"x": c}}),
            ("POST", "/api/v1/workspaces", {"name": f"{c}!", "description": c}),
            ("POST", "/api/v1/workspaces", {"name": "ws1", "owner": c}),
            ("POST", "/api/v1/apikeys", {"name": c * 5}),
            ("POST", "/api/v1/apikeys", {"user": c}),
            ("POST", "/api/v1/members", {"user": c, "role": "reader"}),
            ("POST", "/api/v1/members", {"user": "admin", "role": c}),
            ("PATCH", "/api/v1/models/no-such", {"card": c}),
            ("PATCH", "/api/v1/models/all-MiniLM-L6-v2", {"card": c, c: True}),
            ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf", "card": c,
                                               "files": [{"path": f"../{c}", "size": 1}]}),
            ("POST", "/api/v1/deployments", {"name": "d1", "model": c}),
            ("POST", "/api/v1/deployments", {"name": "d1", "model": "SmolLM2-135M-Instruct", "geography": c}),
            ("POST", "/v1/chat/completions", {"model": "no-such", "messages": [{"role": "user", "content": c}]}),
        ]:
            r = admin.request(method, url, json=body)
            assert 400 <= r.status_code < 500, (url, r.text)
        r = admin.post("/api/v1/users", content=b'{"name": "' + c.encode(),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        # names in paths and query strings
        for url in [f"/api/v1/models/{c}", f"/api/v1/workspaces/{c}", f"/api/v1/deployments/{c}",
                    f"/api/v1/models/{c}/download", f"/api/v1/model-uploads/upl_{c}"]:
            assert admin.get(url).status_code == 404
        assert admin.delete(f"/api/v1/members/{c}").status_code == 404
        assert admin.delete(f"/api/v1/apikeys/key_{c}").status_code == 404
        assert admin.get("/api/v1/models", params={"q": c, "publisher": c, "license": c}).json()["data"] == []
        assert admin.get("/api/v1/models", params={"cursor": c}).status_code == 400
        assert admin.get("/api/v1/audit", params={"action": c}).status_code == 200
        assert admin.get("/api/v1/models", params={"version": c, "limit": c}).status_code == 422
        # headers
        assert admin.get("/api/v1/me", headers={"X-Canary": c, "User-Agent": c, "Referer": c}).status_code == 200
        assert admin.get("/api/v1/me", headers={"X-Modelport-Workspace": c}).status_code == 404
        # an upload whose bytes carry the canary, refused at commit: the bytes are discarded
        bad = truncated_copy(real_gguf(), tmp / "bad.gguf", 4096)
        bad.write_bytes(bad.read_bytes()[:2048] + c.encode() * 8 + bad.read_bytes()[2048 + 8 * len(c):])
        up = begin_upload(admin, bad, "privacy-bad-upload")
        ok(put_file(admin, up["id"], bad))
        assert admin.post(f"/api/v1/model-uploads/{up['id']}/commit").status_code == 422
        up = begin_upload(admin, bad, "privacy-aborted")
        ok(put_file(admin, up["id"], bad))
        ok(admin.delete(f"/api/v1/model-uploads/{up['id']}"))
        # a stored row, for the control of the database scan
        ok(admin.post("/api/v1/users", json={"name": "privacy-control-user"}))
    for key in fake_keys:
        for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": f"Basic {key}"}):
            with server.client("", headers=headers) as anon:
                assert anon.get("/api/v1/me").status_code == 401
    for key in created:  # real keys, used
        with server.client(key) as k:
            assert k.get("/api/v1/me").status_code == 200
            assert k.get(f"/api/v1/models/{c}").status_code == 404
    r = server.cli("models", "show", c)
    assert r.returncode == 1
    return created, fake_keys


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A server with the default configuration, driven and then stopped, so that all is flushed."""
    home = tmp_path_factory.mktemp("privacy") / "home"
    server = start_server(home)
    try:
        created, fake = _drive(server, tmp_path_factory.mktemp("privacy-files"))
    finally:
        assert server.stop() == 0
    return Run(server, created, fake, (home / "chat.key").read_text().strip())


def _home_files(run: Run) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.server.home.rglob("*") if p.is_file()}


def _outputs(run: Run) -> dict[str, str]:
    return {"stdout/stderr": run.server.logs(), "log file": (run.server.home / "logs" / "server.log").read_text()}


def test_controls_the_scans_see_what_they_should(run: Run) -> None:
    out = _outputs(run)
    for text in out.values():
        assert '"route":"/api/v1/models/{name}"' in text and '"status":404' in text
        assert '"route":"/v1/chat/completions"' in text  # the data plane's routes are named too
        assert '"route":"<unmatched>"' not in text
    files = _home_files(run)
    assert any(b"privacy-control-user" in data for p, data in files.items() if p.name.startswith("modelport.db"))
    assert any(p.name == "admin.key" for p in files)


def test_no_canary_in_logs_or_data(run: Run) -> None:
    for name, text in _outputs(run).items():
        assert CANARY not in text, name
    hits = [str(p) for p, data in _home_files(run).items() if CANARY.encode() in data]
    assert hits == []


def test_no_plaintext_key_anywhere(run: Run) -> None:
    """API keys and deployment keys: only their digests are stored, and nothing prints them."""
    keys = {"admin": run.server.admin_key, "chat deployment": run.deployment_key}
    keys |= {f"created {i}": k for i, k in enumerate(run.created_keys)}
    keys |= {f"fake {i}": k for i, k in enumerate(run.fake_keys)}
    allowed = {run.server.admin_key: "admin.key", run.deployment_key: "chat.key"}
    files = _home_files(run)
    for label, key in keys.items():
        secret_part = key.split("_", 2)[-1]
        for name, text in _outputs(run).items():
            assert key not in text and secret_part not in text, (label, name)
        for path, data in files.items():
            if path.name == allowed.get(key):
                continue
            assert key.encode() not in data and secret_part.encode() not in data, (label, str(path))


def test_key_files_are_private_and_the_admin_key_is_not_printed(run: Run) -> None:
    home = run.server.home
    for name, key in (("admin.key", run.server.admin_key), ("chat.key", run.deployment_key)):
        path = home / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert path.read_text() == key + "\n"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    out = run.server.logs()
    # Output that is not a terminal gets the path, never the key.
    assert str(home / "admin.key") in out and "shown once" not in out


def test_admin_key_is_printed_once_on_a_terminal(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The other side of the rule: on a terminal the key is shown, once, and is the one stored in
    admin.key. A pseudo-terminal stands in for the operator's terminal."""
    home = tmp_path_factory.mktemp("tty") / "home"
    # The session's cache directory (the classifier's graph) is kept: never the user's ~/.cache.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_") or k == "MODELPORT_CACHE_DIR"}
    env.update({"MODELPORT_HOME": str(home), "MODELPORT_LOAD_BUNDLED_MODELS": "false",
                "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "COLUMNS": "300",
                "PYTHONFAULTHANDLER": "1"})  # SIGABRT below prints every thread's stack to stderr
    primary, replica = pty.openpty()
    stderr_path = home.parent / "stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve", "--port", str(free_port())], env=env,
                                stdout=replica, stderr=stderr, stdin=subprocess.DEVNULL)
    os.close(replica)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while b"shown once" not in seen or not seen.endswith(b"\n"):
            if time.monotonic() > deadline or proc.poll() is not None:
                break
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                seen += os.read(primary, 4096)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)  # a hang fails here; a loaded machine is given time
        except subprocess.TimeoutExpired:  # fail with the server's stacks, and leave no server behind
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
            stacks = stderr_path.read_text(errors="replace")[-20000:]
            raise AssertionError(f"the server did not stop within 90 s of SIGINT; its stacks:\n{stacks}") from None
        finally:
            os.close(primary)
    key = (home / "admin.key").read_text().strip()
    assert b"shown once" in seen, seen
    assert seen.count(key.encode()) == 1
