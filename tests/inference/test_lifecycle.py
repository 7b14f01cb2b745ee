"""Deployment lifecycle on a real server: states, failures a person can act on, names, the
model rules, geographies, the two keys, workspace boundaries, and delete stopping the workers.

The bundled chat model runs on the `echo` runtime here (the lifecycle is plumbing), except
where loading is the point: a GGUF that passes the artifact scan but that llama.cpp cannot
load goes through the real llama.cpp runtime and must end `failed`, never hang.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.artifacts import write_gguf
from tests.support.inference import CHAT_MODEL, alive, chat, create_deployment, wait_state, workers
from tests.support.runtimes import SLOW_LOAD
from tests.support.server import Server, start_lean
from tests.support.tenants import import_tiny_gguf, make_tenant, ok, unique

SLOW_LOAD_MODEL = "slow-load-echo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("lifecycle") / "home",
                   {CHAT_MODEL: "echo", SLOW_LOAD_MODEL: SLOW_LOAD})
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def test_creating_until_the_model_answered_then_succeeded(server: Server, admin: httpx.Client, tmp_path: Path):
    import_tiny_gguf(admin, tmp_path, name=SLOW_LOAD_MODEL)  # its worker takes 3 s to load
    created = create_deployment(server, "slow", SLOW_LOAD_MODEL, wait=False, type="dedicated")
    key = created["keys"]["primary"]
    assert created["state"] == "creating" and created["state_reason"] is None
    seen_503 = 0
    while True:
        before = ok(admin.get("/api/v1/deployments/slow")).json()["state"]
        r = chat(server, key, None)
        after = ok(admin.get("/api/v1/deployments/slow")).json()["state"]
        if before == after == "creating":
            assert r.status_code == 503 and "being created" in r.json()["error"]["message"], r.text
            seen_503 += 1
        if after != "creating":
            break
    assert after == "succeeded"
    assert seen_503 >= 1  # the load takes 3 s: calls meanwhile were answered 503, not queued forever
    r = chat(server, key, None, "first words")  # the first call after `succeeded` is served
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "first words"
    shown = ok(admin.get("/api/v1/deployments/slow")).json()
    assert shown["egress"] in ("isolated", "not isolated") and shown["state_reason"] is None


def test_a_model_that_cannot_load_ends_failed_with_a_reason(server: Server, admin: httpx.Client, tmp_path: Path):
    # A structurally valid GGUF (the scan passes) whose tensors llama.cpp cannot build a model from.
    model = import_tiny_gguf(admin, tmp_path, name=unique("unloadable"))
    assert model["scan"]["status"] == "passed"
    created = create_deployment(server, "broken", model["name"], wait=False)
    final = wait_state(server, "broken")
    assert final["state"] == "failed"
    assert "llama.cpp cannot load" in final["state_reason"]
    r = chat(server, created["keys"]["primary"], None)
    assert r.status_code == 409 and "failed to start" in r.json()["error"]["message"]
    # the CLI says so too, with the reason, and a non-zero exit
    out = server.cli("deployments", "create", "broken-cli", "--model", model["name"], "--timeout", "240")
    assert out.returncode != 0 and "llama.cpp cannot load" in out.stderr + out.stdout


def test_names_are_unique_within_a_workspace(server: Server, admin: httpx.Client):
    create_deployment(server, "twice", CHAT_MODEL)
    r = admin.post("/api/v1/deployments", json={"name": "twice", "model": CHAT_MODEL})
    assert r.status_code == 409
    other = make_tenant(server, roles=("owner",))
    create_deployment(server, "twice", CHAT_MODEL, key=other.keys["owner"])  # another workspace: fine


def test_a_model_that_failed_its_scan_cannot_be_deployed(server: Server, admin: httpx.Client, tmp_path: Path):
    gguf = write_gguf(tmp_path / "evil.gguf", chat_template="{{ ''.__class__.__mro__ }}")
    name = unique("evil")
    up = ok(admin.post("/api/v1/model-uploads", json={
        "name": name, "format": "gguf", "files": [{"path": "model.gguf", "size": gguf.stat().st_size}]}), 201).json()
    ok(admin.put(f"/api/v1/model-uploads/{up['id']}/files/model.gguf", content=gguf.read_bytes()))
    model = ok(admin.post(f"/api/v1/model-uploads/{up['id']}/commit"), 201).json()
    assert model["scan"]["status"] == "failed"
    r = admin.post("/api/v1/deployments", json={"name": "evil", "model": name})
    assert r.status_code == 409 and "scan" in r.json()["error"]["message"]
    assert admin.get("/api/v1/deployments/evil").status_code == 404


def test_allowed_deployment_types_are_enforced(server: Server, admin: httpx.Client, tmp_path: Path):
    model = import_tiny_gguf(admin, tmp_path, name=unique("dedicated-only"), deployment_types=["dedicated"])
    r = admin.post("/api/v1/deployments", json={"name": "sl", "model": model["name"], "type": "serverless"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "type"
    r = admin.post("/api/v1/deployments", json={"name": "sl", "model": CHAT_MODEL, "type": "serverless",
                                                "instances": 2})
    assert r.status_code == 400  # serverless pools scale themselves


def test_unknown_geography_is_400(admin: httpx.Client):
    r = admin.post("/api/v1/deployments", json={"name": "geo", "model": CHAT_MODEL, "geography": "mars"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "geography" and "local" in r.text


def test_primary_and_secondary_keys_and_regeneration(server: Server, admin: httpx.Client):
    keys = create_deployment(server, "keyed", CHAT_MODEL)["keys"]
    assert keys["primary"].startswith("mpd_") and keys["secondary"].startswith("mpd_")
    assert chat(server, keys["primary"], "keyed").status_code == 200
    assert chat(server, keys["secondary"], None).status_code == 200
    new = ok(admin.post("/api/v1/deployments/keyed/keys", json={"which": "primary"})).json()
    assert new["secondary"] is None and new["primary"] not in (keys["primary"], keys["secondary"])
    assert chat(server, keys["primary"], None).status_code == 401
    assert chat(server, new["primary"], None).status_code == 200
    assert chat(server, keys["secondary"], None).status_code == 200
    new2 = ok(admin.post("/api/v1/deployments/keyed/keys", json={"which": "secondary"})).json()
    assert chat(server, keys["secondary"], None).status_code == 401
    assert chat(server, new2["secondary"], None).status_code == 200
    assert chat(server, new["primary"], None).status_code == 200


def test_deployment_keys_do_not_work_on_the_control_plane(server: Server):
    key = create_deployment(server, "noctl", CHAT_MODEL, wait=False)["keys"]["primary"]
    with server.client(key) as c:
        for path in ("/api/v1/deployments", "/api/v1/deployments/noctl", "/api/v1/me", "/api/v1/models"):
            assert c.get(path).status_code == 401, path
        assert c.post("/api/v1/deployments/noctl/keys", json={"which": "primary"}).status_code == 401


def test_another_workspace_gets_404(server: Server):
    create_deployment(server, "mine", CHAT_MODEL)
    other = make_tenant(server, roles=("owner",))
    assert chat(server, other.keys["owner"], "mine").status_code == 404
    with server.client(other.keys["owner"], headers={"api-key": other.keys["owner"]}) as c:
        assert c.get("/api/v1/deployments/mine").status_code == 404
        assert c.delete("/api/v1/deployments/mine").status_code == 404
        assert c.get("/deployments/mine/info").status_code == 404
    assert chat(server, server.admin_key, "mine").status_code == 200


def test_delete_stops_the_workers(server: Server, admin: httpx.Client):
    before = set(workers(server))
    keys = create_deployment(server, "doomed", CHAT_MODEL, type="dedicated", instances=2)["keys"]
    mine = {i: w for i, w in workers(server).items() if i not in before}
    assert len(mine) == 2
    assert chat(server, keys["primary"], None).status_code == 200
    assert admin.delete("/api/v1/deployments/doomed").status_code == 204
    for w in mine.values():  # delete returns once the workers were stopped
        assert not alive(w.health.pid) and not w.socket.parent.exists()
    assert set(workers(server)) == before
    assert chat(server, keys["primary"], None).status_code == 401
    assert admin.get("/api/v1/deployments/doomed").status_code == 404
    create_deployment(server, "doomed", CHAT_MODEL)  # the name is free again
