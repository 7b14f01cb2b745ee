"""`modelport policies ...` against a real server: every command, as a user sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import assert_clean_error, cli_json, table
from tests.support.policies import fill_workspace
from tests.support.server import ECHO_MODEL, Server, lean_server
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok, unique

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture(scope="module")
def team(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tenant:
    t = make_tenant(server, unique("cli"))
    with server.client(t.keys["contributor"]) as c:
        import_tiny_gguf(c, tmp_path_factory.mktemp("m"), ECHO_MODEL)
    return t


def test_put_list_show_delete(server: Server, team: Tenant) -> None:
    owner = team.keys["owner"]
    starter = ROOT / "policies" / "no-public-network.cedar"
    r = server.cli("policies", "put", "no-public-network", "--file", str(starter), key=owner, check=True)
    assert "Saved workspace policy no-public-network (deny); in force now." in r.stdout
    headers, rows = table(server.cli("policies", "list", key=owner, check=True).stdout)
    assert headers[:3] == ["ID", "SCOPE", "EFFECT"]
    assert ["no-public-network", "workspace", "deny"] == rows[0][:3]
    shown = server.cli("policies", "show", "no-public-network", key=owner, check=True).stdout
    assert "resource.public_network_access" in shown and "workspace" in shown
    as_json = cli_json(server, "policies", "show", "no-public-network", key=owner)
    assert as_json["actions"] == ["deploy", "update_deployment"]  # type: ignore[index]
    # Without --yes it asks, and "n" keeps the policy.
    r = server.cli("policies", "delete", "no-public-network", key=owner, input="n\n")
    assert r.returncode == 1
    assert [p["id"] for p in cli_json(server, "policies", "list", key=owner)] == ["no-public-network"]  # type: ignore
    r = server.cli("policies", "delete", "no-public-network", "--yes", key=owner, check=True)
    assert "Deleted workspace policy no-public-network." in r.stdout
    assert cli_json(server, "policies", "list", key=owner) == []


def test_refusals_are_one_clean_line(server: Server, team: Tenant, tmp_path: Path) -> None:
    permit = tmp_path / "permit.cedar"
    permit.write_text("permit(principal, action, resource);")
    assert_clean_error(server.cli("policies", "put", "p", "--file", str(permit), key=team.keys["owner"]), 400,
                       "Only forbid policies")
    typo = tmp_path / "typo.cedar"
    typo.write_text('forbid(principal, action == Action::"deploy", resource) when { resource.geograpy == "x" };')
    assert_clean_error(server.cli("policies", "put", "p", "--file", str(typo), key=team.keys["owner"]), 400,
                       "geograpy")
    ok_file = ROOT / "policies" / "allowed-geographies.cedar"
    assert_clean_error(server.cli("policies", "put", "allowed-geographies", "--file", str(ok_file),
                                  key=team.keys["reader"]), 403, "policies.write")
    assert_clean_error(server.cli("policies", "put", "allowed-geographies", "--file", str(ok_file), "--scope",
                                  "platform", key=team.keys["owner"]), 403, "platform admin")
    assert_clean_error(server.cli("policies", "show", "nope", key=team.keys["owner"]), 404, "not found")
    # An id that names a route under /api/v1/policies/ (compliance, schema, test) is refused.
    assert_clean_error(server.cli("policies", "put", "compliance", "--file", str(ok_file), key=team.keys["owner"]),
                       400, "reserved")


def test_test_answers_allow_or_deny_without_side_effects(server: Server, team: Tenant) -> None:
    owner = team.keys["owner"]
    geo = ROOT / "policies" / "allowed-geographies.cedar"
    server.cli("policies", "put", "allowed-geographies", "--file", str(geo), key=owner, check=True)
    with server.client(owner) as c:
        before = {d["id"] for d in ok(c.get("/api/v1/deployments")).json()}
        denials = ok(c.get("/api/v1/audit", params={"action": "policy.deny"})).json()
    try:
        r = server.cli("policies", "test", "--as", team.users["contributor"], "--action", "deploy", "--model",
                       ECHO_MODEL, "--type", "serverless", "--geography", "local", key=owner)
        assert r.returncode == 3 and "deny" in r.stdout and "denied by: allowed-geographies" in r.stdout
        out = cli_json(server, "policies", "test", "--action", "download_model", "--model", ECHO_MODEL, key=owner)
        assert out["decision"] == "allow" and out["facts"]["resource"]["type"] == "Model"  # type: ignore[index]
        r = server.cli("policies", "test", "--action", "deploy", "--model", ECHO_MODEL, "--json", key=owner)
        body = json.loads(r.stdout)
        assert r.returncode == 3 and body["denied_by"] == ["allowed-geographies"]
        assert body["facts"]["principal"]["role"] == "owner"
        assert body["facts"]["resource"]["geography"] == "local"
        # Nothing was deployed, nothing audited.
        with server.client(owner) as c:
            assert {d["id"] for d in ok(c.get("/api/v1/deployments")).json()} == before
            assert ok(c.get("/api/v1/audit", params={"action": "policy.deny"})).json() == denials
        assert_clean_error(server.cli("policies", "test", "--action", "launch", key=owner), None, "--action")
    finally:
        server.cli("policies", "delete", "allowed-geographies", "--yes", key=owner, check=True)


def test_compliance_and_enforce(server: Server, team: Tenant) -> None:
    owner = team.keys["owner"]
    with server.client(owner) as c:
        dep = ok(c.post("/api/v1/deployments", json={"name": unique("d"), "model": ECHO_MODEL}), 201).json()
    geo = ROOT / "policies" / "allowed-geographies.cedar"
    server.cli("policies", "put", "allowed-geographies", "--file", str(geo), key=owner, check=True)
    try:
        headers, rows = table(server.cli("policies", "compliance", key=owner, check=True).stdout)
        assert headers[:2] == ["KIND", "NAME"]
        row = next(r for r in rows if r[1] == dep["name"])
        assert row[0] == "deployment" and row[4] == "allowed-geographies"
        r = server.cli("policies", "compliance", "--enforce", key=owner, check=True)
        assert f"Suspended: {dep['id']}" in r.stdout
        report = cli_json(server, "policies", "compliance", key=owner)
        state = next(i for i in report["items"] if i["id"] == dep["id"])["state"]  # type: ignore[index]
        assert state == "suspended"
        assert_clean_error(server.cli("policies", "compliance", "--all", key=owner), 403, "platform admin")
        everywhere = cli_json(server, "policies", "compliance", "--all")
        assert dep["id"] in {i["id"] for i in everywhere["items"]}  # type: ignore[index]
    finally:
        server.cli("policies", "delete", "allowed-geographies", "--yes", key=owner, check=True)
    r = server.cli("policies", "compliance", "--enforce", key=owner, check=True)
    assert f"resumed: {dep['id']}" in r.stdout


def test_schema_is_printed(server: Server, team: Tenant) -> None:
    out = server.cli("policies", "schema", key=team.keys["reader"], check=True).stdout
    assert "entity Deployment" in out and "action deploy" in out


def test_the_201st_policy_is_refused_in_one_line(server: Server, tmp_path: Path) -> None:
    capped = make_tenant(server, unique("cap"), roles=("owner",))
    owner = capped.keys["owner"]
    with server.client(owner) as c:
        ids = fill_workspace(c)
    f = tmp_path / "more.cedar"
    f.write_text('forbid(principal, action == Action::"deploy", resource);')
    assert_clean_error(server.cli("policies", "put", "one-too-many", "--file", str(f), key=owner), 409,
                       "200 policies")
    assert sorted(p["id"] for p in cli_json(server, "policies", "list", key=owner)) == ids  # type: ignore[index]
    r = server.cli("policies", "put", ids[0], "--file", str(f), key=owner, check=True)  # replacing is allowed
    assert f"Saved workspace policy {ids[0]} (deny)" in r.stdout
