"""Rate limits on the control plane: `PATCH /api/v1/deployments/{name}` with `rate_limits`
(owners, at most the caps) and `rate_limit_caps` (platform admins), and the CLI's
`deployments update --rpm/--tpm/--rpm-cap/--tpm-cap`, on a real server.

Abuse first: lower roles get 403, another workspace 404, no key 401, bad values 422 or 400
naming what to fix; and over random sequences of PATCHes by the owner, the admin and the
contributor, the limit the gateway enforces is never above the cap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.support.cli import table
from tests.support.inference import CHAT_MODEL, create_deployment
from tests.support.server import Server, start_lean
from tests.support.tenants import Tenant, make_tenant, ok, unique

DEFAULT = {"requests_per_minute": 1000, "tokens_per_minute": 200_000}


@dataclass
class World:
    server: Server
    team: Tenant
    other: Tenant


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    s = start_lean(tmp_path_factory.mktemp("rate-api") / "home", {CHAT_MODEL: "echo"})
    try:
        team, other = make_tenant(s), make_tenant(s)
        with s.client() as admin:  # the platform admin sets caps as a member (a reader) of the team
            ok(admin.post(f"/api/v1/workspaces/{team.name}/members", json={"user": "admin", "role": "reader"}))
        yield World(s, team, other)
    finally:
        s.stop()


def deployment(world: World, **fields) -> str:  # type: ignore[no-untyped-def]
    name = unique("dep")
    create_deployment(world.server, name, CHAT_MODEL, key=world.team.keys["owner"], wait=False, **fields)
    return name


def patch(world: World, who: str, name: str, body: dict, team: Tenant | None = None) -> httpx.Response:
    team = team or world.team
    if who == "admin":
        with world.server.client(headers={"X-Modelport-Workspace": world.team.name}) as c:
            return c.patch(f"/api/v1/deployments/{name}", json=body)
    with world.server.client(team.keys[who] if who else "") as c:
        return c.patch(f"/api/v1/deployments/{name}", json=body)


def show(world: World, name: str) -> dict:
    with world.server.client(world.team.keys["owner"]) as c:
        return ok(c.get(f"/api/v1/deployments/{name}")).json()


def test_new_deployments_get_the_platform_defaults(world: World) -> None:
    d = show(world, deployment(world))
    assert d["rate_limits"] == DEFAULT and d["rate_limit_caps"] == DEFAULT


def test_owner_lowers_the_limits_and_the_audit_log_says_so(world: World) -> None:
    name = deployment(world)
    r = ok(patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 60, "tokens_per_minute": 5000}}))
    assert r.json()["rate_limits"] == {"requests_per_minute": 60, "tokens_per_minute": 5000}
    assert r.json()["rate_limit_caps"] == DEFAULT
    # One field at a time; the other keeps its value; null goes back to the cap.
    ok(patch(world, "owner", name, {"rate_limits": {"tokens_per_minute": 7000}}))
    assert show(world, name)["rate_limits"] == {"requests_per_minute": 60, "tokens_per_minute": 7000}
    ok(patch(world, "owner", name, {"rate_limits": {"requests_per_minute": None}}))
    assert show(world, name)["rate_limits"] == {"requests_per_minute": 1000, "tokens_per_minute": 7000}
    with world.server.client(world.team.keys["owner"]) as c:
        events = ok(c.get("/api/v1/audit", params={"action": "deployment.update"})).json()
    mine = [e for e in events if e["resource_id"] == show(world, name)["id"]]
    assert {"requests_per_minute": 60, "tokens_per_minute": 5000} in [e["detail"].get("rate_limits") for e in mine]


@pytest.mark.parametrize("who", ["contributor", "reader"])
def test_lower_roles_cannot_change_rate_limits(world: World, who: str) -> None:
    name = deployment(world)
    r = patch(world, who, name, {"rate_limits": {"requests_per_minute": 10}})
    assert r.status_code == 403, r.text
    assert "deployments.rate_limits" in r.json()["error"]["message"]
    assert show(world, name)["rate_limits"] == DEFAULT


@pytest.mark.parametrize("who", ["owner", "contributor", "reader"])
def test_only_platform_admins_set_caps(world: World, who: str) -> None:
    name = deployment(world)
    r = patch(world, who, name, {"rate_limit_caps": {"requests_per_minute": 5000}})
    assert r.status_code == 403 and "platform admin" in r.json()["error"]["message"]
    assert show(world, name)["rate_limit_caps"] == DEFAULT


def test_another_workspace_gets_404_and_no_key_401(world: World) -> None:
    name = deployment(world)
    r = patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 10}}, team=world.other)
    assert r.status_code == 404
    assert patch(world, "", name, {"rate_limits": {"requests_per_minute": 10}}).status_code == 401
    assert show(world, name)["rate_limits"] == DEFAULT


def test_above_the_cap_is_400_naming_the_cap(world: World) -> None:
    name = deployment(world)
    r = patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 1001}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["field"] == "rate_limits.requests_per_minute" and "cap of 1000" in err["message"]
    r = patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 10, "tokens_per_minute": 200_001}})
    assert r.status_code == 400 and "cap of 200000" in r.json()["error"]["message"]
    assert show(world, name)["rate_limits"] == DEFAULT  # nothing half-written


@pytest.mark.parametrize("value", [0, -1, "10", 1.5, True, 10**12, [], {"n": 1}])
def test_bad_values_are_422_naming_the_field(world: World, value: object) -> None:
    name = deployment(world)
    for field in ("requests_per_minute", "tokens_per_minute"):
        for key in ("rate_limits", "rate_limit_caps"):
            r = patch(world, "admin" if key == "rate_limit_caps" else "owner", name, {key: {field: value}})
            assert r.status_code == 422, (key, field, value, r.text)
            assert r.json()["error"]["field"] == f"{key}.{field}"
    r = patch(world, "owner", name, {"rate_limits": {"requests_per_second": 1}})
    assert r.status_code == 422 and "requests_per_second" in r.json()["error"]["field"]
    assert show(world, name)["rate_limits"] == DEFAULT


def test_a_huge_patch_is_413_before_it_is_read(world: World) -> None:
    name = deployment(world)
    body = b'{"rate_limits": {"requests_per_minute": 10}, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    with world.server.client(world.team.keys["owner"]) as c:
        r = c.patch(f"/api/v1/deployments/{name}", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert show(world, name)["rate_limits"] == DEFAULT


def test_admin_caps_pull_the_owners_limits_down(world: World) -> None:
    name = deployment(world)
    ok(patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 500, "tokens_per_minute": 900}}))
    r = ok(patch(world, "admin", name, {"rate_limit_caps": {"requests_per_minute": 100, "tokens_per_minute": 5000}}))
    assert r.json()["rate_limit_caps"] == {"requests_per_minute": 100, "tokens_per_minute": 5000}
    assert r.json()["rate_limits"] == {"requests_per_minute": 100, "tokens_per_minute": 900}
    r = patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 101}})
    assert r.status_code == 400 and "cap of 100" in r.json()["error"]["message"]
    # An admin may raise a cap above the platform default; the owner may then use it.
    ok(patch(world, "admin", name, {"rate_limit_caps": {"requests_per_minute": 5000}}))
    ok(patch(world, "owner", name, {"rate_limits": {"requests_per_minute": 4000}}))
    assert show(world, name)["rate_limits"]["requests_per_minute"] == 4000
    ok(patch(world, "admin", name, {"rate_limit_caps": {"requests_per_minute": None}}))  # back to the default
    assert show(world, name)["rate_limits"]["requests_per_minute"] == 1000


def test_cli_update_rpm_tpm_and_caps(world: World) -> None:
    name = deployment(world)
    owner, s = world.team.keys["owner"], world.server
    r = s.cli("deployments", "update", name, "--rpm", "120", "--tpm", "30000", key=owner)
    assert r.returncode == 0, r.stderr
    assert "120 (cap 1,000)" in r.stdout and "30,000 (cap 200,000)" in r.stdout
    r = s.cli("deployments", "update", name, "--rpm", "2000", key=owner)
    assert r.returncode != 0 and "cap of 1000" in r.stderr
    r = s.cli("deployments", "update", name, "--tpm", "10", key=world.team.keys["contributor"])
    assert r.returncode != 0 and "deployments.rate_limits" in r.stderr
    r = s.cli("--workspace", world.team.name, "deployments", "update", name, "--rpm-cap", "60", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["rate_limit_caps"]["requests_per_minute"] == 60 and d["rate_limits"]["requests_per_minute"] == 60
    r = s.cli("deployments", "list", key=owner)
    assert r.returncode == 0 and table(r.stdout)[0][0] == "NAME"


class LimitsNeverPassCaps(RuleBasedStateMachine):
    """The owner, the platform admin and the contributor PATCH one deployment in any order; what
    the API shows (and the gateway enforces) is always the owner's value clamped to the cap."""

    world: World

    def __init__(self) -> None:
        super().__init__()
        self.name = deployment(self.world)
        self.caps = dict(DEFAULT)
        self.own: dict[str, int | None] = {"requests_per_minute": None, "tokens_per_minute": None}

    values = st.one_of(st.none(), st.integers(min_value=1, max_value=3000))
    fields = st.sampled_from(["requests_per_minute", "tokens_per_minute"])

    @rule(field=fields, value=values)
    def owner_sets(self, field: str, value: int | None) -> None:
        r = patch(self.world, "owner", self.name, {"rate_limits": {field: value}})
        if value is not None and value > self.caps[field]:
            assert r.status_code == 400, r.text
        else:
            assert r.status_code == 200, r.text
            self.own[field] = value

    @rule(field=fields, value=values)
    def admin_caps(self, field: str, value: int | None) -> None:
        ok(patch(self.world, "admin", self.name, {"rate_limit_caps": {field: value}}))
        self.caps[field] = DEFAULT[field] if value is None else value
        if self.own[field] is not None and self.own[field] > self.caps[field]:
            self.own[field] = self.caps[field]

    @rule(field=fields, value=values)
    def contributor_tries(self, field: str, value: int | None) -> None:
        assert patch(self.world, "contributor", self.name, {"rate_limits": {field: value}}).status_code == 403
        assert patch(self.world, "contributor", self.name, {"rate_limit_caps": {field: value}}).status_code == 403

    @invariant()
    def never_above_the_cap(self) -> None:
        d = show(self.world, self.name)
        for field in DEFAULT:
            assert d["rate_limit_caps"][field] == self.caps[field]
            assert d["rate_limits"][field] <= d["rate_limit_caps"][field]
            assert d["rate_limits"][field] == (self.own[field] or self.caps[field])


def test_no_sequence_of_patches_leaves_a_limit_above_its_cap(world: World) -> None:
    LimitsNeverPassCaps.world = world
    run_state_machine_as_test(LimitsNeverPassCaps, settings=settings(
        max_examples=8, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck)))
