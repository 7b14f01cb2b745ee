"""A reader's key never gets a 2xx from a write route, over random sequences of calls.

The write routes come from the app's own OpenAPI document (a route without a request here
fails `test_every_write_route_is_tried`). Each request names a real resource of the reader's
workspace (its deployment, dataset, private model, upload, blocklist, job, members and keys) with
a valid body, so that only the role can stop it. Between the tries the sequences change what
is around the reader: the owner raises it to contributor and lowers it again, removes it and
adds it back (the platform admin then makes it a new key), the reader makes and revokes its own
keys (what a reader may do), and tries its writes also with the platform admin's workspace
header. Whenever the reader is a reader, every write it tries is refused. (Screening a text,
the one other write a reader may make, is left to the role table test: the classifier makes it
slow.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from tests.support.server import ECHO_MODEL, Server, lean_server, loopback_client
from tests.support.tenants import (
    Tenant,
    begin_upload,
    import_tiny_gguf,
    make_tenant,
    ok,
    put_file,
    tiny_gguf,
    unique,
    write_routes,
)

DATASET = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@dataclass
class World:
    """One workspace with one of everything, made once; the reader's tries must leave it as it is."""

    server: Server
    team: Tenant
    model: str
    upload_id: str
    deployment: str
    dataset: str
    blocklist: str
    job_id: str
    outsider: str  # a user who is not a member
    policy: str  # a workspace policy (forbids nothing)
    gguf: bytes
    reader: str = ""  # the reader of the current run
    reader_keys: list[str] | None = None


Request = tuple[str, str, dict]
# A write route -> how a reader would call it on the world's resources (one or more variants).
TRIES: dict[tuple[str, str], Callable[[World], list[Request]]] = {
    ("POST", "/api/v1/workspaces"): lambda w: [("POST", "/api/v1/workspaces", {"json": {"name": unique("r")}})],
    ("DELETE", "/api/v1/workspaces/{ref}"): lambda w: [("DELETE", f"/api/v1/workspaces/{w.team.name}", {})],
    ("POST", "/api/v1/workspaces/{ref}/members"): lambda w: [
        ("POST", f"/api/v1/workspaces/{w.team.name}/members", {"json": {"user": w.reader, "role": "owner"}}),
        ("POST", f"/api/v1/workspaces/{w.team.name}/members", {"json": {"user": w.outsider, "role": "owner"}})],
    ("POST", "/api/v1/members"): lambda w: [("POST", "/api/v1/members", {"json": {"user": w.outsider,
                                                                                  "role": "reader"}})],
    ("PATCH", "/api/v1/members/{user}"): lambda w: [
        ("PATCH", f"/api/v1/members/{w.reader}", {"json": {"role": "owner"}}),
        ("PATCH", f"/api/v1/members/{w.team.users['contributor']}", {"json": {"role": "reader"}})],
    # Leaving (removing oneself) is allowed to anyone; removing someone else is not.
    ("DELETE", "/api/v1/members/{user}"): lambda w: [("DELETE", f"/api/v1/members/{w.team.users['contributor']}",
                                                      {})],
    ("POST", "/api/v1/users"): lambda w: [("POST", "/api/v1/users", {"json": {"name": unique("r"),
                                                                              "platform_admin": True}})],
    ("PATCH", "/api/v1/users/{ref}"): lambda w: [("PATCH", f"/api/v1/users/{w.team.users['owner']}",
                                                  {"json": {"disabled": True}})],
    ("POST", "/api/v1/users/{ref}/apikeys"): lambda w: [
        ("POST", f"/api/v1/users/{w.reader}/apikeys", {"json": {"workspace": w.team.name}}),
        ("POST", f"/api/v1/users/{w.team.users['owner']}/apikeys", {"json": {"workspace": w.team.name}})],
    # A reader makes and revokes its own keys (steps below); never someone else's.
    ("POST", "/api/v1/apikeys"): lambda w: [("POST", "/api/v1/apikeys", {"json": {"user": w.team.users["owner"]}}),
                                            ("POST", "/api/v1/apikeys", {"json": {"user": "admin"}})],
    ("DELETE", "/api/v1/apikeys/{key_id}"): lambda w: [("DELETE", f"/api/v1/apikeys/{w.team.key_ids['owner']}", {})],
    ("PATCH", "/api/v1/models/{name}"): lambda w: [
        ("PATCH", f"/api/v1/models/{w.model}", {"json": {"card": "changed", "downloadable": True}}),
        ("PATCH", "/api/v1/models/all-MiniLM-L6-v2", {"json": {"deprecated": True}})],
    ("DELETE", "/api/v1/models/{name}"): lambda w: [("DELETE", f"/api/v1/models/{w.model}", {})],
    ("POST", "/api/v1/models/{name}/deprecate"): lambda w: [("POST", f"/api/v1/models/{w.model}/deprecate", {})],
    ("POST", "/api/v1/models/{name}/scan"): lambda w: [("POST", f"/api/v1/models/{w.model}/scan", {})],
    ("POST", "/api/v1/model-uploads"): lambda w: [("POST", "/api/v1/model-uploads", {"json": {
        "name": unique("r"), "format": "gguf", "files": [{"path": "model.gguf", "size": len(w.gguf)}]}})],
    ("DELETE", "/api/v1/model-uploads/{upload_id}"): lambda w: [("DELETE", f"/api/v1/model-uploads/{w.upload_id}",
                                                                 {})],
    ("PUT", "/api/v1/model-uploads/{upload_id}/files/{path}"): lambda w: [
        ("PUT", f"/api/v1/model-uploads/{w.upload_id}/files/model.gguf",
         {"content": w.gguf, "headers": {"Content-Type": "application/octet-stream"}})],
    ("POST", "/api/v1/model-uploads/{upload_id}/commit"): lambda w: [
        ("POST", f"/api/v1/model-uploads/{w.upload_id}/commit", {})],
    ("POST", "/api/v1/deployments"): lambda w: [("POST", "/api/v1/deployments", {"json": {"name": unique("r"),
                                                                                          "model": ECHO_MODEL}})],
    ("PATCH", "/api/v1/deployments/{name}"): lambda w: [
        ("PATCH", f"/api/v1/deployments/{w.deployment}", {"json": {"network": {"public_access": False}}})],
    ("DELETE", "/api/v1/deployments/{name}"): lambda w: [("DELETE", f"/api/v1/deployments/{w.deployment}", {})],
    ("POST", "/api/v1/deployments/{name}/keys"): lambda w: [
        ("POST", f"/api/v1/deployments/{w.deployment}/keys", {"json": {"which": "primary"}})],
    ("PUT", "/api/v1/deployments/{name}/content-filter"): lambda w: [
        ("PUT", f"/api/v1/deployments/{w.deployment}/content-filter", {"json": {"enabled": True}})],
    ("POST", "/api/v1/datasets"): lambda w: [("POST", "/api/v1/datasets", {
        "params": {"name": unique("r")}, "content": DATASET, "headers": {"Content-Type": "application/jsonl"}})],
    ("DELETE", "/api/v1/datasets/{ref}"): lambda w: [("DELETE", f"/api/v1/datasets/{w.dataset}",
                                                      {"params": {"confirm": True}})],
    ("POST", "/api/v1/workspace-key/rotate"): lambda w: [("POST", "/api/v1/workspace-key/rotate", {})],
    ("POST", "/api/v1/workspace-key/rewrap"): lambda w: [("POST", "/api/v1/workspace-key/rewrap", {})],
    ("POST", "/api/v1/workspace-key/min-decryption-version"): lambda w: [
        ("POST", "/api/v1/workspace-key/min-decryption-version", {"json": {"version": 1}})],
    ("POST", "/api/v1/cmk"): lambda w: [("POST", "/api/v1/cmk", {"json": {}})],
    ("DELETE", "/api/v1/cmk"): lambda w: [("DELETE", "/api/v1/cmk", {})],
    ("POST", "/api/v1/cmk/disable"): lambda w: [("POST", "/api/v1/cmk/disable", {})],
    ("POST", "/api/v1/cmk/enable"): lambda w: [("POST", "/api/v1/cmk/enable", {})],
    ("POST", "/api/v1/cmk/rotate"): lambda w: [("POST", "/api/v1/cmk/rotate", {})],
    ("POST", "/api/v1/platform-key/rotate"): lambda w: [("POST", "/api/v1/platform-key/rotate", {})],
    ("POST", "/api/v1/platform-key/rewrap"): lambda w: [("POST", "/api/v1/platform-key/rewrap", {})],
    ("POST", "/api/v1/platform-key/min-decryption-version"): lambda w: [
        ("POST", "/api/v1/platform-key/min-decryption-version", {"json": {"version": 1}})],
    ("PUT", "/api/v1/safety/blocklists/{name}"): lambda w: [
        ("PUT", f"/api/v1/safety/blocklists/{w.blocklist}", {"json": {"terms": ["changed"]}}),
        ("PUT", f"/api/v1/safety/blocklists/{unique('r')}", {"json": {"terms": ["new"]}})],
    ("DELETE", "/api/v1/safety/blocklists/{name}"): lambda w: [("DELETE", f"/api/v1/safety/blocklists/{w.blocklist}",
                                                                {})],
    ("POST", "/api/v1/finetuning/jobs"): lambda w: [("POST", "/api/v1/finetuning/jobs", {"json": {
        "model": "SmolLM2-135M-Instruct", "dataset": w.dataset, "epochs": 1}})],
    ("POST", "/api/v1/finetuning/jobs/{job_id}/cancel"): lambda w: [
        ("POST", f"/api/v1/finetuning/jobs/{w.job_id}/cancel", {})],
    ("DELETE", "/api/v1/finetuning/models/{name}"): lambda w: [
        ("DELETE", f"/api/v1/finetuning/models/{w.model}", {"params": {"confirm": True}})],
    ("PUT", "/api/v1/policies/{policy_id}"): lambda w: [
        ("PUT", f"/api/v1/policies/{unique('p')}", {"json": {
            "cedar": 'forbid(principal, action == Action::"deploy", resource);', "scope": "workspace"}})],
    ("DELETE", "/api/v1/policies/{policy_id}"): lambda w: [
        ("DELETE", f"/api/v1/policies/{w.policy}", {"params": {"scope": "workspace"}})],
    ("POST", "/api/v1/policies/compliance/enforce"): lambda w: [("POST", "/api/v1/policies/compliance/enforce", {})],
    # marketplace and charges: publishers and offers are the platform's, subscriptions and budgets the owners'
    ("POST", "/api/v1/publishers"): lambda w: [("POST", "/api/v1/publishers", {"json": {
        "name": unique("pub"), "display_name": "P"}})],
    ("PATCH", "/api/v1/publishers/{ref}"): lambda w: [
        ("PATCH", "/api/v1/publishers/HuggingFaceTB", {"json": {"display_name": "taken over"}})],
    ("DELETE", "/api/v1/publishers/{ref}"): lambda w: [("DELETE", f"/api/v1/publishers/{unique('pub')}", {}),
                                                       ("DELETE", "/api/v1/publishers/HuggingFaceTB", {})],
    ("DELETE", "/api/v1/publishers/{ref}/apikeys/{key_id}"): lambda w: [
        ("DELETE", "/api/v1/publishers/HuggingFaceTB/apikeys/pkey_none", {})],
    ("POST", "/api/v1/publishers/{ref}/users"): lambda w: [
        ("POST", "/api/v1/publishers/HuggingFaceTB/users", {"json": {"user": w.reader}})],
    ("POST", "/api/v1/publishers/{ref}/apikeys"): lambda w: [
        ("POST", "/api/v1/publishers/HuggingFaceTB/apikeys", {"json": {"user": w.reader, "name": "k"}})],
    ("POST", "/api/v1/marketplace/offers"): lambda w: [("POST", "/api/v1/marketplace/offers", {"json": {
        "model": "SmolLM2-135M-Instruct", "currency": "USD", "input_price": "0.1", "output_price": "0.2",
        "terms": {"version": "1", "text": "t"}, "contact_sharing_required": False,
        "deployment_types": ["serverless"]}})],
    ("PATCH", "/api/v1/marketplace/offers/{offer}"): lambda w: [
        ("PATCH", "/api/v1/marketplace/offers/offer_none", {"json": {"input_price": "0.1", "output_price": "0.2"}})],
    ("POST", "/api/v1/marketplace/offers/{offer}/retire"): lambda w: [
        ("POST", "/api/v1/marketplace/offers/offer_none/retire", {})],
    ("POST", "/api/v1/marketplace/offers/{offer}/terms"): lambda w: [
        ("POST", "/api/v1/marketplace/offers/offer_none/terms", {"json": {"version": "2", "text": "t"}})],
    ("POST", "/api/v1/marketplace/offers/{offer}/terms/{version}/retire"): lambda w: [
        ("POST", "/api/v1/marketplace/offers/offer_none/terms/1/retire", {})],
    ("POST", "/api/v1/marketplace/subscriptions"): lambda w: [("POST", "/api/v1/marketplace/subscriptions", {"json": {
        "offer": "offer_none", "contact": {"name": "n", "email": "n@example.org"},
        "accept_terms_sha256": "0" * 64, "consent_to_share_contact": True}})],
    ("DELETE", "/api/v1/marketplace/subscriptions/{ref}"): lambda w: [
        ("DELETE", "/api/v1/marketplace/subscriptions/sub_none", {})],
    ("PUT", "/api/v1/budgets/{currency}"): lambda w: [("PUT", "/api/v1/budgets/USD", {"json": {"amount": "10"}})],
}
#: Writes a reader may make, besides its own keys (which the steps below make and revoke): screening a
#: text and testing a request against the policies change nothing.
READER_MAY = {("POST", "/api/v1/safety/analyze"), ("POST", "/api/v1/policies/test")}
FLAT = sorted((route, n) for route, build in TRIES.items() for n in range(2))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for server in lean_server(tmp_path_factory):
        team = make_tenant(server)
        tmp = tmp_path_factory.mktemp("models")
        gguf = tiny_gguf(tmp)
        with server.client(team.keys["contributor"]) as c:
            model = import_tiny_gguf(c, tmp)["name"]
            import_tiny_gguf(c, tmp, ECHO_MODEL)
            up = begin_upload(c, gguf, unique("pending"))
            ok(put_file(c, up["id"], gguf))
            dep = ok(c.post("/api/v1/deployments", json={"name": unique("d"), "model": ECHO_MODEL}), 201).json()
            ds = ok(c.post("/api/v1/datasets", params={"name": unique("ds")}, content=DATASET), 201).json()
            job = ok(c.post("/api/v1/finetuning/jobs", json={"model": "SmolLM2-135M-Instruct",
                                                             "dataset": ds["name"]}), 201).json()
        with server.client(team.keys["owner"]) as o:
            blocklist = unique("bl")
            ok(o.put(f"/api/v1/safety/blocklists/{blocklist}", json={"terms": ["kept"]}))
            policy = unique("p")
            ok(o.put(f"/api/v1/policies/{policy}", json={
                "cedar": 'forbid(principal, action == Action::"import_model", resource) when { false };',
                "scope": "workspace"}))
        outsider = unique("out")
        with server.client() as admin:
            ok(admin.post("/api/v1/users", json={"name": outsider}), 201)
        yield World(server=server, team=team, model=model, upload_id=up["id"], deployment=dep["name"],
                    dataset=ds["name"], blocklist=blocklist, job_id=job["id"], outsider=outsider, policy=policy,
                    gguf=gguf.read_bytes())


class ReaderSequences(RuleBasedStateMachine):
    world: World
    http: httpx.Client

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        self.admin = {"Authorization": f"Bearer {w.server.admin_key}"}
        self.owner = {"Authorization": f"Bearer {w.team.keys['owner']}"}
        w.reader = unique("reader")
        ok(self.http.post("/api/v1/users", headers=self.admin, json={"name": w.reader}), 201)
        self.role: str | None = None
        self.keys: list[str] = []
        self.key_ids: list[str] = []
        self._join()

    def _join(self) -> None:
        w = self.world
        ok(self.http.post("/api/v1/members", headers=self.owner, json={"user": w.reader, "role": "reader"}), 201)
        k = ok(self.http.post(f"/api/v1/users/{w.reader}/apikeys", headers=self.admin,
                              json={"workspace": w.team.name}), 201).json()
        self.role = "reader"
        self.keys, self.key_ids = [k["key"]], [k["id"]]

    def _as_reader(self, j: int, method: str, url: str, **kw: object) -> httpx.Response:
        secret = self.keys[j % len(self.keys)]
        headers = {"Authorization": f"Bearer {secret}", **kw.pop("headers", {})}  # type: ignore[dict-item]
        return self.http.request(method, url, headers=headers, **kw)  # type: ignore[arg-type]

    # -- the tries -----------------------------------------------------------------------------

    @precondition(lambda self: self.role == "reader")
    @rule(tries=st.lists(st.tuples(st.sampled_from(FLAT), st.integers(0, 7), st.booleans()), min_size=1,
                         max_size=3))
    def reader_writes(self, tries: list[tuple[tuple[tuple[str, str], int], int, bool]]) -> None:
        for (route, n), j, other_workspace in tries:
            variants = TRIES[route](self.world)
            method, url, kw = variants[n % len(variants)]
            if other_workspace:  # as if it were a platform admin acting in a workspace of its own
                kw = {**kw, "headers": {**kw.get("headers", {}), "X-Modelport-Workspace": self.world.team.name}}
            r = self._as_reader(j, method, url, **kw)
            assert not 200 <= r.status_code < 300, f"a reader's key got {r.status_code} from {method} {url}: {r.text}"
            assert r.status_code < 500, r.text

    # -- what happens around the reader ----------------------------------------------------------

    @rule(op=st.sampled_from(("reader", "contributor", "remove", "make-key", "revoke-key")), j=st.integers(0, 7))
    def things_change(self, op: str, j: int) -> None:
        """The owner re-roles or removes the reader (adds it back if it is out), or the reader makes
        or revokes one of its own keys."""
        w = self.world
        if self.role is None:
            self._join()
        elif op in ("reader", "contributor"):
            ok(self.http.patch(f"/api/v1/members/{w.reader}", headers=self.owner, json={"role": op}))
            self.role = op
        elif op == "remove":
            ok(self.http.delete(f"/api/v1/members/{w.reader}", headers=self.owner), 204)
            self.role = None
            for secret in self.keys:  # its keys stop at once
                assert self.http.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
            self.keys, self.key_ids = [], []
        elif op == "make-key" or len(self.keys) == 1:
            if len(self.keys) < 4:
                k = ok(self._as_reader(j, "POST", "/api/v1/apikeys", json={"name": "own"}), 201).json()
                assert (k["platform_admin"], k["workspace_id"]) == (False, w.team.id)
                self.keys.append(k["key"])
                self.key_ids.append(k["id"])
        else:
            i = j % len(self.keys)
            ok(self._as_reader(i + 1, "DELETE", f"/api/v1/apikeys/{self.key_ids[i]}"))
            del self.keys[i], self.key_ids[i]


def test_every_write_route_is_tried(world: World) -> None:
    with world.server.client() as c:
        routes = write_routes(c.get("/openapi.json").json())
    assert routes - set(TRIES) - READER_MAY == set(), "write routes without a reader's try"
    assert set(TRIES) - routes == set(), "tries of routes that no longer exist"


def test_a_readers_key_never_writes(world: World) -> None:
    ReaderSequences.world = world
    with loopback_client(base_url=world.server.url, timeout=60) as ReaderSequences.http:
        run_state_machine_as_test(ReaderSequences, settings=settings(
            max_examples=25, stateful_step_count=20, derandomize=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    # Nothing the tries aimed at changed.
    w = world
    with w.server.client(w.team.keys["owner"]) as owner:
        assert ok(owner.get(f"/api/v1/models/{w.model}")).json()["card"] != "changed"
        assert ok(owner.get(f"/api/v1/model-uploads/{w.upload_id}")).json()["received"] == ["model.gguf"]
        assert ok(owner.get(f"/api/v1/deployments/{w.deployment}")).json()["network"]["public_access"] is True
        assert ok(owner.get(f"/api/v1/datasets/{w.dataset}")).json()["name"] == w.dataset
        assert ok(owner.get(f"/api/v1/finetuning/jobs/{w.job_id}")).json()["status"] == "queued"
        assert {b["name"]: b["terms"] for b in ok(owner.get("/api/v1/safety/blocklists")).json()} == {
            w.blocklist: ["kept"]}
        members = {m["user"]: m["role"] for m in ok(owner.get("/api/v1/members")).json()}
        assert members[w.team.users["contributor"]] == "contributor" and w.outsider not in members
        assert ok(owner.get("/api/v1/me")).json()["role"] == "owner"
