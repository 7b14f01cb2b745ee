"""No one acts above their role: privilege gained through another user, tried over HTTP.

The rule: a key never carries more privilege than the principal who created it. API keys are
created by their own user, or by a platform admin for a non-admin member (`POST
/api/v1/users/{user}/apikeys`); a workspace owner lists and revokes its workspace's keys but
creates none for others. A platform admin is invisible to workspace owners: they cannot add one,
change its role, remove it or revoke its platform keys.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import Server, lean_server
from tests.support.tenants import Tenant, make_tenant, ok, unique


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture
def team(server: Server) -> Tenant:
    return make_tenant(server)


def _admin_joins(server: Server, team: Tenant, role: str) -> None:
    with server.client() as admin:
        ok(admin.post(f"/api/v1/workspaces/{team.name}/members", json={"user": "admin", "role": role}), 201)


def _platform_power(server: Server, key: str) -> list[int]:
    """What a key gets from the routes that need a platform admin (all 403 for anyone else)."""
    with server.client(key) as c:
        return [c.get("/api/v1/users").status_code,
                c.get("/api/v1/audit", params={"all_workspaces": True}).status_code,
                c.get("/api/v1/platform-key").status_code,
                c.post("/api/v1/users", json={"name": unique("evil"), "platform_admin": True}).status_code,
                c.post("/api/v1/workspaces/default/members", json={"user": "admin", "role": "reader"}).status_code]


def test_the_three_call_chain_ends_in_403(server: Server, team: Tenant) -> None:
    """SEC-C1: add the admin as a member, make a key for it, use it. Each step is refused."""
    with server.client(team.keys["owner"]) as owner:
        step1 = owner.post("/api/v1/members", json={"user": "admin", "role": "reader"})
        assert step1.status_code == 404, step1.text  # an owner cannot see, let alone add, a platform admin
        step2 = owner.post("/api/v1/apikeys", json={"user": "admin"})
        assert step2.status_code == 403, step2.text
        assert step2.json()["error"]["field"] == "user"
        # Even with the admin a member (it joined itself), the owner cannot make a key for it.
        _admin_joins(server, team, "reader")
        step2 = owner.post("/api/v1/apikeys", json={"user": "admin", "name": "stolen"})
        assert step2.status_code == 403, step2.text
        assert "/api/v1/users/{user}/apikeys" in step2.json()["error"]["message"]
        keys = ok(owner.get("/api/v1/apikeys")).json()
    admin_id = _user_id(server, "admin")
    assert [k for k in keys if k["user_id"] == admin_id] == []
    assert _platform_power(server, team.keys["owner"]) == [403] * 5


@pytest.mark.parametrize("role", ["reader", "contributor", "owner"])
def test_no_one_makes_a_key_for_another_member(server: Server, team: Tenant, role: str) -> None:
    with server.client(team.keys[role]) as c:
        for other in ("owner", "contributor", "reader"):
            if other != role:
                r = c.post("/api/v1/apikeys", json={"user": team.users[other]})
                assert r.status_code == 403, r.text
        # by id too, and for a name that does not exist: the same answer, nothing looked up
        assert c.post("/api/v1/apikeys", json={"user": team.user_ids["owner" if role != "owner" else "reader"]}
                      ).status_code == 403
        assert c.post("/api/v1/apikeys", json={"user": "no-such-user"}).status_code == 403
        # one's own key, named by name or id, is fine
        mine = ok(c.post("/api/v1/apikeys", json={"user": team.users[role]}), 201).json()
        assert mine["user_id"] == team.user_ids[role] and mine["platform_admin"] is False
        assert mine["created_by"] == team.user_ids[role]


def test_admin_makes_a_key_for_a_member_without_joining(server: Server, team: Tenant) -> None:
    name = unique("u")
    with server.client() as admin:
        uid = ok(admin.post("/api/v1/users", json={"name": name}), 201).json()["id"]
    with server.client(team.keys["owner"]) as owner:
        ok(owner.post("/api/v1/members", json={"user": name, "role": "contributor"}), 201)
    with server.client() as admin:
        k = ok(admin.post(f"/api/v1/users/{name}/apikeys", json={"workspace": team.name, "name": "first"}), 201).json()
        assert (k["user_id"], k["workspace_id"], k["platform_admin"]) == (uid, team.id, False)
        assert k["created_by"] == _user_id(server, "admin")
        # The admin did not join the workspace to do it.
        assert admin.get("/api/v1/me", headers={"X-Modelport-Workspace": team.name}).status_code == 404
    with server.client(k["key"]) as member:
        me = ok(member.get("/api/v1/me")).json()
        assert (me["user"], me["workspace"], me["role"], me["platform_admin"]) == (name, team.name, "contributor",
                                                                                   False)
    with server.client(team.keys["owner"]) as owner:
        events = ok(owner.get("/api/v1/audit", params={"action": "apikey.create", "limit": 1000})).json()
        listed = {x["id"]: x for x in ok(owner.get("/api/v1/apikeys")).json()}
    event = next(e for e in events if e["resource_id"] == k["id"])  # in the workspace's own log
    assert event["actor_user_id"] == _user_id(server, "admin") and event["detail"]["user"] == uid
    assert listed[k["id"]]["created_by"] == _user_id(server, "admin")  # owners see who made it
    # the CLI does the same
    r = server.cli("apikeys", "create", "--user", name, "--workspace", team.name, "--name", "cli", "--json",
                   check=True)
    assert f'"user_id": "{uid}"' in r.stdout
    for args in (("--user", name), ("--workspace", team.name)):  # one without the other is a usage error
        r = server.cli("apikeys", "create", *args)
        assert r.returncode == 2 and "--workspace" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_admin_makes_no_key_it_should_not(server: Server, team: Tenant) -> None:
    name = unique("u")
    with server.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": name}), 201)
        # not a member of the workspace: say so
        r = admin.post(f"/api/v1/users/{name}/apikeys", json={"workspace": team.name})
        assert r.status_code == 409 and "not a member" in r.json()["error"]["message"]
        assert admin.post(f"/api/v1/users/{name}/apikeys", json={"workspace": "no-such-ws"}).status_code == 404
        assert admin.post("/api/v1/users/no-such-user/apikeys", json={"workspace": team.name}).status_code == 404
        # another platform admin: its keys are made by itself
        other = unique("adm")
        ok(admin.post("/api/v1/users", json={"name": other, "platform_admin": True}), 201)
        ok(admin.post(f"/api/v1/workspaces/{team.name}/members", json={"user": other, "role": "reader"}), 201)
        r = admin.post(f"/api/v1/users/{other}/apikeys", json={"workspace": team.name})
        assert r.status_code == 403 and "platform admin" in r.json()["error"]["message"]
        # a disabled member gets no new key
        ok(admin.patch(f"/api/v1/users/{team.users['reader']}", json={"disabled": True}))
        try:
            r = admin.post(f"/api/v1/users/{team.users['reader']}/apikeys", json={"workspace": team.name})
            assert r.status_code == 409 and "disabled" in r.json()["error"]["message"]
        finally:
            ok(admin.patch(f"/api/v1/users/{team.users['reader']}", json={"disabled": False}))
    # and no one else may use the route
    for role in ("owner", "contributor", "reader"):
        with server.client(team.keys[role]) as c:
            r = c.post(f"/api/v1/users/{team.users['reader']}/apikeys", json={"workspace": team.name})
            assert r.status_code == 403 and "platform admin" in r.json()["error"]["message"]


def test_owners_do_not_touch_a_platform_admins_membership(server: Server, team: Tenant) -> None:
    _admin_joins(server, team, "reader")
    with server.client(team.keys["owner"]) as owner:
        r = owner.patch("/api/v1/members/admin", json={"role": "owner"})
        assert r.status_code == 403, r.text
        r = owner.delete("/api/v1/members/admin")
        assert r.status_code == 403, r.text
        members = {m["user"]: m["role"] for m in ok(owner.get("/api/v1/members")).json()}
    assert members["admin"] == "reader"
    # the admin itself still may leave
    with server.client(headers={"X-Modelport-Workspace": team.name}) as admin:
        ok(admin.delete("/api/v1/members/admin"), 204)


def test_an_owner_of_default_cannot_lock_the_platform_admin_out(server: Server) -> None:
    """An owner made in `default` cannot revoke the admin's key, demote or remove the admin there."""
    name = unique("u")
    with server.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": name}), 201)
        ok(admin.post("/api/v1/members", json={"user": name, "role": "owner"}), 201)
        secret = ok(admin.post(f"/api/v1/users/{name}/apikeys", json={"workspace": "default"}), 201).json()["key"]
        admin_key_id = ok(admin.get("/api/v1/me")).json()["key_id"]
    try:
        with server.client(secret) as owner:
            listed = {k["id"]: k for k in ok(owner.get("/api/v1/apikeys")).json()}
            assert listed[admin_key_id]["platform_admin"] is True  # owners list it...
            r = owner.delete(f"/api/v1/apikeys/{admin_key_id}")
            assert r.status_code == 403, r.text  # ...but do not revoke it
            assert owner.patch("/api/v1/members/admin", json={"role": "reader"}).status_code == 403
            assert owner.delete("/api/v1/members/admin").status_code == 403
        with server.client() as admin:
            assert ok(admin.get("/api/v1/me")).json()["platform_admin"] is True
    finally:
        with server.client() as admin:
            ok(admin.delete(f"/api/v1/members/{name}"), 204)


def test_a_disabled_owner_does_not_count_as_the_other_owner(server: Server, team: Tenant) -> None:
    name = unique("u")
    with server.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": name}), 201)
    with server.client(team.keys["owner"]) as owner:
        ok(owner.post("/api/v1/members", json={"user": name, "role": "owner"}), 201)
    with server.client() as admin:
        ok(admin.patch(f"/api/v1/users/{name}", json={"disabled": True}))
    with server.client(team.keys["owner"]) as owner:
        r = owner.delete(f"/api/v1/members/{team.users['owner']}")
        assert r.status_code == 409 and "owner" in r.json()["error"]["message"], r.text
        r = owner.patch(f"/api/v1/members/{team.users['owner']}", json={"role": "reader"})
        assert r.status_code == 409, r.text
        assert ok(owner.get("/api/v1/me")).json()["role"] == "owner"


def test_add_member_answers_do_not_tell_users_apart(server: Server, team: Tenant) -> None:
    """SEC-L6: unknown, disabled and platform-admin users get the same 404, body and all."""
    disabled, other_admin, fine = unique("off"), unique("adm"), unique("ok")
    with server.client() as admin:
        ok(admin.post("/api/v1/users", json={"name": disabled}), 201)
        ok(admin.patch(f"/api/v1/users/{disabled}", json={"disabled": True}))
        ok(admin.post("/api/v1/users", json={"name": other_admin, "platform_admin": True}), 201)
        ok(admin.post("/api/v1/users", json={"name": fine}), 201)
        admin_id = _user_id(server, "admin")
    answers = []
    with server.client(team.keys["owner"]) as owner:
        for ref in ("no-such-user", disabled, other_admin, "admin", admin_id, "usr_0000000000000000"):
            r = owner.post("/api/v1/members", json={"user": ref, "role": "reader"})
            assert r.status_code == 404, (ref, r.text)
            err = r.json()["error"]
            answers.append({k: v for k, v in err.items() if k != "request_id"})
            assert "users list" not in err["message"]  # a command owners cannot run
        ok(owner.post("/api/v1/members", json={"user": fine, "role": "reader"}), 201)
        members = {m["user"] for m in ok(owner.get("/api/v1/members")).json()}
        assert owner.get("/api/v1/users").status_code == 403  # only platform admins list users
    assert all(a == answers[0] for a in answers), answers
    assert members.isdisjoint({disabled, other_admin, "admin"})


def test_adding_a_member_twice_is_a_conflict(server: Server, team: Tenant) -> None:
    """Found by the stateful test: the second add answered 500 (the session was read after its failed insert)."""
    with server.client() as admin:
        for _ in range(2):
            r = admin.post(f"/api/v1/workspaces/{team.name}/members", json={"user": "admin", "role": "reader"})
        assert r.status_code == 409 and "already a member" in r.json()["error"]["message"], r.text
    with server.client(team.keys["owner"]) as owner:
        r = owner.post("/api/v1/members", json={"user": team.users["reader"], "role": "owner"})
        assert r.status_code == 409, r.text
        assert {m["user"]: m["role"] for m in ok(owner.get("/api/v1/members")).json()}[team.users["reader"]] == "reader"


def _user_id(server: Server, name: str) -> str:
    with server.client() as admin:
        return next(u["id"] for u in ok(admin.get("/api/v1/users")).json() if u["name"] == name)
