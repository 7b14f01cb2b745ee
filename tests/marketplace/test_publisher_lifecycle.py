"""A publisher's life after its creation, over HTTP and the CLI, on a real server: its API keys
listed and revoked (at once, by platform admins only, only through their own publisher), renamed
(its models show the new name, its keys keep working, a restart keeps the renamed record of a
bundled model) and deleted (refused with 409 naming the offers and models that still refer to
it; otherwise its memberships and keys go with it). Every change is audited.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ECHO_MODEL, Server, start_lean
from tests.support.tenants import import_tiny_gguf, make_tenant, ok, unique

BUNDLED_PUBLISHER = "HuggingFaceTB"  # the bundled SmolLM2's package names it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("pub-life") / "home", {ECHO_MODEL: "echo"})
    try:
        yield s
    finally:
        s.stop()


def _publisher_with_key(s: Server) -> tuple[str, str, str]:
    """A fresh publisher with one user holding one key: (publisher name, key id, secret)."""
    name, user = unique("pub"), unique("seller")
    with s.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": user}))
        ok(admin.post("/api/v1/publishers", json={"name": name}))
        ok(admin.post(f"/api/v1/publishers/{name}/users", json={"user": user}))
        k = ok(admin.post(f"/api/v1/publishers/{name}/apikeys", json={"user": user, "name": "main"})).json()
    return name, k["id"], k["key"]


def _audit(s: Server, action: str) -> list[dict]:
    with s.client() as admin:
        return ok(admin.get("/api/v1/audit", params={"all_workspaces": True, "action": action,
                                                     "limit": 200})).json()


def test_revoke_a_publisher_key_over_http(server: Server) -> None:
    name, key_id, secret = _publisher_with_key(server)
    other, _, other_secret = _publisher_with_key(server)
    tenant = make_tenant(server)
    with server.client(secret) as pub:
        ok(pub.get(f"/api/v1/publishers/{name}"))
    with server.client() as admin:
        (listed,) = ok(admin.get(f"/api/v1/publishers/{name}/apikeys")).json()
        assert listed["id"] == key_id and listed["revoked_at"] is None and "key" not in listed
        assert "digest" not in listed
        # a key is revoked only through its own publisher: another's answers as a missing one
        wrong = admin.delete(f"/api/v1/publishers/{other}/apikeys/{key_id}")
        missing = admin.delete(f"/api/v1/publishers/{other}/apikeys/pkey_nosuchkey")
        assert wrong.status_code == missing.status_code == 404
        assert wrong.json()["error"]["message"] == missing.json()["error"]["message"]
    # neither the publisher's own key nor a workspace owner may revoke
    with server.client(other_secret) as pub:
        assert pub.delete(f"/api/v1/publishers/{name}/apikeys/{key_id}").status_code == 403
    with server.client(tenant.keys["owner"]) as owner:
        assert owner.delete(f"/api/v1/publishers/{name}/apikeys/{key_id}").status_code == 403
        assert owner.get(f"/api/v1/publishers/{name}/apikeys").status_code == 403
    with server.client() as admin:
        revoked = ok(admin.delete(f"/api/v1/publishers/{name}/apikeys/{key_id}")).json()
        assert revoked["revoked_at"] is not None
        again = ok(admin.delete(f"/api/v1/publishers/{name}/apikeys/{key_id}")).json()
        assert again["revoked_at"] == revoked["revoked_at"]  # revoking twice changes nothing
    with server.client(secret) as pub:  # at once: no cache lets it through
        r = pub.get(f"/api/v1/publishers/{name}")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    with server.client(other_secret) as pub:
        ok(pub.get(f"/api/v1/publishers/{other}"))  # the other publisher's key still works
    audited = [e for e in _audit(server, "publisher.apikey.revoke") if e["resource_id"] == key_id]
    assert len(audited) == 1  # the second revoke changed nothing and recorded nothing


def test_rename_keeps_keys_and_models(server: Server, tmp_path: Path) -> None:
    name, _, secret = _publisher_with_key(server)
    taken, _, _ = _publisher_with_key(server)
    new = unique("renamed")
    with server.client() as admin:
        model = import_tiny_gguf(admin, tmp_path, scope="catalog", publisher=name)["name"]
        assert admin.patch(f"/api/v1/publishers/{name}", json={"name": taken}).status_code == 409
        bad = admin.patch(f"/api/v1/publishers/{name}", json={"name": "has space"})
        assert bad.status_code in (400, 422) and bad.json()["error"]["field"] == "name"
        assert admin.patch(f"/api/v1/publishers/{name}", json={"colour": "red"}).status_code in (400, 422)
        out = ok(admin.patch(f"/api/v1/publishers/{name}", json={"name": new, "display_name": "New Co"})).json()
        assert (out["name"], out["display_name"]) == (new, "New Co")
        assert admin.get(f"/api/v1/publishers/{name}").status_code == 404
        assert ok(admin.get(f"/api/v1/models/{model}")).json()["publisher"] == new
    with server.client(secret) as pub:  # the key keeps working, under the new name
        ok(pub.get(f"/api/v1/publishers/{new}"))
        assert pub.get(f"/api/v1/publishers/{name}").status_code == 404
    (event,) = [e for e in _audit(server, "publisher.update")
                if e["outcome"] == "success" and e["detail"].get("name", {}).get("to") == new]
    assert event["detail"]["name"]["from"] == name


def test_delete_is_refused_while_models_or_offers_refer_to_it(server: Server, tmp_path: Path) -> None:
    name, _, secret = _publisher_with_key(server)
    with server.client() as admin:
        model = import_tiny_gguf(admin, tmp_path, scope="catalog", publisher=name)["name"]
        refused = admin.delete(f"/api/v1/publishers/{name}")
        assert refused.status_code == 409
        err = refused.json()["error"]
        assert f"model {model}:" in err["message"] and err["details"]["offers"] == []
        offer = ok(admin.post("/api/v1/marketplace/offers", json={
            "model": model, "currency": "USD", "input_price": "1", "output_price": "1",
            "terms": {"version": "1", "text": "t"}})).json()
        ok(admin.post(f"/api/v1/marketplace/offers/{offer['id']}/retire"))
        refused = admin.delete(f"/api/v1/publishers/{name}")
        assert refused.status_code == 409  # a retired offer still carries billing history
        assert refused.json()["error"]["details"]["offers"] == [offer["id"]]
        assert ok(admin.get(f"/api/v1/publishers/{name}")).json()["users"]  # nothing was removed
    with server.client(secret) as pub:
        ok(pub.get(f"/api/v1/publishers/{name}"))


def test_delete_takes_memberships_and_keys_with_it(server: Server) -> None:
    name, _, secret = _publisher_with_key(server)
    tenant = make_tenant(server)
    with server.client(tenant.keys["owner"]) as owner:
        assert owner.delete(f"/api/v1/publishers/{name}").status_code == 403
    with server.client(secret) as pub:
        assert pub.delete(f"/api/v1/publishers/{name}").status_code == 403  # not even its own
    with server.client() as admin:
        (pid,) = [p["id"] for p in ok(admin.get("/api/v1/publishers")).json() if p["name"] == name]
        user = ok(admin.get(f"/api/v1/publishers/{name}")).json()["users"][0]
        assert ok(admin.delete(f"/api/v1/publishers/{name}"), 204).content == b""
        assert admin.get(f"/api/v1/publishers/{name}").status_code == 404
        assert admin.delete(f"/api/v1/publishers/{name}").status_code == 404
        assert user in {u["name"] for u in ok(admin.get("/api/v1/users")).json()}  # the user stays
    with server.client(secret) as pub:
        assert pub.get(f"/api/v1/publishers/{name}").status_code == 401
    (event,) = [e for e in _audit(server, "publisher.delete") if e["resource_id"] == pid]
    assert event["detail"] == {"name": name, "api_keys_deleted": 1}


def test_the_cli_lists_revokes_renames_and_deletes(server: Server) -> None:
    name, key_id, secret = _publisher_with_key(server)
    keys = json.loads(server.cli("apikeys", "list", "--publisher", name, "--json", check=True).stdout)
    assert [k["id"] for k in keys] == [key_id]
    assert key_id in server.cli("apikeys", "list", "--publisher", name, check=True).stdout
    r = server.cli("apikeys", "revoke", key_id)
    assert r.returncode != 0 and "--publisher" in r.stderr  # a publisher key needs its publisher named
    r = server.cli("apikeys", "revoke", key_id, "--publisher", name, check=True)
    assert f"Revoked publisher API key {key_id}" in r.stdout
    with server.client(secret) as pub:
        assert pub.get(f"/api/v1/publishers/{name}").status_code == 401
    r = server.cli("apikeys", "revoke", key_id, "--publisher", name, key=secret)
    assert r.returncode != 0
    new = unique("cli-renamed")
    r = server.cli("publishers", "rename", name, new, "--display-name", "CLI Co", check=True)
    assert new in r.stdout
    assert json.loads(server.cli("publishers", "show", new, "--json", check=True).stdout)["display_name"] == "CLI Co"
    r = server.cli("publishers", "delete", new)
    assert r.returncode != 0 and "--yes" in r.stderr
    assert "Deleted publisher" in server.cli("publishers", "delete", new, "--yes", check=True).stdout
    r = server.cli("publishers", "delete", BUNDLED_PUBLISHER, "--yes")
    assert r.returncode == 1 and "SmolLM2-135M-Instruct" in r.stderr  # the bundled model refers to it


def test_a_renamed_bundled_publisher_survives_a_restart(tmp_path: Path) -> None:
    """The bundled model's package names `HuggingFaceTB`; after an admin renamed that record, a
    restart keeps the model on the renamed record instead of making a second `HuggingFaceTB`."""
    s = start_lean(tmp_path / "home", {ECHO_MODEL: "echo"})
    try:
        with s.client() as admin:
            ok(admin.patch(f"/api/v1/publishers/{BUNDLED_PUBLISHER}", json={"name": "hf-renamed"}))
    finally:
        s.stop()
    s = start_lean(tmp_path / "home", {ECHO_MODEL: "echo"})
    try:
        with s.client() as admin:
            names = {p["name"] for p in ok(admin.get("/api/v1/publishers")).json()}
            assert "hf-renamed" in names and BUNDLED_PUBLISHER not in names
            assert ok(admin.get("/api/v1/models/SmolLM2-135M-Instruct")).json()["publisher"] == "hf-renamed"
    finally:
        s.stop()
