"""The audit log over HTTP and the CLI: who reads what, refused writes, and never a body."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support.cli import assert_clean_error, cli_json, table
from tests.support.server import Server, lean_server
from tests.support.tenants import Tenant, make_tenant, ok

CANARY = "audit-canary-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture(scope="module")
def tenants(server: Server) -> tuple[Tenant, Tenant]:
    return make_tenant(server, "audited"), make_tenant(server, "neighbour")


def test_owners_read_their_workspace_only(server: Server, tenants: tuple[Tenant, Tenant]) -> None:
    t, n = tenants
    with server.client(t.keys["owner"]) as owner:
        events = ok(owner.get("/api/v1/audit", params={"limit": 1000})).json()
        assert events and {e["workspace_id"] for e in events} == {t.id}
        actions = {e["action"] for e in events}
        assert {"workspace.create", "workspace.member.self_add", "workspace.member.add", "apikey.create",
                "workspace.member.remove"} <= actions
        self_add = next(e for e in events if e["action"] == "workspace.member.self_add")
        assert self_add["actor_user_id"] != t.user_ids["owner"]  # the platform admin, recorded as such
        # Newest first, and pages by before_id.
        ids = [e["id"] for e in events]
        assert ids == sorted(ids, reverse=True)
        page = ok(owner.get("/api/v1/audit", params={"limit": 2, "before_id": ids[1]})).json()
        assert [e["id"] for e in page] == ids[2:4]
        only = ok(owner.get("/api/v1/audit", params={"action": "apikey.create"})).json()
        assert only and {e["action"] for e in only} == {"apikey.create"}
        # Not the neighbour's, and not everyone's.
        r = owner.get("/api/v1/audit", params={"workspace": n.name})
        assert r.status_code == 404
        assert owner.get("/api/v1/audit", params={"all_workspaces": True}).status_code == 403
    rows = cli_json(server, "audit", "--limit", "1000", key=t.keys["owner"])
    assert {e["workspace_id"] for e in rows} == {t.id}


@pytest.mark.parametrize("role", ["reader", "contributor"])
def test_readers_and_contributors_cannot_read_it(server: Server, tenants: tuple[Tenant, Tenant], role: str) -> None:
    with server.client(tenants[0].keys[role]) as c:
        r = c.get("/api/v1/audit")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert_clean_error(server.cli("audit", key=tenants[0].keys[role]), 403, "audit.read")


def test_admin_reads_every_workspace(server: Server, tenants: tuple[Tenant, Tenant]) -> None:
    t, n = tenants
    everything = cli_json(server, "audit", "--all", "--limit", "1000")
    assert {t.id, n.id} <= {e["workspace_id"] for e in everything}
    assert "platform.bootstrap" in {e["action"] for e in everything}
    default_only = cli_json(server, "audit", "--limit", "1000")
    assert len({e["workspace_id"] for e in default_only}) == 1 and t.id not in {e["workspace_id"] for e in default_only}
    with server.client() as admin:
        theirs = ok(admin.get("/api/v1/audit", params={"workspace": n.name, "limit": 1000})).json()
        assert theirs and {e["workspace_id"] for e in theirs} == {n.id}
    headers, rows = table(server.cli("audit", "--all", "--limit", "5", check=True).stdout)
    assert headers == ["WHEN", "ACTION", "OUTCOME", "ACTOR", "RESOURCE", "WORKSPACE"] and len(rows) == 5


def test_refused_writes_are_recorded_as_denied(server: Server, tenants: tuple[Tenant, Tenant]) -> None:
    t, _ = tenants
    with server.client(t.keys["reader"]) as reader:
        r = reader.post("/api/v1/members", json={"user": "admin", "role": "owner"})
        assert r.status_code == 403
        forbidden_request = r.headers["x-request-id"]
        r = reader.delete(f"/api/v1/apikeys/{t.key_ids['owner']}")  # another member's key: hidden
        assert r.status_code == 404
        hidden_request = r.headers["x-request-id"]
    with server.client(t.keys["owner"]) as owner:
        r = owner.post("/api/v1/workspaces", json={"name": "not-allowed"})
        assert r.status_code == 403
        platform_request = r.headers["x-request-id"]
        r = owner.post("/api/v1/members", json={"user": "admin", "role": "emperor"})
        assert r.status_code == 422
        failed_request = r.headers["x-request-id"]
        events = {e["request_id"]: e for e in ok(owner.get("/api/v1/audit", params={"limit": 1000})).json()}
    expected = [(forbidden_request, "member.add", "denied", 403, t.user_ids["reader"]),
                (hidden_request, "apikey.revoke", "denied", 404, t.user_ids["reader"]),
                (platform_request, "workspace.create", "denied", 403, t.user_ids["owner"]),
                (failed_request, "member.add", "failed", 422, t.user_ids["owner"])]
    for request_id, action, outcome, status, actor in expected:
        e = events[request_id]
        assert (e["action"], e["outcome"], e["status_code"], e["actor_user_id"]) == (action, outcome, status, actor)
        assert e["workspace_id"] == t.id and e["detail"] == {}


def test_audit_never_holds_a_body(server: Server, tenants: tuple[Tenant, Tenant]) -> None:
    t, _ = tenants
    with server.client() as admin:
        ok(admin.post("/api/v1/workspaces", json={"name": "described", "description": CANARY}))
        ok(admin.post("/api/v1/users", json={"name": "emailed", "email": f"{CANARY}@example.org"}))
        assert admin.post("/api/v1/users", json={"name": CANARY.upper()}).status_code == 422
        assert admin.post("/api/v1/apikeys", json={"name": CANARY * 3}).status_code == 422
    with server.client(t.keys["reader"]) as reader:
        assert reader.post("/api/v1/members", json={"user": CANARY, "role": "owner"}).status_code == 403
    r = server.cli("audit", "--all", "--limit", "1000", "--json", check=True)
    assert "workspace.create" in r.stdout and "user.create" in r.stdout
    assert CANARY not in r.stdout and CANARY.upper() not in r.stdout
