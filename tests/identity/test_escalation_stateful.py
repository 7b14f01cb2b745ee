"""Random sequences of member, key, role and workspace calls by non-admin principals, on a real
server over HTTP; after every step no key they hold has platform-admin power, none reaches a
workspace its user is not a member of, and the platform admin's memberships are the ones it made.

Each run starts with two fresh workspaces: `w0` owned by user `a`, with `c` a reader and `d` a
contributor, and `w1` owned by `b`; each of them holds one key the platform admin made. The
steps are what these principals may try: add, re-role and remove members (the platform admin
among the targets), create keys (for themselves and for others), revoke keys (the platform
admin's too), name another workspace in the platform admin's header, call the platform-admin
routes, delete their workspace. The platform admin takes part only as an operator: it joins a
workspace, or makes a key for a member.

The oracle is the server's own metadata store, read directly (read-only) rather than through
the API under test: the memberships, and each key's maker and platform-admin flag.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.support.server import Server, lean_server, loopback_client
from tests.support.tenants import ok

LABELS = ("a", "b", "c", "d")
TARGETS = (*LABELS, "admin")
ROLES = ("reader", "contributor", "owner")
MAX_KEYS = 5  # live keys at once
PLATFORM_PROBES = (("GET", "/api/v1/users"), ("GET", "/api/v1/platform-key"),
                   ("GET", "/api/v1/audit?all_workspaces=true"))

#: Steps that did something, over all runs: a run in which every call failed would prove nothing.
DONE: dict[str, int] = {}


@dataclass
class Key:
    id: str
    secret: str
    user_id: str
    workspace_id: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


class Escalation(RuleBasedStateMachine):
    server: Server
    http: httpx.Client  # one for all runs: a client per run costs a TLS context load each

    def __init__(self) -> None:
        super().__init__()
        self.admin = {"Authorization": f"Bearer {self.server.admin_key}"}
        tag = secrets.token_hex(3)
        self.names = {label: f"st-{tag}-{label}" for label in LABELS} | {"admin": "admin"}
        self.ids = {label: self._admin("POST", "/api/v1/users", json={"name": self.names[label]})["id"]
                    for label in LABELS}
        self.ids["admin"] = next(u["id"] for u in self._admin("GET", "/api/v1/users") if u["name"] == "admin")
        self.admin_key_id = self._admin("GET", "/api/v1/me")["key_id"]
        self.workspaces = [f"st-{tag}-w0", f"st-{tag}-w1"]
        self.workspace_ids = [self._admin("POST", "/api/v1/workspaces", json={"name": ws, "owner": self.names[o]})["id"]
                              for ws, o in zip(self.workspaces, ("a", "b"), strict=True)]
        self.keys: list[Key] = []
        self.alive: list[Key] = []
        self.members: dict[tuple[str, str], str] = {}  # (user id, workspace id) -> role, from the store
        self.admin_in: dict[str, str] = {}  # workspace id -> role: where the platform admin joined itself
        self.probe = 0
        for ws, label, role in ((0, "c", "reader"), (0, "d", "contributor")):
            self._admin("POST", f"/api/v1/workspaces/{self.workspaces[ws]}/members",
                        json={"user": self.names[label], "role": role})
        for label, ws in (("a", 0), ("c", 0), ("d", 0), ("b", 1)):
            self._mint(label, ws)
        self.members = self._oracle()[0]

    # -- helpers ------------------------------------------------------------------------------

    def _admin(self, method: str, url: str, **kw: object) -> dict | list:
        return ok(self.http.request(method, url, headers=self.admin, **kw)).json()

    def _mint(self, label: str, ws: int) -> httpx.Response:
        r = self.http.post(f"/api/v1/users/{self.names[label]}/apikeys", headers=self.admin,
                           json={"workspace": self.workspaces[ws]})
        assert r.status_code in (201, 404, 409), r.text  # 409: not a member (any more)
        if r.status_code == 201:
            self._keep(r.json())
        return r

    def _keep(self, body: dict) -> None:
        key = Key(body["id"], body["key"], body["user_id"], body["workspace_id"])
        self.keys.append(key)
        self.alive.append(key)

    def _as(self, key: Key, method: str, url: str, headers: dict | None = None, **kw: object) -> httpx.Response:
        r = self.http.request(method, url, headers={"Authorization": f"Bearer {key.secret}", **(headers or {})},
                              **kw)  # type: ignore[arg-type]
        assert r.status_code < 500, (method, url, r.status_code, r.text)
        if 200 <= r.status_code < 300:
            DONE[f"{method} {url.split('/')[3]}"] = DONE.get(f"{method} {url.split('/')[3]}", 0) + 1
        return r

    def _actor(self, i: int) -> Key:
        """Half of the time an owner's key (if any is alive): owners hold the most to abuse."""
        owners = [k for k in self.alive if self.members.get((k.user_id, k.workspace_id)) == "owner"]
        if i % 2 == 0 and owners:
            return owners[(i // 2) % len(owners)]
        return self.alive[i % len(self.alive)]

    def _label(self, user_id: str) -> str:
        return next(label for label, uid in self.ids.items() if uid == user_id)

    def _ref(self, label: str, by_id: bool) -> str:
        return self.ids[label] if by_id else self.names[label]

    def _around(self, actor: Key, k: int) -> str:
        """A user for the actor to act on: mostly members of its workspace (the platform admin
        too, when it joined), otherwise the platform admin or a user who is not a member."""
        members = sorted(self._label(u) for u, w in self.members if w == actor.workspace_id)
        outside = [label for label in LABELS if label not in members]
        return [*members, "admin", *outside[:1]][k % (len(members) + 1 + min(1, len(outside)))]

    # -- steps of non-admin principals -------------------------------------------------------

    @precondition(lambda self: self.alive)
    @rule(i=st.integers(0, 63), who=st.sampled_from(TARGETS), role=st.sampled_from(ROLES), by_id=st.booleans())
    def add_member(self, i: int, who: str, role: str, by_id: bool) -> None:
        r = self._as(self._actor(i), "POST", "/api/v1/members", json={"user": self._ref(who, by_id), "role": role})
        assert not (who == "admin" and r.status_code == 201), "an owner added the platform admin"

    @precondition(lambda self: self.alive)
    @rule(i=st.integers(0, 63), k=st.integers(0, 15), role=st.sampled_from(ROLES), by_id=st.booleans())
    def set_role(self, i: int, k: int, role: str, by_id: bool) -> None:
        actor = self._actor(i)
        who = self._around(actor, k)
        r = self._as(actor, "PATCH", f"/api/v1/members/{self._ref(who, by_id)}", json={"role": role})
        assert not (who == "admin" and r.status_code == 200), "an owner changed the platform admin's role"

    @precondition(lambda self: self.alive)
    @rule(i=st.integers(0, 63), k=st.integers(0, 15), by_id=st.booleans())
    def remove_member(self, i: int, k: int, by_id: bool) -> None:
        actor = self._actor(i)
        who = self._around(actor, k)
        r = self._as(actor, "DELETE", f"/api/v1/members/{self._ref(who, by_id)}")
        assert not (who == "admin" and r.status_code == 204), "an owner removed the platform admin"

    @precondition(lambda self: 0 < len(self.alive) < MAX_KEYS)
    @rule(i=st.integers(0, 63), k=st.integers(0, 15), mine=st.booleans(), by_id=st.booleans())
    def create_key(self, i: int, k: int, mine: bool, by_id: bool) -> None:
        actor = self._actor(i)
        who = "admin" if k % 2 == 0 else self._around(actor, k // 2)  # the platform admin: the prize
        body = {"name": "st"} if mine else {"name": "st", "user": self._ref(who, by_id)}
        r = self._as(actor, "POST", "/api/v1/apikeys", json=body)
        if r.status_code == 201:
            self._keep(r.json())  # the invariant checks what the key can do

    @precondition(lambda self: self.alive)
    @rule(i=st.integers(0, 63), j=st.integers(0, 63))
    def revoke_key(self, i: int, j: int) -> None:
        targets = [k.id for k in self.keys] + [self.admin_key_id]
        target = targets[j % len(targets)]
        r = self._as(self._actor(i), "DELETE", f"/api/v1/apikeys/{target}")
        assert not (target == self.admin_key_id and r.status_code == 200), "the platform admin's key was revoked"

    @precondition(lambda self: self.alive)
    @rule(i=st.integers(0, 63), kind=st.integers(0, 6), ws=st.sampled_from((0, 1, "default")),
          role=st.sampled_from(ROLES))
    def platform_call(self, i: int, kind: int, ws: int | str, role: str) -> None:
        """A route of the platform admin, or its workspace header: refused to a non-admin."""
        actor = self._actor(i)
        name = ws if isinstance(ws, str) else self.workspaces[ws]
        me = self.names[self._label(actor.user_id)]
        method, url, kw = (
            ("POST", f"/api/v1/workspaces/{name}/members", {"json": {"user": me, "role": role}}),
            ("POST", f"/api/v1/users/{me}/apikeys", {"json": {"workspace": name}}),
            ("POST", "/api/v1/users", {"json": {"name": f"st-{secrets.token_hex(3)}", "platform_admin": True}}),
            ("PATCH", "/api/v1/users/admin", {"json": {"disabled": True}}),
            ("POST", "/api/v1/workspaces", {"json": {"name": f"st-{secrets.token_hex(3)}"}}),
            ("GET", "/api/v1/me", {"headers": {"X-Modelport-Workspace": name}}),
            ("GET", "/api/v1/members", {"headers": {"X-Modelport-Workspace": name}}),
        )[kind]
        r = self._as(actor, method, url, **kw)
        assert r.status_code in (401, 403), (method, url, r.status_code, r.text)

    @precondition(lambda self: self.alive)
    @rule(i=st.integers(0, 63), ws=st.sampled_from((0, 1)))
    def delete_workspace(self, i: int, ws: int) -> None:
        r = self._as(self._actor(i), "DELETE", f"/api/v1/workspaces/{self.workspaces[ws]}")
        if r.status_code == 204:
            self.admin_in.pop(self.workspace_ids[ws], None)

    # -- the platform admin as an operator -----------------------------------------------------

    @rule(joins=st.booleans(), label=st.sampled_from(LABELS), ws=st.sampled_from((0, 1)), role=st.sampled_from(ROLES))
    def admin_operates(self, joins: bool, label: str, ws: int, role: str) -> None:
        """The platform admin joins a workspace, or makes a key for a member of one."""
        if joins:
            r = self.http.post(f"/api/v1/workspaces/{self.workspaces[ws]}/members", headers=self.admin,
                               json={"user": "admin", "role": role})
            assert r.status_code in (201, 404, 409), r.text  # 404: the workspace was deleted; 409: a member
            if r.status_code == 201:
                self.admin_in[self.workspace_ids[ws]] = role
        elif len(self.alive) < MAX_KEYS:
            self._mint(label, ws)

    # -- what must hold after every step -------------------------------------------------------

    def _oracle(self) -> tuple[dict, dict, list]:
        with sqlite3.connect(f"file:{self.server.home / 'modelport.db'}?mode=ro", uri=True) as db:
            members = {(u, w): r for u, w, r in db.execute("SELECT user_id, workspace_id, role FROM memberships")
                       if w in self.workspace_ids}
            users = {u: (bool(a), bool(d)) for u, a, d in db.execute(
                "SELECT id, is_platform_admin, disabled FROM users")}
            rows = list(db.execute("SELECT id, user_id, created_by, platform_admin FROM api_keys"))
        db.close()
        return members, users, rows

    @invariant()
    def keys_hold_no_more_than_their_makers_power(self) -> None:
        members, users, rows = self._oracle()
        self.members = members
        # The platform admin is where it put itself, in the role it chose: nobody else moved it.
        assert {w: r for (u, w), r in members.items() if u == self.ids["admin"]} == self.admin_in
        for key_id, user_id, created_by, platform_admin in rows:
            if platform_admin:  # only a platform admin's key that it made itself
                assert users[user_id][0] and created_by == user_id, key_id
        flags = {key_id: bool(platform_admin) for key_id, _, _, platform_admin in rows}
        for key in self.keys:
            assert not flags.get(key.id, False), f"key {key.id} of a non-admin maker carries platform-admin power"
        # A key that stopped working stays stopped (revoked, or its workspace deleted: no step
        # here re-enables a user), so only the working ones are asked again.
        checked, self.alive = self.alive, []
        for key in checked:
            r = self.http.get("/api/v1/me", headers={"Authorization": f"Bearer {key.secret}"})
            if r.status_code == 401:
                continue
            assert r.status_code == 200, r.text
            me = r.json()
            assert me["platform_admin"] is False, me
            assert (me["user_id"], me["workspace_id"]) == (key.user_id, key.workspace_id), me
            assert members.get((key.user_id, key.workspace_id)) == me["role"], ("not a member, or not so", me)
            assert not users[key.user_id][1], "a disabled user's key works"
            self.alive.append(key)
        if self.alive:  # one platform-admin route per step, by a different key each time
            key = self.alive[self.probe % len(self.alive)]
            method, url = PLATFORM_PROBES[self.probe % len(PLATFORM_PROBES)]
            self.probe += 1
            r = self.http.request(method, url, headers={"Authorization": f"Bearer {key.secret}"})
            assert r.status_code == 403, (method, url, r.status_code)


def test_no_sequence_of_calls_gains_platform_or_foreign_power(server: Server) -> None:
    Escalation.server = server
    DONE.clear()
    with loopback_client(base_url=server.url, timeout=60) as Escalation.http:
        run_state_machine_as_test(Escalation, settings=settings(
            max_examples=25, stateful_step_count=20, derandomize=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    # The runs did things, not only refused ones: members were added, re-roled and removed, keys
    # made and revoked, workspaces deleted.
    for step in ("POST members", "PATCH members", "DELETE members", "POST apikeys", "DELETE apikeys",
                 "DELETE workspaces"):
        assert DONE.get(step, 0) > 0, (step, DONE)
