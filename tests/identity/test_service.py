"""The identity service on a real metadata store (SQLite and PostgreSQL): bootstrap, API keys,
memberships, and what is (not) stored."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from modelport.db import migrate
from modelport.db.base import utcnow
from modelport.db.engine import Database
from modelport.db.tables import ApiKey, AuditEvent, Membership, User, Workspace
from modelport.errors import Conflict, Forbidden, NotFound, Unauthenticated
from modelport.identity import secrets as keysecrets
from modelport.identity.principal import Principal
from modelport.identity.roles import Role
from modelport.identity.service import IdentityService

SECRET_RE = re.compile(r"^mpk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass
class Store:
    db: Database
    svc: IdentityService
    admin_secret: str
    url: str

    @property
    def admin(self) -> Principal:
        return self.svc.authenticate(self.admin_secret)

    def as_admin_in(self, workspace: str) -> Principal:
        return self.svc.authenticate(self.admin_secret, workspace)

    def user_with_key(self, name: str, workspace: str = "default", role: Role = Role.READER) -> str:
        """A new user, member of `workspace` with `role`, and its first API key (made by the admin)."""
        self.svc.create_user(self.admin, name)
        self.svc.add_member(self.admin, name, role, workspace=workspace)
        return self.svc.create_api_key_for_user(self.admin, name, workspace, name="first").secret


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    db = Database(db_url)
    migrate.upgrade(db.engine)
    svc = IdentityService(db)
    secret = svc.bootstrap()
    assert secret is not None
    try:
        yield Store(db=db, svc=svc, admin_secret=secret, url=db_url)
    finally:
        db.dispose()


def _audit(store: Store, action: str) -> list[AuditEvent]:
    with store.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_bootstrap_happens_once(store: Store) -> None:
    assert store.svc.bootstrap() is None
    assert IdentityService(store.db).bootstrap() is None  # a restart does not make a second admin
    with store.db.session() as s:
        admins = list(s.scalars(select(User).where(User.is_platform_admin.is_(True))))
        assert [u.name for u in admins] == ["admin"]
        ws = s.scalar(select(Workspace).where(Workspace.name == "default"))
        m = s.scalar(select(Membership).where(Membership.workspace_id == ws.id))
        assert (m.user_id, m.role) == (admins[0].id, "owner")
        assert s.scalar(select(sa.func.count()).select_from(ApiKey)) == 1
    p = store.admin
    assert (p.user_name, p.workspace_name, p.role, p.is_platform_admin) == ("admin", "default", Role.OWNER, True)
    assert len(_audit(store, "platform.bootstrap")) == 1


def test_key_secrets_are_256_random_bits_and_shown_once(store: Store) -> None:
    created = [store.svc.create_api_key(store.admin, name=f"k{i}") for i in range(40)]
    bodies = set()
    for c in [*created]:
        m = SECRET_RE.match(c.secret)
        assert m, "format mpk_<lookup>_<secret>"
        assert c.row.id == f"key_{m.group(1)}"
        raw = base64.urlsafe_b64decode(m.group(2) + "=")
        assert len(raw) == 32  # 256 bits
        bodies.add(raw)
        assert c.row.digest == keysecrets.digest(c.secret)
    assert len(bodies) == len(created)
    # The bits look random: about half of all bits are set.
    ones = sum(bin(b).count("1") for raw in bodies for b in raw)
    assert 0.45 < ones / (len(bodies) * 256) < 0.55
    # Listing shows the keys but no secret: nothing in any listed row equals or contains one.
    listed = store.svc.list_api_keys(store.admin)
    values = [str(getattr(k, col.key)) for k in listed for col in sa.inspect(ApiKey).columns]
    for c in created:
        assert not any(c.secret in v or c.secret.split("_", 2)[2] in v for v in values)


def _sqlite_bytes(url: str) -> bytes:
    path = Path(sa.engine.make_url(url).database)
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def _pg_hits(db: Database, needle: str) -> list[str]:
    """Every text-like column of every table on PostgreSQL that contains `needle`."""
    hits = []
    with db.engine.connect() as conn:
        cols = conn.execute(sa.text(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')")).all()
        assert len(cols) > 10
        for table, col in cols:
            n = conn.execute(sa.text(f'SELECT count(*) FROM "{table}" WHERE "{col}"::text LIKE :p'),
                             {"p": f"%{needle}%"}).scalar()
            if n:
                hits.append(f"{table}.{col}")
    return hits


def test_only_the_digest_of_a_key_is_stored(store: Store) -> None:
    secrets_ = [store.admin_secret, store.user_with_key("alice")]
    secrets_ += [store.svc.create_api_key(store.admin, name="more", expires_in_days=3).secret for _ in range(3)]
    for s in secrets_:
        store.svc.authenticate(s)
    store.svc.last_used.flush(store.db)
    store.svc.revoke_api_key(store.admin, store.svc.authenticate(secrets_[-1]).key_id)
    for s in secrets_:
        body = s.split("_", 2)[2]
        digest = keysecrets.digest(s)
        if store.url.startswith("sqlite"):
            data = _sqlite_bytes(store.url)
            assert s.encode() not in data and body.encode() not in data
            assert body[:16].encode() not in data
            assert digest.encode() in data  # control: the scan does see what is stored
        else:
            assert _pg_hits(store.db, body[:16]) == []
            assert _pg_hits(store.db, digest) == ["api_keys.digest"]  # control


def test_bad_secrets_are_refused(store: Store) -> None:
    lookup = store.admin_secret.split("_")[1]
    for bad in [None, "", "nonsense", f"mpk_{lookup}_{'A' * 43}", store.admin_secret[:-1] + "x",
                store.admin_secret.replace("mpk_", "mpd_", 1), f"mpk_{'0' * 16}_{'A' * 43}"]:
        with pytest.raises(Unauthenticated):
            store.svc.authenticate(bad)


def test_revoked_key_stops_at_once(store: Store) -> None:
    key = store.svc.create_api_key(store.admin, name="short-lived")
    p = store.svc.authenticate(key.secret)  # now in the auth cache
    revoked = store.svc.revoke_api_key(store.admin, p.key_id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated, match="revoked"):
        store.svc.authenticate(key.secret)
    assert store.svc.authenticate(store.admin_secret).key_id != p.key_id  # others still work


def test_expired_key_is_refused_even_from_the_cache(store: Store) -> None:
    key = store.svc.create_api_key(store.admin, name="soon", expires_in_days=1)
    assert key.row.expires_at is not None
    assert timedelta(hours=23) < key.row.expires_at - utcnow() <= timedelta(days=1)
    with store.db.session() as s:
        s.execute(sa.update(ApiKey).where(ApiKey.id == key.row.id).values(expires_at=utcnow() + timedelta(seconds=1)))
    store.svc.authenticate(key.secret)  # valid for one more second, and cached
    time.sleep(1.2)
    with pytest.raises(Unauthenticated, match="expired"):
        store.svc.authenticate(key.secret)


def test_disabled_user_cannot_authenticate(store: Store) -> None:
    secret = store.user_with_key("bob")
    store.svc.authenticate(secret)
    store.svc.set_user_disabled(store.admin, "bob", True)
    with pytest.raises(Unauthenticated, match="disabled"):
        store.svc.authenticate(secret)
    store.svc.set_user_disabled(store.admin, "bob", False)
    assert store.svc.authenticate(secret).user_name == "bob"
    with pytest.raises(Conflict):
        store.svc.set_user_disabled(store.admin, "admin", True)


def test_removed_member_keys_are_revoked(store: Store) -> None:
    secret = store.user_with_key("carol", role=Role.CONTRIBUTOR)
    key_id = store.svc.authenticate(secret).key_id
    store.svc.remove_member(store.admin, "carol")
    with store.db.session() as s:
        assert s.get(ApiKey, key_id).revoked_at is not None
    with pytest.raises(Unauthenticated):
        store.svc.authenticate(secret)


def test_last_used_is_written_by_flush_not_by_the_request(store: Store) -> None:
    secret = store.user_with_key("dave")
    key_id = store.svc.authenticate(secret).key_id
    store.svc.last_used.flush(store.db)  # the setup's own uses
    before = utcnow()
    for _ in range(5):
        store.svc.authenticate(secret)
    with store.db.session() as s:
        row = s.get(ApiKey, key_id)
        assert row.last_used_at is None or row.last_used_at < before  # nothing written yet
    assert store.svc.last_used.flush(store.db) == 1  # one key, one write, however many requests
    with store.db.session() as s:
        assert s.get(ApiKey, key_id).last_used_at >= before
    assert store.svc.last_used.flush(store.db) == 0


def test_admin_reaches_a_workspace_only_as_a_member(store: Store) -> None:
    store.svc.create_user(store.admin, "erin")
    store.svc.create_workspace(store.admin, "erins", owner="erin")
    assert _audit(store, "workspace.member.self_add") == []  # the admin did not join it
    with pytest.raises(NotFound):
        store.as_admin_in("erins")
    with pytest.raises(NotFound):
        store.as_admin_in("no-such-workspace")
    erin_secret = store.user_with_key("frank")  # a non-admin of default
    with pytest.raises(Forbidden):
        store.svc.authenticate(erin_secret, "erins")
    store.svc.add_member(store.admin, "admin", Role.OWNER, workspace="erins")
    events = _audit(store, "workspace.member.self_add")
    assert len(events) == 1 and events[0].workspace_id == store.svc.get_workspace(store.admin, "erins").id
    p = store.as_admin_in("erins")
    assert (p.workspace_name, p.role) == ("erins", Role.OWNER)
    # Creating a workspace that the admin itself owns is a self-add too.
    store.svc.create_workspace(store.admin, "admins-own")
    assert len(_audit(store, "workspace.member.self_add")) == 2


def test_a_workspace_keeps_at_least_one_owner(store: Store) -> None:
    admin = store.admin
    with pytest.raises(Conflict, match="at least one enabled owner"):
        store.svc.set_member_role(admin, "admin", Role.READER)
    with pytest.raises(Conflict, match="at least one enabled owner"):
        store.svc.remove_member(admin, "admin")
    secret = store.user_with_key("grace", role=Role.OWNER)
    grace = store.svc.authenticate(secret)
    with pytest.raises(Forbidden, match="platform admin"):
        store.svc.set_member_role(grace, "admin", Role.READER)  # an owner does not touch the admin
    store.svc.set_member_role(admin, "admin", Role.READER)  # the admin may: grace is an owner too
    with pytest.raises(Conflict, match="at least one enabled owner"):
        store.svc.remove_member(grace, "grace")
    with pytest.raises(Forbidden):
        store.svc.set_member_role(store.admin, "grace", Role.READER)  # the admin is a reader here now
    members = {m.user.name: m.role for m in store.svc.list_members(grace)}
    assert members == {"admin": "reader", "grace": "owner"}
