"""Tenant isolation: every control-plane route that names a resource, tried from another workspace.

Workspace `victim` holds one of everything (a member, API keys, a private downloadable model,
an upload with its file received, a deployment). The owner of workspace `intruder` (not a
platform admin) tries every route with a path parameter on those resources, by name and by id,
and the answer must be exactly the answer for an id that does not exist: same status, same
code, same field, same message once the id itself is taken out. Routes come from the OpenAPI
document; one without a row here fails the first test. Platform-only routes answer 403 to a
non-admin whether or not the resource exists, which tells nothing either.

Afterwards the victim's resources are checked to be untouched.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import pg
from tests.support.server import ECHO_MODEL, Server, lean_server
from tests.support.tenants import (
    Tenant,
    begin_upload,
    import_tiny_gguf,
    make_tenant,
    ok,
    path_param_routes,
    put_file,
    tiny_gguf,
)


@dataclass
class Victim:
    tenant: Tenant
    model: str
    upload_id: str
    deployment: str
    deployment_id: str
    dataset: str
    dataset_id: str
    job_id: str
    gguf: Path
    offer_id: str = ""
    subscription_id: str = ""
    blocklists: tuple[str, str] = ("victim-words", "victim-phrases")
    # One policy per probing route, so that the intruder's PUT (which saves its own policy under
    # that id) cannot change what its GET or DELETE finds, whatever order they run in.
    policies: tuple[str, str, str] = ("victim-read", "victim-put", "victim-delete")


@dataclass
class World:
    server: Server
    victim: Victim
    intruder: Tenant


@dataclass
class Row:
    """How to call one route on a given ref; `foreign` gives the victim's refs, `missing` one unknown."""

    call: Callable[[str], tuple[str, str, dict]]
    foreign: Callable[[Victim], list[str]]
    missing: str
    expect: int = 404


GGUF_HEADERS = {"Content-Type": "application/octet-stream"}
VICTIM_POLICY = 'forbid(principal, action == Action::"deploy", resource) when { resource.instances > 15 };'
INTRUDER_POLICY = 'forbid(principal, action == Action::"subscribe", resource) when { resource.name == "none" };'


def _missing(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


ROWS: dict[tuple[str, str], Row] = {
    ("GET", "/api/v1/workspaces/{ref}"): Row(
        lambda ref: ("GET", f"/api/v1/workspaces/{ref}", {}),
        lambda v: [v.tenant.name, v.tenant.id], _missing("ws_")),
    ("DELETE", "/api/v1/workspaces/{ref}"): Row(
        lambda ref: ("DELETE", f"/api/v1/workspaces/{ref}", {}),
        lambda v: [v.tenant.name, v.tenant.id], _missing("ws_")),
    ("POST", "/api/v1/workspaces/{ref}/members"): Row(
        lambda ref: ("POST", f"/api/v1/workspaces/{ref}/members", {"json": {"user": "admin", "role": "owner"}}),
        lambda v: [v.tenant.name, v.tenant.id], _missing("ws_"), expect=403),
    ("PATCH", "/api/v1/members/{user}"): Row(
        lambda ref: ("PATCH", f"/api/v1/members/{ref}", {"json": {"role": "owner"}}),
        lambda v: [v.tenant.users["reader"], v.tenant.user_ids["reader"]], _missing("usr_")),
    ("DELETE", "/api/v1/members/{user}"): Row(
        lambda ref: ("DELETE", f"/api/v1/members/{ref}", {}),
        lambda v: [v.tenant.users["reader"], v.tenant.user_ids["reader"]], _missing("usr_")),
    ("PATCH", "/api/v1/users/{ref}"): Row(
        lambda ref: ("PATCH", f"/api/v1/users/{ref}", {"json": {"disabled": True}}),
        lambda v: [v.tenant.users["reader"], v.tenant.user_ids["reader"]], _missing("usr_"), expect=403),
    ("POST", "/api/v1/users/{ref}/apikeys"): Row(
        lambda ref: ("POST", f"/api/v1/users/{ref}/apikeys", {"json": {"workspace": "victim"}}),
        lambda v: [v.tenant.users["reader"], v.tenant.user_ids["reader"]], _missing("usr_"), expect=403),
    ("DELETE", "/api/v1/apikeys/{key_id}"): Row(
        lambda ref: ("DELETE", f"/api/v1/apikeys/{ref}", {}),
        lambda v: [v.tenant.key_ids["reader"], v.tenant.key_ids["owner"]], _missing("key_")),
    ("GET", "/api/v1/models/{name}"): Row(
        lambda ref: ("GET", f"/api/v1/models/{ref}", {}), lambda v: [v.model], _missing("model-")),
    ("PATCH", "/api/v1/models/{name}"): Row(
        lambda ref: ("PATCH", f"/api/v1/models/{ref}", {"json": {"deprecated": True}}),
        lambda v: [v.model], _missing("model-")),
    ("DELETE", "/api/v1/models/{name}"): Row(
        lambda ref: ("DELETE", f"/api/v1/models/{ref}", {}), lambda v: [v.model], _missing("model-")),
    ("POST", "/api/v1/models/{name}/deprecate"): Row(
        lambda ref: ("POST", f"/api/v1/models/{ref}/deprecate", {}), lambda v: [v.model], _missing("model-")),
    ("POST", "/api/v1/models/{name}/scan"): Row(
        lambda ref: ("POST", f"/api/v1/models/{ref}/scan", {}), lambda v: [v.model], _missing("model-")),
    ("GET", "/api/v1/models/{name}/download"): Row(
        lambda ref: ("GET", f"/api/v1/models/{ref}/download", {}), lambda v: [v.model], _missing("model-")),
    ("GET", "/api/v1/model-uploads/{upload_id}"): Row(
        lambda ref: ("GET", f"/api/v1/model-uploads/{ref}", {}), lambda v: [v.upload_id], _missing("upl_")),
    ("DELETE", "/api/v1/model-uploads/{upload_id}"): Row(
        lambda ref: ("DELETE", f"/api/v1/model-uploads/{ref}", {}), lambda v: [v.upload_id], _missing("upl_")),
    ("PUT", "/api/v1/model-uploads/{upload_id}/files/{path}"): Row(
        lambda ref: ("PUT", f"/api/v1/model-uploads/{ref}/files/model.gguf",
                     {"content": b"GGUF" + b"\0" * 60, "headers": GGUF_HEADERS}),
        lambda v: [v.upload_id], _missing("upl_")),
    ("POST", "/api/v1/model-uploads/{upload_id}/commit"): Row(
        lambda ref: ("POST", f"/api/v1/model-uploads/{ref}/commit", {}), lambda v: [v.upload_id], _missing("upl_")),
    ("GET", "/api/v1/deployments/{name}"): Row(
        lambda ref: ("GET", f"/api/v1/deployments/{ref}", {}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("PATCH", "/api/v1/deployments/{name}"): Row(
        lambda ref: ("PATCH", f"/api/v1/deployments/{ref}", {"json": {"network": {"public_access": False}}}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("DELETE", "/api/v1/deployments/{name}"): Row(
        lambda ref: ("DELETE", f"/api/v1/deployments/{ref}", {}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("POST", "/api/v1/deployments/{name}/keys"): Row(
        lambda ref: ("POST", f"/api/v1/deployments/{ref}/keys", {"json": {"which": "primary"}}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("GET", "/api/v1/deployments/{name}/usage"): Row(
        lambda ref: ("GET", f"/api/v1/deployments/{ref}/usage", {}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("GET", "/api/v1/datasets/{ref}"): Row(
        lambda ref: ("GET", f"/api/v1/datasets/{ref}", {}), lambda v: [v.dataset, v.dataset_id], _missing("ds_")),
    ("DELETE", "/api/v1/datasets/{ref}"): Row(
        lambda ref: ("DELETE", f"/api/v1/datasets/{ref}", {}), lambda v: [v.dataset, v.dataset_id], _missing("ds_")),
    ("GET", "/api/v1/finetuning/jobs/{job_id}"): Row(
        lambda ref: ("GET", f"/api/v1/finetuning/jobs/{ref}", {}), lambda v: [v.job_id], _missing("ftjob_")),
    ("POST", "/api/v1/finetuning/jobs/{job_id}/cancel"): Row(
        lambda ref: ("POST", f"/api/v1/finetuning/jobs/{ref}/cancel", {}), lambda v: [v.job_id],
        _missing("ftjob_")),
    ("GET", "/api/v1/deployments/{name}/content-filter"): Row(
        lambda ref: ("GET", f"/api/v1/deployments/{ref}/content-filter", {}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("PUT", "/api/v1/deployments/{name}/content-filter"): Row(
        lambda ref: ("PUT", f"/api/v1/deployments/{ref}/content-filter", {"json": {"enabled": True}}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    ("GET", "/api/v1/deployments/{name}/content-filter/counts"): Row(
        lambda ref: ("GET", f"/api/v1/deployments/{ref}/content-filter/counts", {}),
        lambda v: [v.deployment, v.deployment_id], _missing("dep_")),
    # Blocklist names are per workspace: a PUT of the victim's name makes the intruder's own list,
    # exactly as for a name that exists nowhere (the victim's list is checked untouched at the end).
    # The DELETE probes the victim's other list, which the intruder never made for itself.
    ("PUT", "/api/v1/safety/blocklists/{name}"): Row(
        lambda ref: ("PUT", f"/api/v1/safety/blocklists/{ref}", {"json": {"terms": ["intruded"]}}),
        lambda v: [v.blocklists[0]], _missing("bl-"), expect=200),
    ("DELETE", "/api/v1/safety/blocklists/{name}"): Row(
        lambda ref: ("DELETE", f"/api/v1/safety/blocklists/{ref}", {}),
        lambda v: [v.blocklists[1]], _missing("bl-")),
    # The victim has no fine-tuned model (that takes minutes of training): its private model's
    # name is the one to probe, and must answer as a name that exists nowhere.
    # Policy ids are per workspace, like blocklist names: a PUT of the victim's id saves the
    # intruder's own policy, as for an id that exists nowhere; GET and DELETE find nothing.
    ("GET", "/api/v1/policies/{policy_id}"): Row(
        lambda ref: ("GET", f"/api/v1/policies/{ref}", {}), lambda v: [v.policies[0]], _missing("pol-")),
    ("PUT", "/api/v1/policies/{policy_id}"): Row(
        lambda ref: ("PUT", f"/api/v1/policies/{ref}", {"json": {"cedar": INTRUDER_POLICY}}),
        lambda v: [v.policies[1]], _missing("pol-"), expect=201),
    ("DELETE", "/api/v1/policies/{policy_id}"): Row(
        lambda ref: ("DELETE", f"/api/v1/policies/{ref}", {}), lambda v: [v.policies[2]], _missing("pol-")),
    ("DELETE", "/api/v1/finetuning/models/{name}"): Row(
        lambda ref: ("DELETE", f"/api/v1/finetuning/models/{ref}", {"params": {"confirm": True}}),
        lambda v: [v.model], _missing("model-")),
    # Marketplace: the victim's subscription, by its id and by its offer's id, answers as a missing
    # one; a budget names a currency, so the intruder's own (absent) budget answers as for any code.
    ("GET", "/api/v1/marketplace/subscriptions/{ref}"): Row(
        lambda ref: ("GET", f"/api/v1/marketplace/subscriptions/{ref}", {}),
        lambda v: [v.subscription_id, v.offer_id], _missing("sub_")),
    ("DELETE", "/api/v1/marketplace/subscriptions/{ref}"): Row(
        lambda ref: ("DELETE", f"/api/v1/marketplace/subscriptions/{ref}", {}),
        lambda v: [v.subscription_id, v.offer_id], _missing("sub_")),
    ("GET", "/api/v1/budgets/{currency}"): Row(
        lambda ref: ("GET", f"/api/v1/budgets/{ref}", {}), lambda v: ["USD"], "XYZ"),
    ("PUT", "/api/v1/budgets/{currency}"): Row(
        lambda ref: ("PUT", f"/api/v1/budgets/{ref}", {"json": {"amount": "1"}}), lambda v: ["USD"], "XYZ",
        expect=200),
    # Offers are a catalog for every workspace (the active ones); their writes and the publishers'
    # routes are for platform admins and publisher keys only (403 to a workspace owner).
    ("GET", "/api/v1/marketplace/offers/{offer}"): Row(
        lambda ref: ("GET", f"/api/v1/marketplace/offers/{ref}", {}), lambda v: [], _missing("offer_")),
    ("GET", "/api/v1/marketplace/offers/{offer}/terms/{version}"): Row(
        lambda ref: ("GET", f"/api/v1/marketplace/offers/{ref}/terms/1", {}), lambda v: [], _missing("offer_")),
    ("PATCH", "/api/v1/marketplace/offers/{offer}"): Row(
        lambda ref: ("PATCH", f"/api/v1/marketplace/offers/{ref}", {"json": {"input_price": "9"}}),
        lambda v: [v.offer_id], _missing("offer_"), expect=403),
    ("POST", "/api/v1/marketplace/offers/{offer}/retire"): Row(
        lambda ref: ("POST", f"/api/v1/marketplace/offers/{ref}/retire", {}), lambda v: [v.offer_id],
        _missing("offer_"), expect=403),
    ("POST", "/api/v1/marketplace/offers/{offer}/terms"): Row(
        lambda ref: ("POST", f"/api/v1/marketplace/offers/{ref}/terms", {"json": {"version": "9", "text": "t"}}),
        lambda v: [v.offer_id], _missing("offer_"), expect=403),
    ("POST", "/api/v1/marketplace/offers/{offer}/terms/{version}/retire"): Row(
        lambda ref: ("POST", f"/api/v1/marketplace/offers/{ref}/terms/1/retire", {}), lambda v: [v.offer_id],
        _missing("offer_"), expect=403),
    ("GET", "/api/v1/publishers/{ref}"): Row(
        lambda ref: ("GET", f"/api/v1/publishers/{ref}", {}), lambda v: ["iso"], _missing("pub_"), expect=403),
    ("PATCH", "/api/v1/publishers/{ref}"): Row(
        lambda ref: ("PATCH", f"/api/v1/publishers/{ref}", {"json": {"display_name": "taken"}}), lambda v: ["iso"],
        _missing("pub_"), expect=403),
    ("DELETE", "/api/v1/publishers/{ref}"): Row(
        lambda ref: ("DELETE", f"/api/v1/publishers/{ref}", {}), lambda v: ["iso"], _missing("pub_"), expect=403),
    ("GET", "/api/v1/publishers/{ref}/apikeys"): Row(
        lambda ref: ("GET", f"/api/v1/publishers/{ref}/apikeys", {}), lambda v: ["iso"], _missing("pub_"),
        expect=403),
    ("DELETE", "/api/v1/publishers/{ref}/apikeys/{key_id}"): Row(
        lambda ref: ("DELETE", f"/api/v1/publishers/{ref}/apikeys/pkey_x", {}), lambda v: ["iso"], _missing("pub_"),
        expect=403),
    ("POST", "/api/v1/publishers/{ref}/users"): Row(
        lambda ref: ("POST", f"/api/v1/publishers/{ref}/users", {"json": {"user": "admin"}}), lambda v: ["iso"],
        _missing("pub_"), expect=403),
    ("POST", "/api/v1/publishers/{ref}/apikeys"): Row(
        lambda ref: ("POST", f"/api/v1/publishers/{ref}/apikeys", {"json": {"user": "admin"}}), lambda v: ["iso"],
        _missing("pub_"), expect=403),
}

DATASET = b'{"prompt": "2+2?", "completion": "4"}\n'



@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The whole module runs against a server on each metadata store."""
    if request.param == "sqlite":
        yield from lean_server(tmp_path_factory)
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    if admin_url is None:
        pytest.skip("PostgreSQL not available: set MODELPORT_TEST_DATABASE_URL or install the server binaries")
    url = pg.create_database(admin_url)
    try:
        yield from lean_server(tmp_path_factory, MODELPORT_DATABASE_URL=url)
    finally:
        pg.drop_database(admin_url, url)


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("models")
    t = make_tenant(server, "victim")
    with server.client(t.keys["contributor"]) as c:
        model = import_tiny_gguf(c, tmp, downloadable=True)["name"]
        import_tiny_gguf(c, tmp, ECHO_MODEL)
        gguf = tiny_gguf(tmp)
        up = begin_upload(c, gguf, "victim-pending")
        ok(put_file(c, up["id"], gguf))
        dep = ok(c.post("/api/v1/deployments", json={"name": "victim-dep", "model": ECHO_MODEL}), 201).json()
        ds = ok(c.post("/api/v1/datasets", params={"name": "victim-data"}, content=DATASET), 201).json()
        job = ok(c.post("/api/v1/finetuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": ds["id"]}),
                 201).json()
    victim = Victim(tenant=t, model=model, upload_id=up["id"], deployment=dep["name"], deployment_id=dep["id"],
                    dataset=ds["name"], dataset_id=ds["id"], job_id=job["id"], gguf=gguf)
    with server.client(t.keys["owner"]) as owner:
        for name in victim.blocklists:
            ok(owner.put(f"/api/v1/safety/blocklists/{name}", json={"terms": ["victim-term"]}))
        for name in victim.policies:
            ok(owner.put(f"/api/v1/policies/{name}", json={"cedar": VICTIM_POLICY}), 201)
    with server.client() as admin:  # the victim subscribes to an offer and sets a budget
        ok(admin.post("/api/v1/publishers", json={"name": "iso"}))
        sold = import_tiny_gguf(admin, tmp, scope="catalog", publisher="iso")["name"]
        offer = ok(admin.post("/api/v1/marketplace/offers", json={
            "model": sold, "currency": "USD", "input_price": "1", "output_price": "1",
            "terms": {"version": "1", "text": "t"}})).json()
    with server.client(t.keys["owner"]) as owner:
        sub = ok(owner.post("/api/v1/marketplace/subscriptions", json={
            "offer": offer["id"], "contact": {"name": "V", "email": "v@example.org"},
            "accept_terms_sha256": offer["terms"]["sha256"], "consent_to_share_contact": True})).json()
        ok(owner.put("/api/v1/budgets/USD", json={"amount": "10"}))
    victim.offer_id, victim.subscription_id = offer["id"], sub["id"]
    return World(server=server, victim=victim, intruder=make_tenant(server, "intruder", roles=("owner",)))


def _normalized(body: dict, ref: str) -> dict:
    if "error" not in body:  # a success in the intruder's own workspace: compare it without times
        return {k: v.replace(ref, "<ref>") if isinstance(v, str) else v for k, v in body.items()
                if k not in ("updated_at", "created_at")}
    err = dict(body["error"])
    err.pop("request_id")
    err["message"] = err["message"].replace(ref, "<ref>")
    return err


def test_every_route_with_a_path_parameter_has_a_row(server: Server) -> None:
    with server.client() as c:
        routes = path_param_routes(c.get("/openapi.json").json())
    assert routes - set(ROWS) == set(), "routes with a path parameter missing from the isolation test"
    assert set(ROWS) - routes == set(), "rows for routes that no longer exist"


@pytest.mark.parametrize("route", list(ROWS), ids=[f"{m} {p}" for m, p in ROWS])
def test_other_workspace_gets_the_answer_for_a_missing_id(world: World, route: tuple[str, str]) -> None:
    row = ROWS[route]
    with world.server.client(world.intruder.keys["owner"]) as intruder:
        method, url, kw = row.call(row.missing)
        missing = intruder.request(method, url, **kw)
        assert missing.status_code == row.expect, missing.text
        for ref in row.foreign(world.victim):
            method, url, kw = row.call(ref)
            foreign = intruder.request(method, url, **kw)
            assert foreign.status_code == row.expect, f"{method} {url}: {foreign.status_code} {foreign.text}"
            assert _normalized(foreign.json(), ref) == _normalized(missing.json(), row.missing)


def test_admin_workspace_header_and_audit_filter_tell_nothing(world: World) -> None:
    v = world.victim.tenant
    with world.server.client(world.intruder.keys["owner"]) as intruder:
        for path, params, headers in [("/api/v1/audit", {"workspace": "{ref}"}, {}),
                                      ("/api/v1/me", {}, {"X-Modelport-Workspace": "{ref}"})]:
            answers = []
            for ref in (v.name, "no-such-workspace"):
                r = intruder.get(path, params={k: x.format(ref=ref) for k, x in params.items()},
                                 headers={k: x.format(ref=ref) for k, x in headers.items()})
                answers.append((r.status_code, _normalized(r.json(), ref)))
            assert answers[0] == answers[1]
            assert answers[0][0] in (403, 404)


def test_lists_show_nothing_of_another_workspace(world: World) -> None:
    v = world.victim
    with world.server.client(world.intruder.keys["owner"]) as intruder:
        models = intruder.get("/api/v1/models", params={"limit": 200}).json()["data"]
        assert v.model not in {m["name"] for m in models} and ECHO_MODEL not in {m["name"] for m in models}
        assert {w["name"] for w in intruder.get("/api/v1/workspaces").json()} == {"intruder"}
        assert v.tenant.users["reader"] not in {m["user"] for m in intruder.get("/api/v1/members").json()}
        assert not set(v.tenant.key_ids.values()) & {k["id"] for k in intruder.get("/api/v1/apikeys").json()}
        assert v.deployment not in {d["name"] for d in intruder.get("/api/v1/deployments").json()}
        assert intruder.get("/api/v1/datasets").json() == []
        assert intruder.get("/api/v1/finetuning/jobs").json() == []
        assert intruder.get("/api/v1/models", params={"owner": "workspace"}).json()["data"] == []
        # The private name of another workspace is free to use here.
        r = intruder.post("/api/v1/model-uploads", json={"name": v.model, "format": "gguf",
                                                         "files": [{"path": "m.gguf", "size": 1}]})
        assert r.status_code == 201, r.text
        ok(intruder.delete(f"/api/v1/model-uploads/{r.json()['id']}"))


def test_victim_resources_are_untouched(world: World) -> None:
    """Runs last: nothing the intruder tried changed anything."""
    v = world.victim
    with world.server.client(v.tenant.keys["owner"]) as owner, \
            world.server.client(v.tenant.keys["reader"]) as reader:
        assert reader.get("/api/v1/me").status_code == 200  # its key was not revoked
        assert ok(owner.get(f"/api/v1/workspaces/{v.tenant.name}")).json()["id"] == v.tenant.id
        members = {m["user"]: m["role"] for m in ok(owner.get("/api/v1/members")).json()}
        assert members[v.tenant.users["reader"]] == "reader"
        model = ok(owner.get(f"/api/v1/models/{v.model}")).json()
        assert model["deprecated"] is False
        assert ok(owner.get(f"/api/v1/model-uploads/{v.upload_id}")).json()["received"] == ["model.gguf"]
        dep = ok(owner.get(f"/api/v1/deployments/{v.deployment}")).json()
        assert dep["network"]["public_access"] is True
        assert all(k["revoked_at"] is None for k in ok(owner.get("/api/v1/apikeys")).json())
        assert ok(owner.get(f"/api/v1/datasets/{v.dataset}")).json()["rows"] == 1
        assert ok(owner.get(f"/api/v1/finetuning/jobs/{v.job_id}")).json()["status"] == "queued"
        assert ok(owner.get(f"/api/v1/deployments/{v.deployment}/content-filter")).json()["enabled"] is False
        assert {b["name"]: b["terms"] for b in ok(owner.get("/api/v1/safety/blocklists")).json()} == {
            name: ["victim-term"] for name in v.blocklists}
        assert {p["id"] for p in ok(owner.get("/api/v1/policies")).json()} == set(v.policies)
        for name in v.policies:
            assert "resource.instances > 15" in ok(owner.get(f"/api/v1/policies/{name}")).json()["cedar"]
        # and the upload still commits with the victim's own bytes
        assert ok(owner.post(f"/api/v1/model-uploads/{v.upload_id}/commit"), 201).json()["name"] == "victim-pending"
