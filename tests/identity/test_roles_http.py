"""The role table, tried over HTTP on a real server: each role on each write route.

The write routes are read from the app's own OpenAPI document, and the first test fails when
one of them has no row in `CASES`, so a new route cannot ship without its expectation.

Roles: `owner`, `contributor`, `reader` of the workspace `team`; `outsider`, the owner of another
workspace (not an admin); `admin`, the platform admin, who is not a member of `team`. A status
of None means the combination says nothing about the role table (for example an outsider
adding a member to its own workspace) and is not tried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.server import ECHO_MODEL, Server, lean_server
from tests.support.tenants import (
    Tenant,
    add_member,
    begin_upload,
    import_tiny_gguf,
    make_tenant,
    ok,
    put_file,
    tiny_gguf,
    unique,
    write_routes,
)

ROLE_NAMES = ("owner", "contributor", "reader", "outsider", "admin")


@dataclass
class World:
    server: Server
    team: Tenant
    outsider: Tenant
    tmp: Path
    dataset: str = ""  # a dataset of team, for fine-tuning jobs
    filtered_dep: str = ""  # a deployment of team, for its content-filter configuration

    def key(self, role: str) -> str:
        if role == "admin":
            return self.server.admin_key
        if role == "outsider":
            return self.outsider.keys["owner"]
        return self.team.keys[role]

    def client(self, role: str):  # type: ignore[no-untyped-def]
        return self.server.client(self.key(role))


@dataclass
class Req:
    method: str
    url: str
    kwargs: dict = field(default_factory=dict)
    key: str | None = None  # another key than the role's own (a fresh tenant's owner)


@dataclass
class Case:
    route: tuple[str, str]
    variant: str
    expect: dict[str, int | None]
    build: Callable[[World, str], Req]
    platform: bool = False  # the route needs the platform-admin flag


def _only_admin(status: int) -> dict[str, int | None]:
    return {"owner": 403, "contributor": 403, "reader": 403, "outsider": 403, "admin": status}


def _owner_only(status: int) -> dict[str, int | None]:
    return {"owner": status, "contributor": 403, "reader": 403, "outsider": 404, "admin": None}


def _contributor_up(status: int) -> dict[str, int | None]:
    return {"owner": status, "contributor": status, "reader": 403, "outsider": 404, "admin": None}


# -- request builders: each creates the target it needs, so a success never depends on order --

def _fresh_user(w: World) -> str:
    name = unique("u")
    with w.server.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": name}))
    return name


def _private_model(w: World) -> str:
    with w.client("contributor") as c:
        return import_tiny_gguf(c, w.tmp)["name"]


def _catalog_model(w: World) -> str:
    with w.client("admin") as c:
        return import_tiny_gguf(c, w.tmp, scope="catalog", publisher="tests")["name"]


def _team_upload(w: World, with_file: bool = False) -> str:
    gguf = tiny_gguf(w.tmp)
    with w.client("contributor") as c:
        up = begin_upload(c, gguf, unique("up"))
        if with_file:
            ok(put_file(c, up["id"], gguf))
    return up["id"]


def b_ws_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/workspaces", {"json": {"name": unique("new")}})


def b_ws_delete(w: World, role: str) -> Req:
    if role in ("owner", "admin"):  # a success deletes: use a workspace made for this try
        fresh = make_tenant(w.server, roles=("owner",))
        return Req("DELETE", f"/api/v1/workspaces/{fresh.name}", key=fresh.keys["owner"] if role == "owner" else None)
    return Req("DELETE", f"/api/v1/workspaces/{w.team.name}")


def b_ws_member_add_any(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/workspaces/{w.team.name}/members",
               {"json": {"user": _fresh_user(w), "role": "reader"}})


def b_member_add(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/members", {"json": {"user": _fresh_user(w), "role": "reader"}})


def b_member_update(w: World, role: str) -> Req:
    name, _, _ = add_member(w.server, w.team)
    return Req("PATCH", f"/api/v1/members/{name}", {"json": {"role": "contributor"}})


def b_member_remove(w: World, role: str) -> Req:
    name, _, _ = add_member(w.server, w.team)
    return Req("DELETE", f"/api/v1/members/{name}")


def b_user_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/users", {"json": {"name": unique("u")}})


def b_user_update(w: World, role: str) -> Req:
    return Req("PATCH", f"/api/v1/users/{_fresh_user(w)}", {"json": {"disabled": True}})


def b_key_create_own(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/apikeys", {"json": {"name": "mine"}})


def b_key_create_for_member(w: World, role: str) -> Req:
    name, _, _ = add_member(w.server, w.team)
    return Req("POST", "/api/v1/apikeys", {"json": {"name": "theirs", "user": name}})


def b_key_create_for_user(w: World, role: str) -> Req:
    name, _, _ = add_member(w.server, w.team)
    return Req("POST", f"/api/v1/users/{name}/apikeys", {"json": {"workspace": w.team.name, "name": "by-admin"}})


def b_key_revoke_own(w: World, role: str) -> Req:
    with w.client(role) as c:
        key_id = ok(c.post("/api/v1/apikeys", json={"name": "to-revoke"})).json()["id"]
    return Req("DELETE", f"/api/v1/apikeys/{key_id}")


def b_key_revoke_other(w: World, role: str) -> Req:
    _, _, secret = add_member(w.server, w.team)
    return Req("DELETE", f"/api/v1/apikeys/key_{secret.split('_')[1]}")


def b_model_update_private(w: World, role: str) -> Req:
    return Req("PATCH", f"/api/v1/models/{_private_model(w)}", {"json": {"card": "updated"}})


def b_model_update_catalog(w: World, role: str) -> Req:
    return Req("PATCH", "/api/v1/models/all-MiniLM-L6-v2", {"json": {"deprecated": False}})


def b_model_delete_private(w: World, role: str) -> Req:
    return Req("DELETE", f"/api/v1/models/{_private_model(w)}")


def b_model_delete_catalog(w: World, role: str) -> Req:
    return Req("DELETE", f"/api/v1/models/{_catalog_model(w)}")


def b_model_deprecate_private(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/models/{_private_model(w)}/deprecate")


def b_model_deprecate_catalog(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/models/{_catalog_model(w)}/deprecate")


def b_model_scan_private(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/models/{_private_model(w)}/scan")


def b_model_scan_catalog(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/models/{_catalog_model(w)}/scan")


# -- marketplace: publishers and offers (platform admin), subscriptions, budgets --------------

def _offer(w: World, versions: int = 1) -> dict:
    """A fresh offer of a fresh catalog-wide model of publisher `tests`, made by the admin."""
    model = _catalog_model(w)
    with w.client("admin") as c:
        offer = ok(c.post("/api/v1/marketplace/offers", json={
            "model": model, "currency": "USD", "input_price": "1", "output_price": "2",
            "terms": {"version": "1", "text": "terms"}})).json()
        for v in range(2, versions + 1):
            offer = ok(c.post(f"/api/v1/marketplace/offers/{offer['id']}/terms",
                              json={"version": str(v), "text": f"terms {v}"})).json()
    return offer


def _publisher_user(w: World) -> str:
    user = _fresh_user(w)
    with w.client("admin") as c:
        ok(c.post("/api/v1/publishers/tests/users", json={"user": user}))
    return user


def b_publisher_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/publishers", {"json": {"name": unique("pub")}})


def b_publisher_user_add(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/publishers/tests/users", {"json": {"user": _fresh_user(w)}})


def b_publisher_key(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/publishers/tests/apikeys", {"json": {"user": _publisher_user(w)}})


def _fresh_publisher(w: World, with_key: bool = False) -> tuple[str, str]:
    """A new publisher (no model refers to it) and, `with_key`, the id of a key of one of its users."""
    name = unique("pub")
    with w.client("admin") as c:
        ok(c.post("/api/v1/publishers", json={"name": name}))
        if not with_key:
            return name, ""
        user = _fresh_user(w)
        ok(c.post(f"/api/v1/publishers/{name}/users", json={"user": user}))
        return name, ok(c.post(f"/api/v1/publishers/{name}/apikeys", json={"user": user})).json()["id"]


def b_publisher_update(w: World, role: str) -> Req:
    return Req("PATCH", f"/api/v1/publishers/{_fresh_publisher(w)[0]}", {"json": {"name": unique("renamed")}})


def b_publisher_delete(w: World, role: str) -> Req:
    return Req("DELETE", f"/api/v1/publishers/{_fresh_publisher(w)[0]}")


def b_publisher_key_revoke(w: World, role: str) -> Req:
    name, key_id = _fresh_publisher(w, with_key=True)
    return Req("DELETE", f"/api/v1/publishers/{name}/apikeys/{key_id}")


def b_offer_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/marketplace/offers", {"json": {
        "model": _catalog_model(w), "currency": "USD", "input_price": "1", "output_price": "2",
        "terms": {"version": "1", "text": "terms"}}})


def b_offer_prices(w: World, role: str) -> Req:
    return Req("PATCH", f"/api/v1/marketplace/offers/{_offer(w)['id']}", {"json": {"input_price": "3"}})


def b_offer_retire(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/marketplace/offers/{_offer(w)['id']}/retire")


def b_offer_terms(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/marketplace/offers/{_offer(w)['id']}/terms", {"json": {"version": "2", "text": "t2"}})


def b_offer_terms_retire(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/marketplace/offers/{_offer(w, versions=2)['id']}/terms/1/retire")


def b_subscribe(w: World, role: str) -> Req:
    offer = _offer(w)
    return Req("POST", "/api/v1/marketplace/subscriptions", {"json": {
        "offer": offer["id"], "contact": {"name": "N", "email": "n@example.org"},
        "accept_terms_sha256": offer["terms"]["sha256"], "consent_to_share_contact": True}})


def b_unsubscribe(w: World, role: str) -> Req:
    offer = _offer(w)
    with w.client("owner") as c:
        ok(c.post("/api/v1/marketplace/subscriptions", json={
            "offer": offer["id"], "contact": {"name": "N", "email": "n@example.org"},
            "accept_terms_sha256": offer["terms"]["sha256"], "consent_to_share_contact": True}))
    return Req("DELETE", f"/api/v1/marketplace/subscriptions/{offer['id']}")


def b_budget_put(w: World, role: str) -> Req:
    return Req("PUT", "/api/v1/budgets/USD", {"json": {"amount": "100"}})


def b_upload_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/model-uploads",
               {"json": {"name": unique("up"), "format": "gguf", "files": [{"path": "m.gguf", "size": 10}]}})


def b_upload_create_catalog(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/model-uploads",
               {"json": {"name": unique("up"), "format": "gguf", "scope": "catalog", "publisher": "tests",
                         "files": [{"path": "m.gguf", "size": 10}]}})


def b_upload_file(w: World, role: str) -> Req:
    upload_id = _team_upload(w)
    gguf = tiny_gguf(w.tmp)
    return Req("PUT", f"/api/v1/model-uploads/{upload_id}/files/model.gguf",
               {"content": gguf.read_bytes(), "headers": {"Content-Type": "application/octet-stream"}})


def b_upload_commit(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/model-uploads/{_team_upload(w, with_file=True)}/commit")


def b_upload_commit_catalog(w: World, role: str) -> Req:
    """A catalog-wide upload that the admin began in its workspace, committed by a member of it."""
    gguf = tiny_gguf(w.tmp)
    with w.server.client() as admin:
        up = begin_upload(admin, gguf, unique("cat"), scope="catalog", publisher="tests")
        ok(put_file(admin, up["id"], gguf))
        if role in ("admin", "outsider"):  # the outsider tries it from its own workspace
            return Req("POST", f"/api/v1/model-uploads/{up['id']}/commit")
        name = _fresh_user(w)
        ok(admin.post("/api/v1/members", json={"user": name, "role": role}))
        secret = ok(admin.post(f"/api/v1/users/{name}/apikeys", json={"workspace": "default"})).json()["key"]
    return Req("POST", f"/api/v1/model-uploads/{up['id']}/commit", key=secret)


def b_upload_abort(w: World, role: str) -> Req:
    return Req("DELETE", f"/api/v1/model-uploads/{_team_upload(w)}")


def _deployment(w: World) -> str:
    with w.client("contributor") as c:
        return ok(c.post("/api/v1/deployments", json={"name": unique("d"), "model": ECHO_MODEL}), 201).json()["name"]


def b_dep_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/deployments", {"json": {"name": unique("d"), "model": ECHO_MODEL}})


def b_dep_update(w: World, role: str) -> Req:
    return Req("PATCH", f"/api/v1/deployments/{_deployment(w)}", {"json": {"network": {"public_access": True}}})


def b_dep_delete(w: World, role: str) -> Req:
    return Req("DELETE", f"/api/v1/deployments/{_deployment(w)}")


def b_dep_keys(w: World, role: str) -> Req:
    return Req("POST", f"/api/v1/deployments/{_deployment(w)}/keys", {"json": {"which": "secondary"}})


DATASET = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def b_dataset_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/datasets", {"params": {"name": unique("ds")}, "content": DATASET,
                                            "headers": {"Content-Type": "application/jsonl"}})


def b_dataset_delete(w: World, role: str) -> Req:
    with w.client("contributor") as c:
        name = ok(c.post("/api/v1/datasets", params={"name": unique("ds")}, content=DATASET), 201).json()["name"]
    return Req("DELETE", f"/api/v1/datasets/{name}")


def _key_route(method: str, url: str, body: dict | None = None, setup: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """Workspace-key routes act on the caller's own workspace: an owner's success changes that
    workspace's keys, so the owner tries them in a workspace of its own made for the try."""

    def build(w: World, role: str) -> Req:
        key = None
        if role == "owner":
            fresh = make_tenant(w.server, roles=("owner",))
            key = fresh.keys["owner"]
            with w.server.client(key) as c:
                ok(c.get("/api/v1/workspace-key"))  # a workspace gets its key on first use
                for step in setup:
                    ok(c.post(step, json={}) if step == "/api/v1/cmk" else c.post(step))
        return Req(method, url, {"json": body} if body is not None else {}, key=key)

    return build


def _team_dataset(w: World) -> str:
    with w.client("contributor") as c:
        return ok(c.post("/api/v1/datasets", params={"name": unique("ds")}, content=DATASET), 201).json()["name"]


def b_finetune_create(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/finetuning/jobs",
               {"json": {"model": "SmolLM2-135M-Instruct", "dataset": w.dataset, "epochs": 1}})


def b_finetune_cancel(w: World, role: str) -> Req:
    with w.client("contributor") as c:
        job = ok(c.post("/api/v1/finetuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": w.dataset}),
                 201).json()
    return Req("POST", f"/api/v1/finetuning/jobs/{job['id']}/cancel")


def b_finetune_model_delete(w: World, role: str) -> Req:
    return Req("DELETE", f"/api/v1/finetuning/models/{unique('ft')}", {"params": {"confirm": True}})


def b_safety_analyze(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/safety/analyze", {"json": {"text": "What is a good name for a goldfish?"}})


def b_blocklist_put(w: World, role: str) -> Req:
    return Req("PUT", f"/api/v1/safety/blocklists/{unique('bl')}", {"json": {"terms": ["zork"], "patterns": []}})


def b_blocklist_delete(w: World, role: str) -> Req:
    name = unique("bl")
    with w.client("owner") as c:
        ok(c.put(f"/api/v1/safety/blocklists/{name}", json={"terms": ["zork"]}))
    return Req("DELETE", f"/api/v1/safety/blocklists/{name}")


def b_content_filter_put(w: World, role: str) -> Req:
    if not w.filtered_dep:  # one deployment serves every try: the change is the same each time
        w.filtered_dep = _deployment(w)
    return Req("PUT", f"/api/v1/deployments/{w.filtered_dep}/content-filter",
               {"json": {"enabled": True, "streaming": "asynchronous"}})


#: A policy that forbids nothing any other case does: saving it says only who may save.
HARMLESS_POLICY = ('forbid(principal, action == Action::"subscribe", resource) '
                   'when { resource.name == "no-such-model" };')


def b_policy_put(w: World, role: str) -> Req:
    return Req("PUT", f"/api/v1/policies/{unique('p')}", {"json": {"cedar": HARMLESS_POLICY}})


def b_policy_put_platform(w: World, role: str) -> Req:
    return Req("PUT", f"/api/v1/policies/{unique('p')}", {"json": {"cedar": HARMLESS_POLICY, "scope": "platform"}})


def b_policy_delete(w: World, role: str) -> Req:
    name = unique("p")
    with w.client("owner") as c:
        ok(c.put(f"/api/v1/policies/{name}", json={"cedar": HARMLESS_POLICY}), 201)
    return Req("DELETE", f"/api/v1/policies/{name}", {"params": {"scope": "workspace"}})


def b_policy_delete_platform(w: World, role: str) -> Req:
    name = unique("p")
    with w.client("admin") as c:
        ok(c.put(f"/api/v1/policies/{name}", json={"cedar": HARMLESS_POLICY, "scope": "platform"}), 201)
    return Req("DELETE", f"/api/v1/policies/{name}", {"params": {"scope": "platform"}})


def b_policy_test(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/policies/test", {"json": {"action": "download_model", "model": "all-MiniLM-L6-v2"}})


def b_compliance_enforce(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/policies/compliance/enforce")


def b_compliance_enforce_all(w: World, role: str) -> Req:
    return Req("POST", "/api/v1/policies/compliance/enforce", {"params": {"all_workspaces": "true"}})


def _owner_key_route(status: int) -> dict[str, int | None]:
    return {"owner": status, "contributor": 403, "reader": 403, "outsider": None, "admin": None}


CASES: list[Case] = [
    Case(("POST", "/api/v1/workspaces"), "create", _only_admin(201), b_ws_create, platform=True),
    Case(("DELETE", "/api/v1/workspaces/{ref}"), "delete",
         {"owner": 204, "contributor": 403, "reader": 403, "outsider": 404, "admin": 204}, b_ws_delete),
    Case(("POST", "/api/v1/workspaces/{ref}/members"), "admin-adds", _only_admin(201), b_ws_member_add_any,
         platform=True),
    Case(("POST", "/api/v1/members"), "add", {**_owner_only(201), "outsider": None}, b_member_add),
    Case(("PATCH", "/api/v1/members/{user}"), "set-role", _owner_only(200), b_member_update),
    Case(("DELETE", "/api/v1/members/{user}"), "remove", _owner_only(204), b_member_remove),
    Case(("POST", "/api/v1/users"), "create", _only_admin(201), b_user_create, platform=True),
    Case(("PATCH", "/api/v1/users/{ref}"), "disable", _only_admin(200), b_user_update, platform=True),
    Case(("POST", "/api/v1/apikeys"), "own", {r: 201 for r in ROLE_NAMES}, b_key_create_own),
    # Nobody creates a key for another user here, an owner neither (SEC-C1); nothing is looked up.
    Case(("POST", "/api/v1/apikeys"), "for-member", {r: 403 for r in ROLE_NAMES}, b_key_create_for_member),
    # A platform admin does, for a non-admin member, without joining the workspace.
    Case(("POST", "/api/v1/users/{ref}/apikeys"), "member", _only_admin(201), b_key_create_for_user, platform=True),
    Case(("DELETE", "/api/v1/apikeys/{key_id}"), "own", {r: 200 for r in ROLE_NAMES}, b_key_revoke_own),
    # Non-owners cannot list other members' keys, so revoking one answers as for a missing key.
    Case(("DELETE", "/api/v1/apikeys/{key_id}"), "other-member",
         {"owner": 200, "contributor": 404, "reader": 404, "outsider": 404, "admin": None}, b_key_revoke_other),
    Case(("PATCH", "/api/v1/models/{name}"), "private", _owner_only(200), b_model_update_private),
    Case(("PATCH", "/api/v1/models/{name}"), "catalog", _only_admin(200), b_model_update_catalog, platform=True),
    Case(("DELETE", "/api/v1/models/{name}"), "private", _owner_only(204), b_model_delete_private),
    Case(("DELETE", "/api/v1/models/{name}"), "catalog", _only_admin(204), b_model_delete_catalog, platform=True),
    Case(("POST", "/api/v1/models/{name}/deprecate"), "private", _owner_only(200), b_model_deprecate_private),
    Case(("POST", "/api/v1/models/{name}/deprecate"), "catalog", _only_admin(200), b_model_deprecate_catalog,
         platform=True),
    Case(("POST", "/api/v1/models/{name}/scan"), "private", _owner_only(200), b_model_scan_private),
    Case(("POST", "/api/v1/models/{name}/scan"), "catalog", _only_admin(200), b_model_scan_catalog, platform=True),
    Case(("POST", "/api/v1/model-uploads"), "workspace", {**_contributor_up(201), "outsider": None, "admin": 201},
         b_upload_create),
    Case(("POST", "/api/v1/model-uploads"), "catalog", _only_admin(201), b_upload_create_catalog, platform=True),
    Case(("PUT", "/api/v1/model-uploads/{upload_id}/files/{path}"), "workspace", _contributor_up(200),
         b_upload_file),
    Case(("POST", "/api/v1/model-uploads/{upload_id}/commit"), "workspace", _contributor_up(201), b_upload_commit),
    # Members of the admin's workspace, whatever their role, cannot finish its catalog-wide upload.
    Case(("POST", "/api/v1/model-uploads/{upload_id}/commit"), "catalog",
         {"owner": 403, "contributor": 403, "reader": 403, "outsider": 404, "admin": 201}, b_upload_commit_catalog,
         platform=True),
    Case(("DELETE", "/api/v1/model-uploads/{upload_id}"), "workspace", _contributor_up(204), b_upload_abort),
    # The outsider's workspace cannot see team's private model, so its create answers 404.
    Case(("POST", "/api/v1/deployments"), "private-model", _contributor_up(201), b_dep_create),
    Case(("PATCH", "/api/v1/deployments/{name}"), "network", _contributor_up(200), b_dep_update),
    Case(("DELETE", "/api/v1/deployments/{name}"), "delete", _contributor_up(204), b_dep_delete),
    Case(("POST", "/api/v1/deployments/{name}/keys"), "secondary", _contributor_up(200), b_dep_keys),
    Case(("POST", "/api/v1/datasets"), "upload", {**_contributor_up(201), "outsider": None}, b_dataset_create),
    Case(("DELETE", "/api/v1/datasets/{ref}"), "delete", _contributor_up(204), b_dataset_delete),
    Case(("POST", "/api/v1/workspace-key/rotate"), "rotate", _owner_key_route(200),
         _key_route("POST", "/api/v1/workspace-key/rotate")),
    Case(("POST", "/api/v1/workspace-key/rewrap"), "rewrap", _owner_key_route(200),
         _key_route("POST", "/api/v1/workspace-key/rewrap")),
    Case(("POST", "/api/v1/workspace-key/min-decryption-version"), "v1", _owner_key_route(200),
         _key_route("POST", "/api/v1/workspace-key/min-decryption-version", {"version": 1})),
    Case(("POST", "/api/v1/cmk"), "local", _owner_key_route(201), _key_route("POST", "/api/v1/cmk", {})),
    Case(("DELETE", "/api/v1/cmk"), "unregister", _owner_key_route(200),
         _key_route("DELETE", "/api/v1/cmk", setup=("/api/v1/cmk",))),
    Case(("POST", "/api/v1/cmk/disable"), "disable", _owner_key_route(200),
         _key_route("POST", "/api/v1/cmk/disable", setup=("/api/v1/cmk",))),
    Case(("POST", "/api/v1/cmk/enable"), "enable", _owner_key_route(200),
         _key_route("POST", "/api/v1/cmk/enable", setup=("/api/v1/cmk", "/api/v1/cmk/disable"))),
    Case(("POST", "/api/v1/cmk/rotate"), "rotate", _owner_key_route(200),
         _key_route("POST", "/api/v1/cmk/rotate", setup=("/api/v1/cmk",))),
    Case(("POST", "/api/v1/platform-key/rotate"), "rotate", _only_admin(200),
         _key_route("POST", "/api/v1/platform-key/rotate"), platform=True),
    Case(("POST", "/api/v1/platform-key/rewrap"), "rewrap", _only_admin(200),
         _key_route("POST", "/api/v1/platform-key/rewrap"), platform=True),
    Case(("POST", "/api/v1/platform-key/min-decryption-version"), "v1", _only_admin(200),
         _key_route("POST", "/api/v1/platform-key/min-decryption-version", {"version": 1}), platform=True),
    # Screening a text needs read access; the outsider and the admin screen in their own workspace.
    Case(("POST", "/api/v1/safety/analyze"), "any-member",
         {"owner": 200, "contributor": 200, "reader": 200, "outsider": None, "admin": None}, b_safety_analyze),
    # A PUT by the outsider makes a blocklist in its own workspace, which says nothing here.
    Case(("PUT", "/api/v1/safety/blocklists/{name}"), "put", {**_owner_only(200), "outsider": None},
         b_blocklist_put),
    Case(("DELETE", "/api/v1/safety/blocklists/{name}"), "delete", _owner_only(204), b_blocklist_delete),
    Case(("PUT", "/api/v1/deployments/{name}/content-filter"), "change", _owner_only(200), b_content_filter_put),
    # Governance: owners write their workspace's policies, platform admins the platform's. The
    # outsider's PUT saves in its own workspace (as the admin's, owner of `default`), which says
    # nothing here; team's policy is not found from elsewhere.
    Case(("PUT", "/api/v1/policies/{policy_id}"), "workspace", {**_owner_only(201), "outsider": None},
         b_policy_put),
    Case(("PUT", "/api/v1/policies/{policy_id}"), "platform", _only_admin(201), b_policy_put_platform, platform=True),
    Case(("DELETE", "/api/v1/policies/{policy_id}"), "workspace", _owner_only(204), b_policy_delete),
    Case(("DELETE", "/api/v1/policies/{policy_id}"), "platform", _only_admin(204), b_policy_delete_platform,
         platform=True),
    Case(("POST", "/api/v1/policies/test"), "any-member",
         {"owner": 200, "contributor": 200, "reader": 200, "outsider": None, "admin": 200}, b_policy_test),
    Case(("POST", "/api/v1/policies/compliance/enforce"), "workspace",
         {"owner": 200, "contributor": 403, "reader": 403, "outsider": None, "admin": None}, b_compliance_enforce),
    Case(("POST", "/api/v1/policies/compliance/enforce"), "all", _only_admin(200), b_compliance_enforce_all,
         platform=True),
    # The outsider's workspace has no such dataset (404).
    Case(("POST", "/api/v1/finetuning/jobs"), "queued", _contributor_up(201), b_finetune_create),
    Case(("POST", "/api/v1/finetuning/jobs/{job_id}/cancel"), "queued", _contributor_up(200), b_finetune_cancel),
    # A fine-tuned model exists only after minutes of training, which this test does not run: the
    # owner gets past the role check to the lookup (404), the other roles are refused before it.
    Case(("DELETE", "/api/v1/finetuning/models/{name}"), "missing",
         {"owner": 404, "contributor": 403, "reader": 403, "outsider": 404, "admin": None}, b_finetune_model_delete),
    Case(("POST", "/api/v1/publishers"), "create", _only_admin(201), b_publisher_create, platform=True),
    Case(("POST", "/api/v1/publishers/{ref}/users"), "add", _only_admin(201), b_publisher_user_add, platform=True),
    Case(("POST", "/api/v1/publishers/{ref}/apikeys"), "key", _only_admin(201), b_publisher_key, platform=True),
    Case(("PATCH", "/api/v1/publishers/{ref}"), "rename", _only_admin(200), b_publisher_update, platform=True),
    Case(("DELETE", "/api/v1/publishers/{ref}"), "unused", _only_admin(204), b_publisher_delete, platform=True),
    Case(("DELETE", "/api/v1/publishers/{ref}/apikeys/{key_id}"), "revoke", _only_admin(200), b_publisher_key_revoke,
         platform=True),
    Case(("POST", "/api/v1/marketplace/offers"), "create", _only_admin(201), b_offer_create, platform=True),
    Case(("POST", "/api/v1/marketplace/offers/{offer}/retire"), "retire", _only_admin(200), b_offer_retire,
         platform=True),
    Case(("PATCH", "/api/v1/marketplace/offers/{offer}"), "prices", _only_admin(200), b_offer_prices, platform=True),
    Case(("POST", "/api/v1/marketplace/offers/{offer}/terms"), "v2", _only_admin(201), b_offer_terms, platform=True),
    Case(("POST", "/api/v1/marketplace/offers/{offer}/terms/{version}/retire"), "v1", _only_admin(200),
         b_offer_terms_retire, platform=True),
    # The outsider and the admin would subscribe their own workspaces, which says nothing here.
    Case(("POST", "/api/v1/marketplace/subscriptions"), "subscribe", {**_contributor_up(201), "outsider": None},
         b_subscribe),
    Case(("DELETE", "/api/v1/marketplace/subscriptions/{ref}"), "cancel", _contributor_up(200), b_unsubscribe),
    Case(("PUT", "/api/v1/budgets/{currency}"), "set", {**_owner_only(200), "outsider": None}, b_budget_put),
]

PARAMS = [pytest.param(c, role, id=f"{c.route[0]} {c.route[1]} [{c.variant}] as {role}")
          for c in CASES for role in ROLE_NAMES if c.expect.get(role) is not None]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    w = World(server=server, team=make_tenant(server, "team"), outsider=make_tenant(server, "elsewhere",
              roles=("owner",)), tmp=tmp_path_factory.mktemp("models"))
    with w.client("admin") as c:  # catalog-wide models name a publisher record
        ok(c.post("/api/v1/publishers", json={"name": "tests"}))
    with w.client("contributor") as c:
        import_tiny_gguf(c, w.tmp, ECHO_MODEL)  # what the deployment rows deploy
    w.dataset = _team_dataset(w)
    return w


def test_every_write_route_has_expectations(server: Server) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    routes = write_routes(spec)
    covered = {c.route for c in CASES}
    assert routes - covered == set(), "write routes without a row in the role table test"
    assert covered - routes == set(), "rows for routes that no longer exist"
    for c in CASES:
        assert set(c.expect) == set(ROLE_NAMES), c


@pytest.mark.parametrize(("case", "role"), PARAMS)
def test_role_on_write_route(world: World, case: Case, role: str) -> None:
    req = case.build(world, role)
    expected = case.expect[role]
    with world.server.client(req.key or world.key(role)) as c:
        r = c.request(req.method, req.url, **req.kwargs)
    assert r.status_code == expected, f"{role}: {req.method} {req.url} -> {r.status_code} {r.text}"
    if expected >= 400:
        err = r.json()["error"]
        assert err["code"] == {403: "forbidden", 404: "not_found"}[expected]
        if expected == 403 and case.platform:
            assert "platform admin" in err["message"]


def test_reader_cannot_touch_a_colleagues_upload(world: World) -> None:
    """A refused step leaves the upload as it was: the contributor can still finish it."""
    gguf = tiny_gguf(world.tmp)
    with world.client("contributor") as contributor, world.client("reader") as reader:
        up = begin_upload(contributor, gguf, unique("up"))
        assert put_file(reader, up["id"], gguf).status_code == 403
        assert reader.delete(f"/api/v1/model-uploads/{up['id']}").status_code == 403
        assert reader.get(f"/api/v1/model-uploads/{up['id']}").json()["received"] == []
        ok(put_file(contributor, up["id"], gguf))
        assert reader.post(f"/api/v1/model-uploads/{up['id']}/commit").status_code == 403
        model = ok(contributor.post(f"/api/v1/model-uploads/{up['id']}/commit"), 201).json()
        assert model["created_at"] and model["owner"] == "workspace"


def test_role_change_takes_effect_at_once(world: World) -> None:
    name, _, secret = add_member(world.server, world.team, role="reader")
    with world.server.client(secret) as member, world.client("owner") as owner:
        assert member.post("/api/v1/members", json={"user": _fresh_user(world), "role": "reader"}).status_code == 403
        ok(owner.patch(f"/api/v1/members/{name}", json={"role": "owner"}))
        assert member.get("/api/v1/me").json()["role"] == "owner"
        ok(member.post("/api/v1/members", json={"user": _fresh_user(world), "role": "reader"}), 201)
