"""Keys carry at most their maker's power, also keys made before that rule (the key-provenance migration).

On a real metadata store (SQLite and PostgreSQL): the store is built at the revision before
the rule, holds the keys the old code made (the bootstrap key, an admin's own key, an admin key
an owner made through the SEC-C1 chain, a member key the admin made) with the audit records the
old code wrote, and is then upgraded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from modelport.db import migrate
from modelport.db.engine import Database
from modelport.errors import Forbidden
from modelport.identity import secrets as keysecrets
from modelport.identity.roles import Role
from modelport.identity.service import IdentityService


@dataclass
class Legacy:
    db: Database
    secrets: dict[str, str]  # name -> secret
    ids: dict[str, str]  # name -> key id


def _key(conn: sa.Connection, user_id: str, ws_id: str) -> tuple[str, str]:
    lookup, secret = keysecrets.generate("mpk")
    key_id = f"key_{lookup}"
    conn.execute(sa.text("INSERT INTO api_keys (id, name, digest, user_id, workspace_id, created_at) "
                         "VALUES (:id, '', :d, :u, :w, CURRENT_TIMESTAMP)"),
                 {"id": key_id, "d": keysecrets.digest(secret), "u": user_id, "w": ws_id})
    return key_id, secret


def _created(conn: sa.Connection, key_id: str, actor: str, ws_id: str) -> None:
    """The record the old create_api_key wrote (plus the refused attempt the middleware wrote)."""
    for outcome in ("denied", "success"):
        conn.execute(sa.text("INSERT INTO audit_events (at, actor_user_id, workspace_id, action, resource_type, "
                             "resource_id, outcome, detail) VALUES (CURRENT_TIMESTAMP, :a, :w, 'apikey.create', "
                             "'apikey', :r, :o, '{}')"),
                     {"a": "usr_eve" if outcome == "denied" else actor, "w": ws_id,
                      "r": key_id if outcome == "success" else None, "o": outcome})


def _before_provenance(cfg) -> str:  # type: ignore[no-untyped-def]
    """The revision just before the one that records key provenance (found by its title)."""
    rev = next(r for r in ScriptDirectory.from_config(cfg).walk_revisions() if r.doc.startswith("api key provenance"))
    assert isinstance(rev.down_revision, str)
    return rev.down_revision


@pytest.fixture
def legacy(db_url: str) -> Iterator[Legacy]:
    db = Database(db_url)
    cfg = migrate.alembic_config(db.engine)
    command.upgrade(cfg, _before_provenance(cfg))
    secrets, ids = {}, {}
    with db.engine.begin() as conn:
        for uid, name, admin in (("usr_admin", "admin", True), ("usr_alice", "alice", False)):
            conn.execute(sa.text("INSERT INTO users (id, name, is_platform_admin, disabled, created_at) "
                                 "VALUES (:i, :n, :a, :f, CURRENT_TIMESTAMP)"),
                         {"i": uid, "n": name, "a": admin, "f": False})
        for ws, name in (("ws_default", "default"), ("ws_team", "team")):
            conn.execute(sa.text("INSERT INTO workspaces (id, name, description, created_at) "
                                 "VALUES (:i, :n, '', CURRENT_TIMESTAMP)"), {"i": ws, "n": name})
        for ws, uid, role in (("ws_default", "usr_admin", "owner"), ("ws_team", "usr_alice", "owner"),
                              ("ws_team", "usr_admin", "reader")):
            conn.execute(sa.text("INSERT INTO memberships (workspace_id, user_id, role, created_at) "
                                 "VALUES (:w, :u, :r, CURRENT_TIMESTAMP)"), {"w": ws, "u": uid, "r": role})
        for name, user, ws, maker in (("bootstrap", "usr_admin", "ws_default", None),
                                      ("admin-own", "usr_admin", "ws_default", "usr_admin"),
                                      ("stolen", "usr_admin", "ws_team", "usr_alice"),
                                      ("alice", "usr_alice", "ws_team", "usr_admin")):
            ids[name], secrets[name] = _key(conn, user, ws)
            if maker:
                _created(conn, ids[name], maker, ws)
    migrate.upgrade(db.engine)
    try:
        yield Legacy(db, secrets, ids)
    finally:
        db.dispose()


def test_the_migration_classifies_old_keys_by_their_maker(legacy: Legacy) -> None:
    with legacy.db.engine.connect() as conn:
        rows = {r.id: (r.created_by, r.platform_admin) for r in conn.execute(
            sa.text("SELECT id, created_by, platform_admin FROM api_keys"))}
    assert rows == {legacy.ids["bootstrap"]: ("usr_admin", True), legacy.ids["admin-own"]: ("usr_admin", True),
                    legacy.ids["stolen"]: ("usr_alice", False), legacy.ids["alice"]: ("usr_admin", False)}


def test_a_stolen_admin_key_has_no_platform_power(legacy: Legacy) -> None:
    svc = IdentityService(legacy.db)
    stolen = svc.authenticate(legacy.secrets["stolen"])
    assert (stolen.user_name, stolen.workspace_name, stolen.role, stolen.is_platform_admin) == (
        "admin", "team", Role.READER, False)
    for action in ("platform.users", "platform.audit", "platform.encryption_keys", "platform.workspaces"):
        assert not stolen.can(action)
    with pytest.raises(Forbidden, match="platform admin"):
        svc.create_user(stolen, "mallory", platform_admin=True)
    with pytest.raises(Forbidden, match="platform admin"):
        svc.authenticate(legacy.secrets["stolen"], "default")  # no --workspace override either
    # A key it makes for itself has its maker's power: none.
    again = svc.create_api_key(stolen, name="laundered")
    assert again.row.platform_admin is False
    assert svc.authenticate(again.secret).is_platform_admin is False
    # The admin's own keys keep their power.
    for name in ("bootstrap", "admin-own"):
        assert svc.authenticate(legacy.secrets[name]).is_platform_admin is True
    assert svc.authenticate(legacy.secrets["bootstrap"], "team").role is Role.READER
