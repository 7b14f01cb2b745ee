"""Two real `modelport serve` processes on one PostgreSQL database: a policy saved or deleted on
one is in force for the very next request on the other, whoever changed it and whatever the
clocks say; when the policy version cannot be read, governed requests are refused; the cap of
policies per scope holds when both servers save at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.support import pg
from tests.support.policies import fill_workspace, harmless
from tests.support.server import ECHO_MODEL, Server, start_server
from tests.support.tenants import make_tenant, ok, unique

pytestmark = pytest.mark.postgres

SMOL = "SmolLM2-135M-Instruct"
NO_PUBLIC = ('forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource) '
             'when { resource.public_network_access };')
PRIVATE_NET = {"public_access": False, "allowed_ranges": ["127.0.0.0/8"]}


@pytest.fixture(scope="module")
def database(postgres_admin_url: str | None) -> Iterator[str]:
    if postgres_admin_url is None:
        pytest.skip("PostgreSQL not available: set MODELPORT_TEST_DATABASE_URL or install the server binaries")
    url = pg.create_database(postgres_admin_url)
    try:
        yield url
    finally:
        pg.drop_database(postgres_admin_url, url)


@pytest.fixture(scope="module")
def servers(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    import json

    env = {"MODELPORT_DATABASE_URL": database, "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
           "MODELPORT_FINETUNE_CONCURRENCY": "0",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({ECHO_MODEL: "echo", SMOL: "echo"})}
    first = start_server(tmp_path_factory.mktemp("srv") / "home", env_extra=env)
    try:
        home = tmp_path_factory.mktemp("srv") / "home"
        home.mkdir(parents=True)
        (home / "admin.key").write_text(first.admin_key + "\n")  # the installation's admin, made by the first
        second = start_server(home, env_extra={**env, "MODELPORT_LOAD_BUNDLED_MODELS": "false"})
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def deploy(c: httpx.Client, **body: object) -> httpx.Response:
    return c.post("/api/v1/deployments", json={"name": unique("d"), "model": SMOL, **body})


def denied_by(r: httpx.Response) -> list[str]:
    assert r.status_code == 403, r.text
    return r.json()["error"]["details"]["policies"]


def test_a_save_or_delete_on_one_server_holds_at_the_next_request_on_the_other(servers) -> None:
    a, b = servers
    with a.client() as on_a, b.client(a.admin_key) as on_b:
        for _ in range(3):
            ok(on_a.put("/api/v1/policies/no-public", json={"cedar": NO_PUBLIC, "scope": "platform"}), 201)
            assert denied_by(deploy(on_b)) == ["no-public"]
            ok(deploy(on_b, network=PRIVATE_NET), 201)
            ok(on_a.delete("/api/v1/policies/no-public", params={"scope": "platform"}), 204)
            ok(deploy(on_b), 201)
        # And the other way round.
        ok(on_b.put("/api/v1/policies/no-public", json={"cedar": NO_PUBLIC, "scope": "platform"}), 201)
        assert denied_by(deploy(on_a)) == ["no-public"]
        ok(on_b.delete("/api/v1/policies/no-public", params={"scope": "platform"}), 204)
        ok(deploy(on_a), 201)


def test_a_change_made_in_sql_with_an_old_stamp_holds_on_both(servers, database: str) -> None:
    """Review L2: a change the old check could miss (same row count, an older updated_at, as from
    a server whose clock is behind) is in force at the next request on both servers."""
    a, b = servers
    with a.client() as on_a:
        ok(on_a.put("/api/v1/policies/flip", json={"cedar": harmless(1), "scope": "platform"}), 201)
    engine = sa.create_engine(database)
    try:
        with engine.begin() as conn:
            text = conn.execute(sa.text("SELECT cedar FROM policies WHERE policy_id = 'flip'")).scalar_one()
            conn.execute(sa.text("UPDATE policies SET cedar = :c, updated_at = '2001-01-01T00:00:00+00:00' "
                                 "WHERE policy_id = 'flip'"), {"c": text.replace(harmless(1), NO_PUBLIC)})
        for server in (a, b):
            with server.client(a.admin_key) as c:
                assert denied_by(deploy(c)) == ["flip"]
    finally:
        engine.dispose()
        with a.client() as on_a:
            ok(on_a.delete("/api/v1/policies/flip", params={"scope": "platform"}), 204)


def test_an_unreadable_policy_version_refuses_governed_requests(servers, database: str) -> None:
    """Fail closed: with the version table gone, a deploy is refused (503) and nothing is written;
    once it is back, the same deploy goes through."""
    a, b = servers
    engine = sa.create_engine(database)
    name = unique("refused")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE policy_versions RENAME TO policy_versions_away"))
        try:
            with b.client(a.admin_key) as on_b:
                r = on_b.post("/api/v1/deployments", json={"name": name, "model": SMOL, "network": PRIVATE_NET})
                assert r.status_code == 503, r.text
                assert "could not be checked" in r.json()["error"]["message"]
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE policy_versions_away RENAME TO policy_versions"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM deployments WHERE name = :n"), {"n": name}).scalar() == 0
        with b.client(a.admin_key) as on_b:
            ok(on_b.post("/api/v1/deployments", json={"name": name, "model": SMOL, "network": PRIVATE_NET}), 201)
    finally:
        engine.dispose()


def test_the_cap_holds_when_both_servers_save_at_once(servers) -> None:
    """At 199 policies, each server saves a new one at the same moment, five times over: one is
    saved and the other refused (409), never 201 policies."""
    a, b = servers
    t = make_tenant(a, unique("race"), roles=("owner",))
    with a.client(t.keys["owner"]) as on_a, b.client(t.keys["owner"]) as on_b:
        fill_workspace(on_a, 198)
        answers: list[int] = []
        for round_ in range(5):
            barrier = threading.Barrier(2)

            def put(c: httpx.Client, policy_id: str) -> None:
                barrier.wait()
                answers.append(c.put(f"/api/v1/policies/{policy_id}", json={"cedar": harmless(900)}).status_code)

            # 199 first, then the race for the 200th and a 201st.
            ok(on_a.put(f"/api/v1/policies/race-{round_}", json={"cedar": harmless(800)}), 201)
            threads = [threading.Thread(target=put, args=(c, f"race-{round_}-{i}")) for i, c in enumerate((on_a, on_b))]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            ids = [p["id"] for p in ok(on_a.get("/api/v1/policies")).json() if p["scope"] == "workspace"]
            assert len(ids) == 200, len(ids)
            for policy_id in ids:  # back to 198 for the next round
                if policy_id.startswith(f"race-{round_}"):
                    ok(on_b.delete(f"/api/v1/policies/{policy_id}"), 204)
        assert sorted(answers) == [201] * 5 + [409] * 5


def test_the_version_read_survives_a_dead_pooled_connection_and_fails_closed(database: str) -> None:
    """The version read has a small pool of its own without the pre-ping (its round trip doubled
    the read). A pooled connection that the server ended is dropped and the read tried once more;
    a read that still fails refuses the request (503), and works again once the store answers."""
    from modelport.db import migrate
    from modelport.db.engine import Database
    from modelport.errors import ServiceUnavailable
    from modelport.identity.principal import Principal
    from modelport.identity.roles import Role
    from modelport.policies.engine import PolicyEngine
    from modelport.policies.facts import ModelFacts

    db = Database(database)
    migrate.upgrade(db.engine)
    engine = PolicyEngine(db)
    actor = Principal(user_id="usr_v", user_name="v", is_platform_admin=False, key_id="key_v", workspace_id="ws_v",
                      workspace_name="", role=Role.CONTRIBUTOR)
    model = ModelFacts(id="mdl_v", name="m", version="1", publisher="p", license="MIT", format="gguf",
                       task="chat-completion", source="bundled", curated=True, scan_status="passed", sha256="0" * 64,
                       offer="", owner="platform")
    admin = sa.create_engine(database)
    try:
        assert db.light is not db.engine and not db.light.pool._pre_ping  # type: ignore[attr-defined]
        assert engine.enforce(actor, "download_model", model).allowed
        with db.light.connect() as conn:  # the pooled connection's backend
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with admin.begin() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        assert engine.enforce(actor, "download_model", model).allowed  # the dead one dropped, read again
        with admin.begin() as conn:
            conn.execute(sa.text("ALTER TABLE policy_versions RENAME TO policy_versions_away"))
        try:
            with pytest.raises(ServiceUnavailable) as refused:
                engine.enforce(actor, "download_model", model)
            assert refused.value.status_code == 503
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text("ALTER TABLE policy_versions_away RENAME TO policy_versions"))
        assert engine.enforce(actor, "download_model", model).allowed
    finally:
        admin.dispose()
        db.dispose()
