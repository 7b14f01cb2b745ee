"""Portal sessions under random sequences of legal calls (hypothesis state machine, real SQLite):
sign in with a key or a one-time link, sign out, revoke a key, change a member's role, disable a
user, let a session go idle or pass its absolute end, use a link twice.

Invariant after every step: a session acts with exactly its key's power now (the role its user
holds now, never a role it held at sign-in), and a session is alive only while its key is
unrevoked, its user enabled, it was not signed out and neither expiry passed. A link signs in
once at most.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from sqlalchemy import update

from modelport.config import Settings
from modelport.db import migrate
from modelport.db.engine import Database
from modelport.db.tables import PortalSession
from modelport.errors import Unauthenticated
from modelport.identity.roles import Role
from modelport.identity.service import IdentityService
from modelport.portal.sessions import SessionStore, csrf_matches

USERS = ("u1", "u2", "u3")
LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)


@dataclass
class Live:
    token: str
    user: str
    key: str
    ended: bool = False


class Sessions(RuleBasedStateMachine):
    sessions = Bundle("sessions")
    links = Bundle("links")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(self._tmp())
        self.db = Database(f"sqlite:///{self.tmp / 'm.db'}")
        migrate.upgrade(self.db.engine)
        self.identity = IdentityService(self.db)
        self.admin_secret = self.identity.bootstrap()
        self.store = SessionStore(self.db, self.identity, Settings(home=self.tmp))
        admin = self.identity.authenticate(self.admin_secret)
        self.role: dict[str, Role] = {}
        self.disabled: set[str] = set()
        self.keys: dict[str, tuple[str, str]] = {}  # user -> (secret, key id), the user's current key
        self.revoked: set[str] = set()
        self.owner_secret = self.identity.create_api_key(admin, "owner").secret
        self.made: list[Live] = []
        for u in USERS:
            self.identity.create_user(admin, u)
            self.identity.add_member(admin, u, Role.READER)
            self.role[u] = Role.READER
            self._new_key(u)

    @classmethod
    def _tmp(cls) -> str:
        import tempfile

        return tempfile.mkdtemp(prefix="portal-sessions-")

    def _new_key(self, user: str) -> None:
        admin = self.identity.authenticate(self.admin_secret)
        created = self.identity.create_api_key_for_user(admin, user, "default")
        self.keys[user] = (created.secret, created.row.id)

    def teardown(self) -> None:
        self.db.dispose()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- rules -------------------------------------------------------------------------------

    @rule(target=sessions, user=st.sampled_from(USERS))
    def sign_in(self, user: str) -> Live:
        secret, key_id = self.keys[user]
        try:
            cur = self.store.sign_in_with_key(secret)
        except Unauthenticated:
            assert key_id in self.revoked or user in self.disabled
            return Live("", user, key_id, ended=True)
        assert key_id not in self.revoked and user not in self.disabled
        assert cur.principal.role == self.role[user]
        self.made.append(Live(cur.token, user, key_id))
        return self.made[-1]

    @rule(target=links)
    def issue_link(self) -> str:
        return self.store.issue_link(self.owner_secret)

    @rule(target=sessions, token=consumes(links), twice=st.booleans())
    def use_link(self, token: str, twice: bool) -> Live:
        cur = self.store.redeem_link(token)
        if twice:
            with pytest.raises(Unauthenticated):
                self.store.redeem_link(token)
        self.made.append(Live(cur.token, "admin", cur.principal.key_id))
        return self.made[-1]

    @rule(s=sessions)
    def sign_out(self, s: Live) -> None:
        self.store.end(s.token)
        s.ended = True

    @rule(user=st.sampled_from(USERS))
    def revoke_key_and_make_another(self, user: str) -> None:
        owner = self.identity.authenticate(self.owner_secret)
        key_id = self.keys[user][1]
        self.identity.revoke_api_key(owner, key_id)
        self.revoked.add(key_id)
        if user not in self.disabled:
            self._new_key(user)

    @rule(user=st.sampled_from(USERS), role=st.sampled_from(list(Role)))
    def set_role(self, user: str, role: Role) -> None:
        owner = self.identity.authenticate(self.owner_secret)
        self.identity.set_member_role(owner, user, role)
        self.role[user] = role

    @rule(user=st.sampled_from(USERS))
    def disable(self, user: str) -> None:
        admin = self.identity.authenticate(self.admin_secret)
        self.identity.set_user_disabled(admin, user, True)
        self.disabled.add(user)

    @rule(s=sessions, column=st.sampled_from(["last_seen_at", "expires_at"]))
    def expire(self, s: Live, column: str) -> None:
        if not s.token:
            return
        with self.db.session() as db:
            db.execute(update(PortalSession).where(PortalSession.id == hashlib.sha256(s.token.encode()).hexdigest())
                       .values({column: LONG_AGO}))
        s.ended = True

    # -- the invariant ---------------------------------------------------------------------------

    @invariant()
    def sessions_act_with_exactly_their_keys_power_now(self) -> None:
        for s in self._all():
            cur = self.store.current(s.token)
            alive = (not s.ended and s.key not in self.revoked and s.user not in self.disabled)
            assert (cur is not None) == alive, (s, cur)
            if cur is not None:
                assert cur.principal.key_id == s.key
                if s.user != "admin":
                    assert cur.principal.role == self.role[s.user]
                    assert not cur.principal.is_platform_admin
                assert csrf_matches(s.token, cur.csrf)

    def _all(self) -> list[Live]:
        return self.made


Sessions.TestCase.settings = settings(max_examples=15, stateful_step_count=12, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_portal_sessions_state_machine = Sessions.TestCase
