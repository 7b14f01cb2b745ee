"""Governance policies over HTTP on a real server: the starter policies on the routes they govern
(deny, allow, audit), scopes, bad Cedar, other workspaces, the next request after a save, edits
racing deploys, and compliance with --enforce.

Every deployment here runs on the echo runtime (a real worker process that loads no weights): the
bundled models are overridden to it, since these tests are about who may deploy what, not about
what the model says.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.policies import fill_workspace
from tests.support.server import ECHO_MODEL, Server, lean_server
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok, unique
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
STARTERS = ROOT / "policies"
SMOL = "SmolLM2-135M-Instruct"
PRIVATE_NET = {"public_access": False, "allowed_ranges": ["127.0.0.0/8"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(
        tmp_path_factory,
        MODELPORT_RUNTIME_OVERRIDES=json.dumps({ECHO_MODEL: "echo", SMOL: "echo", "all-MiniLM-L6-v2": "echo"}),
        MODELPORT_GEOGRAPHIES=json.dumps({"eu": ["eu1"], "asia": ["asia1"]}),
        MODELPORT_REGION_SLOTS=json.dumps({"eu1": 8, "asia1": 8}))


@pytest.fixture(scope="module")
def team(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tenant:
    t = make_tenant(server, unique("gov"))
    with server.client(t.keys["contributor"]) as c:
        import_tiny_gguf(c, tmp_path_factory.mktemp("m"), ECHO_MODEL)  # private: publisher = workspace, not curated
    return t


@pytest.fixture(scope="module")
def other(server: Server) -> Tenant:
    return make_tenant(server, unique("other"), roles=("owner",))


def starter(name: str, audit: bool = False, replace: dict[str, str] | None = None) -> str:
    text = (STARTERS / f"{name}.cedar").read_text()
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return text.replace(f'@id("{name}")', f'@id("{name}")\n@audit') if audit else text


@contextmanager
def platform_policy(server: Server, policy_id: str, cedar: str) -> Iterator[None]:
    with server.client() as admin:
        ok(admin.put(f"/api/v1/policies/{policy_id}", json={"cedar": cedar, "scope": "platform"}), (200, 201))
    try:
        yield
    finally:
        with server.client() as admin:
            ok(admin.delete(f"/api/v1/policies/{policy_id}", params={"scope": "platform"}), 204)


def deploy(c: httpx.Client, model: str = ECHO_MODEL, **body: object) -> httpx.Response:
    return c.post("/api/v1/deployments", json={"name": unique("d"), "model": model, **body})


def assert_denied(r: httpx.Response, *ids: str) -> None:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "policy_denied" and err["details"]["policies"] == list(ids), err
    for i in ids:
        assert i in err["message"]


def policy_events(server: Server, kind: str) -> list[dict]:
    with server.client() as admin:
        return ok(admin.get("/api/v1/audit", params={"all_workspaces": True, "action": kind, "limit": 1000})).json()


# -- the starter policies: a request each denies, one each allows, and audit mode ----------------------

def test_approved_publishers(server: Server, team: Tenant) -> None:
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "approved-publishers",
                                                                       starter("approved-publishers")):
        assert_denied(deploy(c), "approved-publishers")  # the team's own model: publisher = the workspace
        ok(deploy(c, SMOL), 201)
        # The same policy governs model actions: a download of the bundled embeddings model passes.
        r = c.post("/api/v1/policies/test", json={"action": "download_model", "model": ECHO_MODEL})
        assert ok(r).json()["denied_by"] == ["approved-publishers"]
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "approved-publishers",
                                                                       starter("approved-publishers", audit=True)):
        before = len(policy_events(server, "policy.audit"))
        ok(deploy(c), 201)
        events = policy_events(server, "policy.audit")
        assert len(events) == before + 1 and events[0]["detail"]["audited_by"] == ["approved-publishers"]


def test_approved_models_by_name_and_sha256(server: Server, team: Tenant) -> None:
    with server.client(team.keys["contributor"]) as c:
        sha = ok(c.get(f"/api/v1/models/{SMOL}")).json()["files"][0]["sha256"]
        text = starter("approved-models").replace('"REPLACE-WITH-THE-SHA256"}', f'"{sha}"}}', 1)
        with platform_policy(server, "approved-models", text):
            ok(deploy(c, SMOL), 201)
            assert_denied(deploy(c), "approved-models")
        wrong = starter("approved-models")  # the right name with a placeholder digest
        with platform_policy(server, "approved-models", wrong):
            assert_denied(deploy(c, SMOL), "approved-models")
        with platform_policy(server, "approved-models", starter("approved-models", audit=True)):
            ok(deploy(c, SMOL), 201)


def test_serverless_content_filter(server: Server, team: Tenant) -> None:
    """Test servers create deployments with the filter off: a serverless deploy is denied, a
    dedicated one allowed; switching an existing serverless filter off again is denied."""
    with server.client(team.keys["owner"]) as c:
        dep = ok(deploy(c), 201).json()["name"]  # before the policy: filter off
        with platform_policy(server, "serverless-content-filter", starter("serverless-content-filter")):
            assert_denied(deploy(c), "serverless-content-filter")
            ok(deploy(c, type="dedicated"), 201)
            ok(c.put(f"/api/v1/deployments/{dep}/content-filter", json={"enabled": True}))
            loose = {"enabled": True, "hate": {"prompt_threshold": "high", "completion_threshold": "medium"}}
            assert_denied(c.put(f"/api/v1/deployments/{dep}/content-filter", json=loose), "serverless-content-filter")
            assert_denied(c.put(f"/api/v1/deployments/{dep}/content-filter", json={"enabled": False}),
                          "serverless-content-filter")
            annotate = {"enabled": True, "violence": {"mode": "annotate"}}
            assert_denied(c.put(f"/api/v1/deployments/{dep}/content-filter", json=annotate),
                          "serverless-content-filter")
            strict = {"enabled": True, "self_harm": {"prompt_threshold": "low", "completion_threshold": "low"}}
            ok(c.put(f"/api/v1/deployments/{dep}/content-filter", json=strict))
            # Nothing half-applied: the refused changes left the last allowed filter.
            assert ok(c.get(f"/api/v1/deployments/{dep}/content-filter")).json()["self_harm"]["prompt_threshold"] \
                == "low"
        with platform_policy(server, "serverless-content-filter", starter("serverless-content-filter", audit=True)):
            ok(c.put(f"/api/v1/deployments/{dep}/content-filter", json={"enabled": False}))


def test_approved_filter_backends(server: Server, team: Tenant) -> None:
    """Review M1: a policy sees the filter's backend, its judge deployment and the jailbreak
    setting. Test servers create deployments with the filter off, so the deploys pass."""
    with server.client(team.keys["owner"]) as c:
        ok(c.post("/api/v1/deployments", json={"name": "safety-judge", "model": SMOL}), 201)
        rogue = ok(deploy(c, SMOL), 201).json()["name"]
        dep = ok(deploy(c), 201).json()["name"]
        url = f"/api/v1/deployments/{dep}/content-filter"
        judged = {"enabled": True, "backend": "llm-judge", "judge_deployment": rogue}
        with platform_policy(server, "approved-filter-backends", starter("approved-filter-backends")):
            assert_denied(c.put(url, json=judged), "approved-filter-backends")
            assert_denied(c.put(url, json={"enabled": True, "jailbreak": {"enabled": False}}),
                          "approved-filter-backends")
            assert ok(c.get(url)).json()["enabled"] is False  # nothing half-applied
            ok(c.put(url, json={**judged, "judge_deployment": "safety-judge"}))
            assert ok(c.get(url)).json()["judge_deployment"] == "safety-judge"
            r = ok(c.post("/api/v1/policies/test", json={
                "action": "change_content_filter", "deployment": dep,
                "content_filter": {"enabled": True, "jailbreak": {"enabled": False}}})).json()
            assert r["decision"] == "deny" and r["denied_by"] == ["approved-filter-backends"]
            assert r["facts"]["resource"]["content_filter"]["jailbreak"] == "off"
        with platform_policy(server, "approved-filter-backends", starter("approved-filter-backends", audit=True)):
            before = len(policy_events(server, "policy.audit"))
            ok(c.put(url, json=judged))
            assert ok(c.get(url)).json()["judge_deployment"] == rogue
            assert len(policy_events(server, "policy.audit")) == before + 1


def test_no_public_network(server: Server, team: Tenant) -> None:
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "no-public-network",
                                                                       starter("no-public-network")):
        assert_denied(deploy(c), "no-public-network")
        dep = ok(deploy(c, network=PRIVATE_NET), 201).json()["name"]
        r = c.patch(f"/api/v1/deployments/{dep}", json={"network": {"public_access": True}})
        assert_denied(r, "no-public-network")
        assert ok(c.get(f"/api/v1/deployments/{dep}")).json()["network"]["public_access"] is False
        ok(c.patch(f"/api/v1/deployments/{dep}", json={"network": {**PRIVATE_NET, "allowed_ranges": ["10.0.0.0/8"]}}))
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "no-public-network",
                                                                       starter("no-public-network", audit=True)):
        ok(deploy(c), 201)


def test_allowed_geographies(server: Server, team: Tenant) -> None:
    text = starter("allowed-geographies", replace={'["eu", "us"]': '["eu"]'})
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "allowed-geographies", text):
        assert_denied(deploy(c, geography="asia"), "allowed-geographies")
        ok(deploy(c, geography="eu"), 201)
    audit = starter("allowed-geographies", audit=True, replace={'["eu", "us"]': '["eu"]'})
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "allowed-geographies", audit):
        ok(deploy(c, geography="asia"), 201)


def test_curated_scanned_only(server: Server, team: Tenant) -> None:
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "curated-scanned-only",
                                                                       starter("curated-scanned-only")):
        assert_denied(deploy(c), "curated-scanned-only")  # imported: not curated
        ok(deploy(c, SMOL), 201)
        r = c.post("/api/v1/policies/test", json={"action": "create_finetune", "model": SMOL})
        assert ok(r).json()["decision"] == "allow"
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "curated-scanned-only",
                                                                       starter("curated-scanned-only", audit=True)):
        ok(deploy(c), 201)


def test_permissive_downloads(server: Server, team: Tenant, tmp_path: Path) -> None:
    with server.client(team.keys["contributor"]) as c:
        closed = import_tiny_gguf(c, tmp_path, license="LicenseRef-proprietary", downloadable=True)["name"]
        mit = import_tiny_gguf(c, tmp_path, license="MIT", downloadable=True)["name"]
        with platform_policy(server, "permissive-downloads", starter("permissive-downloads")):
            assert_denied(c.get(f"/api/v1/models/{closed}/download"), "permissive-downloads")
            r = c.get(f"/api/v1/models/{mit}/download")
            assert r.status_code == 200 and r.content[:4] == b"GGUF"
        with platform_policy(server, "permissive-downloads", starter("permissive-downloads", audit=True)):
            assert c.get(f"/api/v1/models/{closed}/download").status_code == 200


def test_imports_and_finetunes_are_governed(server: Server, team: Tenant, tmp_path: Path) -> None:
    """import_model is decided after the scan (the sha256 is known), before anything is registered."""
    deny_gpl = 'forbid(principal, action == Action::"import_model", resource) when { resource.license == "GPL-3.0" };'
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "no-gpl", deny_gpl):
        with pytest.raises(AssertionError, match="policy_denied"):
            import_tiny_gguf(c, tmp_path, name=(name := unique("gpl")), license="GPL-3.0")
        assert c.get(f"/api/v1/models/{name}").status_code == 404
        import_tiny_gguf(c, tmp_path, license="MIT")
    no_ft = 'forbid(principal, action == Action::"create_finetune", resource) when { resource.source == "bundled" };'
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "no-ft", no_ft):
        r = c.post("/api/v1/finetuning/jobs", json={"model": SMOL, "dataset": "does-not-matter"})
        assert_denied(r, "no-ft")


def test_an_audited_request_on_every_governed_route_goes_through(server: Server, team: Tenant,
                                                                 tmp_path: Path) -> None:
    """The audit row of a match is written in a session of its own. Were a route to hold the
    metadata store's write lock in its own transaction when it decides (SQLite), that write would
    wait for the request's own lock until the busy timeout and fail: every governed route here
    succeeds with one audit row each."""
    audit_all = "@audit\nforbid(principal, action, resource);"
    with server.client(team.keys["owner"]) as c, platform_policy(server, "audit-all", audit_all):
        before = len(policy_events(server, "policy.audit"))
        model = import_tiny_gguf(c, tmp_path, license="MIT", downloadable=True)["name"]  # import_model
        dep = ok(deploy(c, model, network=PRIVATE_NET), 201).json()["name"]  # deploy
        ok(c.patch(f"/api/v1/deployments/{dep}", json={"network": {**PRIVATE_NET, "allowed_ranges": ["10.0.0.0/8"]}}))
        ok(c.put(f"/api/v1/deployments/{dep}/content-filter", json={"enabled": True}))  # change_content_filter
        assert c.get(f"/api/v1/models/{model}/download").status_code == 200  # download_model
        events = policy_events(server, "policy.audit")  # newest first
        events = events[:len(events) - before]
        assert sorted(e["detail"]["action"] for e in events) == [
            "change_content_filter", "deploy", "download_model", "import_model", "update_deployment"]
        assert all(e["detail"]["audited_by"] == ["audit-all"] for e in events)


# -- scopes, roles, bad input ------------------------------------------------------------------------

def test_workspace_policies_restrict_further_and_cannot_loosen(server: Server, team: Tenant, other: Tenant) -> None:
    geo = 'forbid(principal, action == Action::"deploy", resource) unless { resource.geography == "eu" };'
    with server.client(team.keys["owner"]) as owner, platform_policy(server, "eu-only", geo):
        # A permit is refused outright: policies only take away.
        r = owner.put("/api/v1/policies/let-asia", json={"cedar": 'permit(principal, action, resource);'})
        assert r.status_code == 400 and "Only forbid" in r.json()["error"]["message"]
        # The platform id is not the workspace's to take, nor its policy the owner's to delete.
        r = owner.put("/api/v1/policies/eu-only", json={"cedar": 'forbid(principal, action, resource) when {false};'})
        assert r.status_code == 409
        assert owner.delete("/api/v1/policies/eu-only", params={"scope": "platform"}).status_code == 403
        assert owner.delete("/api/v1/policies/eu-only").status_code == 404
        assert_denied(deploy(owner, geography="asia"), "eu-only")
        # A workspace policy adds a forbid in its workspace only.
        no_dedicated = 'forbid(principal, action == Action::"deploy", resource) when { resource.type == "dedicated" };'
        ok(owner.put("/api/v1/policies/no-dedicated", json={"cedar": no_dedicated}), 201)
        try:
            assert_denied(deploy(owner, geography="eu", type="dedicated"), "no-dedicated")
            assert_denied(deploy(owner, geography="asia", type="dedicated"), "eu-only", "no-dedicated")
            with server.client(other.keys["owner"]) as o:
                import_tiny_gguf(o, server.home.parent / "o", ECHO_MODEL)
                ok(deploy(o, geography="eu", type="dedicated"), 201)
                assert_denied(deploy(o, geography="asia"), "eu-only")
            ids = {p["id"]: p["scope"] for p in ok(owner.get("/api/v1/policies")).json()}
            assert ids == {"eu-only": "platform", "no-dedicated": "workspace"}
        finally:
            ok(owner.delete("/api/v1/policies/no-dedicated"), 204)


def test_other_workspaces_policies_are_not_found(server: Server, team: Tenant, other: Tenant) -> None:
    text = 'forbid(principal, action == Action::"deploy", resource) when { resource.instances > 4 };'
    with server.client(team.keys["owner"]) as owner:
        ok(owner.put("/api/v1/policies/team-secret", json={"cedar": text}), 201)
    try:
        with server.client(other.keys["owner"]) as o:
            assert o.get("/api/v1/policies/team-secret").status_code == 404
            assert o.delete("/api/v1/policies/team-secret").status_code == 404
            assert "team-secret" not in {p["id"] for p in ok(o.get("/api/v1/policies")).json()}
            # The same id in its own workspace is its own policy, and leaves team's alone.
            ok(o.put("/api/v1/policies/team-secret", json={"cedar": text}), 201)
            ok(o.delete("/api/v1/policies/team-secret"), 204)
        with server.client(team.keys["reader"]) as r:
            got = ok(r.get("/api/v1/policies/team-secret")).json()
            assert got["scope"] == "workspace" and got["workspace"] == team.name and got["effect"] == "deny"
            assert r.put("/api/v1/policies/x", json={"cedar": text}).status_code == 403
    finally:
        with server.client(team.keys["owner"]) as owner:
            ok(owner.delete("/api/v1/policies/team-secret"), 204)


@pytest.mark.parametrize(("cedar", "status", "says"), [
    ("forbid(principal, action, resource) when { resource.geography == ", 400, "not valid Cedar"),
    ('forbid(principal, action == Action::"deploy", resource) when { resource.geograpy == "eu" };', 400, "geograpy"),
    ('forbid(principal, action == Action::"deploy", resource) when { resource.instances == "two" };', 400,
     "does not match the schema"),
    ("forbid(principal, action, resource) when { " + "[" * 200 + "]" * 200 + ".isEmpty() };", 400, "nests"),
    ("x" * 20000, 422, "cedar"),
    ('forbid(principal, action, resource); forbid(principal, action, resource);', 400, "exactly one"),
])
def test_bad_cedar_is_refused_with_the_diagnostic(server: Server, team: Tenant, cedar: str, status: int,
                                                  says: str) -> None:
    with server.client(team.keys["owner"]) as owner:
        r = owner.put("/api/v1/policies/bad", json={"cedar": cedar})
        assert r.status_code == status, r.text
        assert says in r.json()["error"]["message"]
        assert "bad" not in {p["id"] for p in ok(owner.get("/api/v1/policies")).json()}
    assert server.proc.poll() is None  # hostile nesting did not take the server down


@pytest.mark.parametrize("policy_id", ["compliance", "schema", "test"])
def test_ids_that_name_a_route_are_refused(server: Server, team: Tenant, policy_id: str) -> None:
    """GET /api/v1/policies/schema is the schema, .../compliance the listing: a policy saved as
    'schema' could never be shown there. Refused with 400 naming the reserved ids."""
    text = 'forbid(principal, action == Action::"deploy", resource) when { false };'
    with server.client(team.keys["owner"]) as owner:
        r = owner.put(f"/api/v1/policies/{policy_id}", json={"cedar": text})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "reserved" in message and all(i in message for i in ("compliance", "schema", "test"))
        assert policy_id not in {p["id"] for p in ok(owner.get("/api/v1/policies")).json()}
        assert "entity User" in ok(owner.get("/api/v1/policies/schema")).text


def test_the_literal_route_segments_are_the_reserved_ids() -> None:
    """Any new literal route under /api/v1/policies/ must be reserved too."""
    from modelport.api.routes.policies import router
    from modelport.policies.compiler import RESERVED_IDS

    segments = {r.path.removeprefix("/api/v1/policies/").split("/")[0] for r in router.routes
                if r.path.startswith("/api/v1/policies/")}  # type: ignore[attr-defined]
    assert segments - {"{policy_id}"} == RESERVED_IDS


@pytest.mark.parametrize(("condition", "denied"), [
    ("resource.content_filter has foo", False),
    ("!(resource.content_filter has foo)", True),
    ("resource has foo || resource.model has bar", False),
    # Cedar evaluates this one (the prefilter does not model ip()), with the filter's fields it reads.
    ('!(resource.content_filter has foo) && ip("10.0.0.1").isLoopback() == false', True),
    ('resource.content_filter has foo && ip("10.0.0.1").isLoopback() == false', False),
])
def test_a_policy_testing_an_attribute_the_schema_lacks_decides(server: Server, team: Tenant, condition: str,
                                                                denied: bool) -> None:
    """Was a KeyError (500) where a decision built the filter record of the fields a policy
    reads. Saved (the schema allows `has` of any name), then decided, never a 500."""
    text = f'forbid(principal, action == Action::"deploy", resource) when {{ {condition} }};'
    with server.client(team.keys["owner"]) as owner:
        ok(owner.put("/api/v1/policies/has-foo", json={"cedar": text}), 201)
        try:
            r = deploy(owner, network=PRIVATE_NET)
            if denied:
                assert_denied(r, "has-foo")
            else:
                ok(r, 201)
            r = owner.post("/api/v1/policies/test", json={"action": "deploy", "model": ECHO_MODEL})
            assert ok(r).json()["denied_by"] == (["has-foo"] if denied else [])
            ok(owner.get("/api/v1/policies/compliance"))
        finally:
            ok(owner.delete("/api/v1/policies/has-foo"), 204)


def test_hostile_requests(server: Server, team: Tenant) -> None:
    text = 'forbid(principal, action, resource) when { false };'
    assert httpx.put(f"{server.url}/api/v1/policies/x", json={"cedar": text}).status_code == 401
    with server.client(team.keys["owner"]) as owner:
        assert owner.put("/api/v1/policies/Not%20An%20Id", json={"cedar": text}).status_code == 422
        assert owner.put("/api/v1/policies/x", json={"cedar": text, "extra": 1}).status_code == 422
        assert owner.put("/api/v1/policies/x", json={"cedar": text, "scope": "galaxy"}).status_code == 422
        r = owner.post("/api/v1/policies/test", json={"action": "deploy", "model": "no-such-model"})
        assert r.status_code == 404 and "no-such-model" not in r.text
        r = owner.post("/api/v1/policies/test", json={"action": "deploy", "model": ECHO_MODEL, "as_user": "nobody"})
        assert r.status_code == 404
    with server.client(team.keys["reader"]) as reader:
        r = reader.post("/api/v1/policies/test", json={"action": "deploy", "model": ECHO_MODEL,
                                                       "as_user": team.users["owner"]})
        assert r.status_code == 403


def test_a_scope_holds_at_most_200_policies(server: Server) -> None:
    """The 201st policy of a workspace is refused (409, saying what to do), nothing of it is saved
    or in force; replacing one of the 200 still works, and deleting one makes room again."""
    capped = make_tenant(server, unique("cap"), roles=("owner",))
    with server.client(capped.keys["owner"]) as owner:
        ids = fill_workspace(owner)
        deny_all = 'forbid(principal, action == Action::"deploy", resource);'
        r = owner.put("/api/v1/policies/one-too-many", json={"cedar": deny_all})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert "200 policies" in err["message"] and "delete" in err["message"]
        assert err["details"] == {"limit": "max_policies_per_scope", "current": 200, "max": 200}
        listed = [p["id"] for p in ok(owner.get("/api/v1/policies")).json() if p["scope"] == "workspace"]
        assert sorted(listed) == ids
        import_tiny_gguf(owner, server.home.parent / "cap", ECHO_MODEL)
        ok(deploy(owner, network=PRIVATE_NET), 201)  # the refused policy is not in force
        ok(owner.put(f"/api/v1/policies/{ids[0]}", json={"cedar": deny_all}), 200)  # a replacement is no new one
        assert_denied(deploy(owner), ids[0])
        ok(owner.delete(f"/api/v1/policies/{ids[1]}"), 204)
        ok(owner.put("/api/v1/policies/one-too-many", json={"cedar": deny_all}), 201)
        assert owner.put("/api/v1/policies/two-too-many", json={"cedar": deny_all}).status_code == 409


# -- in force at the next request; no half-updated set ------------------------------------------------

def test_the_next_request_after_a_save_or_delete_is_decided_by_it(server: Server, team: Tenant) -> None:
    text = 'forbid(principal, action == Action::"deploy", resource) when { resource.geography == "asia" };'
    with server.client(team.keys["owner"]) as owner:
        for _ in range(3):
            ok(owner.put("/api/v1/policies/no-asia", json={"cedar": text}), 201)
            assert_denied(deploy(owner, geography="asia"), "no-asia")
            ok(owner.delete("/api/v1/policies/no-asia"), 204)
            ok(deploy(owner, geography="asia"), 201)


def test_policy_edits_race_with_deploys(server: Server, team: Tenant) -> None:
    """Two versions of one policy both deny these deploys; a set with neither would allow one."""
    versions = ['forbid(principal, action == Action::"deploy", resource) when { resource.geography == "asia" };',
                'forbid(principal, action == Action::"deploy", resource) when { resource.instances == 1 };']
    with server.client(team.keys["owner"]) as owner:
        ok(owner.put("/api/v1/policies/flip", json={"cedar": versions[0]}), 201)
    stop = threading.Event()
    answers: list[tuple[int, list[str]]] = []

    def deployer() -> None:
        with server.client(team.keys["contributor"]) as c:
            while not stop.is_set():
                r = deploy(c, geography="asia")
                answers.append((r.status_code, r.json()["error"]["details"].get("policies", [])
                                if r.status_code != 201 else []))

    threads = [threading.Thread(target=deployer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with server.client(team.keys["owner"]) as owner:
            for i in range(30):
                ok(owner.put("/api/v1/policies/flip", json={"cedar": versions[i % 2]}))
    finally:
        stop.set()
        for t in threads:
            t.join()
        with server.client(team.keys["owner"]) as owner:
            ok(owner.delete("/api/v1/policies/flip"), 204)
    assert len(answers) > 10
    assert set(map(lambda a: (a[0], tuple(a[1])), answers)) == {(403, ("flip",))}


def test_denials_are_audited_with_ids_never_content(server: Server, team: Tenant) -> None:
    canary = "canary-" + secrets.token_hex(6)
    with server.client(team.keys["contributor"]) as c, platform_policy(server, "no-public-network",
                                                                       starter("no-public-network")):
        assert_denied(c.post("/api/v1/deployments", json={"name": canary, "model": ECHO_MODEL}), "no-public-network")
    with server.client(team.keys["owner"]) as owner:
        events = ok(owner.get("/api/v1/audit", params={"action": "policy.deny", "limit": 1000})).json()
    mine = [e for e in events if e["detail"]["denied_by"] == ["no-public-network"]]
    assert mine and mine[0]["actor_user_id"] == team.user_ids["contributor"] and mine[0]["outcome"] == "denied"
    assert canary not in json.dumps(events) and canary not in server.logs()


# -- compliance -------------------------------------------------------------------------------------

def call(server: Server, dep: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {dep['keys']['primary']}"},
                      json={"model": dep["name"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def test_compliance_lists_then_enforce_suspends_and_resumes(server: Server, team: Tenant) -> None:
    with server.client(team.keys["owner"]) as owner:
        public = ok(deploy(owner), 201).json()
        private = ok(deploy(owner, network=PRIVATE_NET), 201).json()
        wait_until(lambda: owner.get(f"/api/v1/deployments/{public['name']}").json()["state"] == "succeeded", 120,
                   0.2, "the deployment to start")
        assert call(server, public).status_code == 200
        with platform_policy(server, "no-public-network", starter("no-public-network")):
            report = ok(owner.get("/api/v1/policies/compliance")).json()
            flagged = {i["name"]: i for i in report["items"] if i["kind"] == "deployment"}
            assert public["name"] in flagged and private["name"] not in flagged
            assert flagged[public["name"]]["denied_by"] == ["no-public-network"]
            # Listing changes nothing.
            assert call(server, public).status_code == 200
            assert owner.get(f"/api/v1/deployments/{public['name']}").json()["state"] == "succeeded"
            with server.client(team.keys["contributor"]) as c:
                assert c.post("/api/v1/policies/compliance/enforce").status_code == 403
            done = ok(owner.post("/api/v1/policies/compliance/enforce")).json()
            assert public["id"] in done["suspended"] and private["id"] not in done["suspended"]
            r = call(server, public)
            assert r.status_code == 503 and "no-public-network" in r.text
            shown = owner.get(f"/api/v1/deployments/{public['name']}").json()
            assert shown["state"] == "suspended" and "no-public-network" in shown["state_reason"]
            assert call(server, private).status_code == 200
            again = ok(owner.post("/api/v1/policies/compliance/enforce")).json()
            assert again["suspended"] == [] and again["resumed"] == []  # still violating: stays suspended
        done = ok(owner.post("/api/v1/policies/compliance/enforce")).json()
        assert public["id"] in done["resumed"]
        wait_until(lambda: call(server, public).status_code == 200, 120, 0.3, "the deployment to serve again")
        events = ok(owner.get("/api/v1/audit", params={"action": "policy.enforce"})).json()
        assert events and public["id"] in events[-1]["detail"]["suspended"]
