"""The catalog's limits through the real server: hostile chat templates on import (SEC-M5),
file paths with control characters (refused at import), downloads of stored files whose bytes
changed (P13: refused by the server and by the CLI), the per-workspace cap on open uploads and
their expiry while the server runs (SEC-M10).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.catalog.test_scan_limits import NESTED_LOOP
from tests.support.artifacts import write_gguf
from tests.support.cli import assert_clean_error, cli_json
from tests.support.server import Server, lean_server, loopback_client, start_server
from tests.support.tenants import Tenant, begin_upload, make_tenant, ok, put_file, unique
from tests.support.waiting import wait_until

OPEN_UPLOADS = 48


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory, MODELPORT_MAX_OPEN_UPLOADS_PER_WORKSPACE=str(OPEN_UPLOADS))


@pytest.fixture(scope="module")
def team(server: Server) -> Tenant:
    return make_tenant(server)


def client(server: Server, key: str, timeout: float) -> httpx.Client:
    return loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def import_gguf(c: httpx.Client, gguf: Path, name: str, **fields: object) -> httpx.Response:
    up = begin_upload(c, gguf, name, **fields)
    ok(put_file(c, up["id"], gguf))
    return c.post(f"/api/v1/model-uploads/{up['id']}/commit")


# -- hostile templates (SEC-M5) ----------------------------------------------------------------


@pytest.mark.timeout(600)
def test_forty_hostile_imports_do_not_exhaust_the_request_threads(server: Server, team: Tenant, tmp_path: Path):
    """The issue's template, committed 40 times at once: each commit ends as a model that failed
    its scan (a chat_template.limits finding), and the control plane answers while they run."""
    gguf = write_gguf(tmp_path / "hostile.gguf", chat_template=NESTED_LOOP)
    key = team.keys["contributor"]
    with server.client(key) as c:
        uploads = []
        for i in range(40):
            up = begin_upload(c, gguf, f"hostile-{i}")
            ok(put_file(c, up["id"], gguf))
            uploads.append(up["id"])
    results: dict[str, httpx.Response] = {}

    def commit(upload_id: str) -> None:
        with client(server, key, 600) as c:
            results[upload_id] = c.post(f"/api/v1/model-uploads/{upload_id}/commit")

    threads = [threading.Thread(target=commit, args=(u,)) for u in uploads]
    for t in threads:
        t.start()
    try:
        with client(server, key, 30) as c:  # a hung thread pool would time these out
            for _ in range(3):
                assert c.get("/healthz").status_code == 200
                assert c.get("/api/v1/models", params={"owner": "workspace"}).status_code == 200
        assert len(results) < 40  # answered while commits were still running
    finally:
        for t in threads:
            t.join(600)
    assert len(results) == 40
    for r in results.values():
        assert r.status_code == 201, r.text
        m = r.json()
        assert m["scan"]["status"] == "failed"
        assert [(f["check"], f["kind"]) for f in m["scan"]["findings"]] == [("chat_template.limits", "security")]
    with server.client(key) as c:
        dep = c.post("/api/v1/deployments", json={"name": unique("d"), "model": "hostile-0"})
    assert dep.status_code == 409 and "artifact scan" in dep.json()["error"]["message"]


# -- file paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["model\r\nX-Injected: 1.gguf", "model\n.gguf", "a\tb.gguf", "model\x00.gguf",
                                  "evil\u202egguf.exe", "zero\u200bwidth.gguf", "line\u2028sep.gguf"])
def test_file_paths_with_control_characters_are_refused(server: Server, team: Tenant, path: str):
    with server.client(team.keys["contributor"]) as c:
        r = c.post("/api/v1/model-uploads", json={"name": unique("p"), "format": "gguf",
                                                  "files": [{"path": path, "size": 10}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == "files[0].path" and "control or format characters" in err["message"]
    assert path not in r.text


def test_upload_file_urls_with_control_characters_are_refused(server: Server, team: Tenant, tmp_path: Path):
    gguf = write_gguf(tmp_path / "m.gguf")
    with server.client(team.keys["contributor"]) as c:
        up = begin_upload(c, gguf, unique("u"))
        r = c.put(f"/api/v1/model-uploads/{up['id']}/files/model%09.gguf", content=b"x")
        assert r.status_code == 400 and "control or format characters" in r.json()["error"]["message"]
        r = c.put(f"/api/v1/model-uploads/{up['id']}/files/model%0d%0a.gguf", content=b"x")
        assert r.status_code in (400, 404)  # a line break does not even match the route
        assert ok(c.get(f"/api/v1/model-uploads/{up['id']}")).json()["received"] == []
        ok(c.delete(f"/api/v1/model-uploads/{up['id']}"), 204)


# -- P13: downloads of stored files whose bytes changed ----------------------------------------


def big_gguf(path: Path) -> Path:
    """A valid GGUF of about 3 MB: several of the server's 1 MiB download chunks."""
    return write_gguf(path, tensors={"token_embd.weight": np.arange(768 * 1024, dtype=np.float32).reshape(768, 1024),
                                     "output_norm.weight": np.ones(1024, dtype=np.float32)})


def stored(server: Server, model: dict) -> Path:
    return server.model_files / "models" / model["id"] / model["files"][0]["path"]


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_file_is_never_served_whole(server: Server, team: Tenant, tmp_path: Path):
    """The server verifies while it sends: everything but the last chunk goes out, then the
    connection is cut; the client never holds a complete file with the wrong hash."""
    src = big_gguf(tmp_path / "big.gguf")
    key = team.keys["contributor"]
    with server.client(key) as c:
        m = ok(import_gguf(c, src, unique("tamper"), downloadable=True), 201).json()
        r = c.get(f"/api/v1/models/{m['name']}/download")  # untouched: served and verified
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == m["files"][0]["sha256"]
    size = m["files"][0]["size"]
    assert size > 2 * 1024 * 1024
    flip_byte(stored(server, m), size // 2)
    received = bytearray()
    with server.client(key) as c, c.stream("GET", f"/api/v1/models/{m['name']}/download") as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) == size
        with pytest.raises(httpx.TransportError):  # cut before its end
            for chunk in r.iter_raw():
                received += chunk
    assert len(received) < size
    assert bytes(received) == stored(server, m).read_bytes()[:len(received)]
    assert "stored model file no longer matches the sha256" in server.logs()
    # the CLI refuses it too, and leaves nothing behind
    out = tmp_path / "dl.gguf"
    assert_clean_error(server.cli("models", "download", m["name"], "-o", str(out), key=key), None,
                       "was cut off before its end")
    assert not out.exists() and not out.with_name("dl.gguf.part").exists()


def test_a_tampered_small_or_resized_file_is_refused_before_its_first_byte(server: Server, team: Tenant,
                                                                             tmp_path: Path):
    key = team.keys["contributor"]
    with server.client(key) as c:
        small = ok(import_gguf(c, write_gguf(tmp_path / "s.gguf"), unique("small"), downloadable=True), 201).json()
        big = ok(import_gguf(c, big_gguf(tmp_path / "b.gguf"), unique("grown"), downloadable=True), 201).json()
    flip_byte(stored(server, small), small["files"][0]["size"] - 1)
    with stored(server, big).open("ab") as fh:
        fh.write(b"appended")  # the first `size` bytes still hash right: refused for its size
    with server.client(key) as c:
        for m in (small, big):
            r = c.get(f"/api/v1/models/{m['name']}/download")
            assert r.status_code == 500 and r.json()["error"]["code"] == "integrity_error", r.text[:300]
    out = tmp_path / "small.gguf"
    assert_clean_error(server.cli("models", "download", small["name"], "-o", str(out), key=key), 500, "")
    assert not out.exists()


def test_the_bundled_model_still_downloads_verified(server: Server, team: Tenant, tmp_path: Path):
    r = cli_json(server, "models", "download", "all-MiniLM-L6-v2", "-o", str(tmp_path / "minilm"),
                 key=team.keys["reader"])
    assert all(f["verified"] for f in r["files"])


# -- open uploads (SEC-M10) ----------------------------------------------------------------


def test_open_uploads_are_capped_per_workspace(server: Server, tmp_path: Path):
    one, other = make_tenant(server), make_tenant(server)
    gguf = write_gguf(tmp_path / "m.gguf")
    with server.client(one.keys["contributor"]) as c:
        opened = [begin_upload(c, gguf, unique("cap"))["id"] for _ in range(OPEN_UPLOADS)]
        r = c.post("/api/v1/model-uploads", json={"name": unique("cap"), "format": "gguf",
                                                  "files": [{"path": "m.gguf", "size": 10}]})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert "MODELPORT_MAX_OPEN_UPLOADS_PER_WORKSPACE" in err["message"]
        assert err["details"] == {"limit": "max_open_uploads_per_workspace", "current": OPEN_UPLOADS,
                                  "max": OPEN_UPLOADS}
        with server.client(other.keys["contributor"]) as o:  # another workspace has its own count
            begin_upload(o, gguf, unique("cap"))
        ok(c.delete(f"/api/v1/model-uploads/{opened[0]}"), 204)
        begin_upload(c, gguf, unique("cap"))  # one released: accepted again


def test_stale_uploads_expire_while_the_server_runs(tmp_path: Path):
    s = start_server(tmp_path / "home", env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
                                                   "MODELPORT_UPLOAD_TTL_SECONDS": "3",
                                                   "MODELPORT_UPLOAD_SWEEP_SECONDS": "0.5"})
    try:
        gguf = write_gguf(tmp_path / "m.gguf")
        with s.client() as c:
            stale = begin_upload(c, gguf, "stale")
            assert (s.model_files / "uploads" / stale["id"]).is_dir()
            # a file that streams in for longer than the TTL is not cut by the sweep
            streaming = begin_upload(c, gguf, "streaming")
            data = gguf.read_bytes()

            def slowly() -> Iterator[bytes]:
                for i in range(0, len(data), len(data) // 10 + 1):
                    time.sleep(0.5)
                    yield data[i:i + len(data) // 10 + 1]

            r = c.put(f"/api/v1/model-uploads/{streaming['id']}/files/model.gguf", content=slowly(),
                      headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
            assert r.status_code == 200, r.text
            wait_until(lambda: c.get(f"/api/v1/model-uploads/{stale['id']}").status_code == 404, 30, 0.2,
                     "the stale upload to expire")
            assert not (s.model_files / "uploads" / stale["id"]).exists()
            wait_until(lambda: c.get(f"/api/v1/model-uploads/{streaming['id']}").status_code == 404, 30, 0.2,
                     "the finished upload to expire after its TTL too")
        assert '"event":"uploads.expired"' in s.logs()
    finally:
        s.stop()
