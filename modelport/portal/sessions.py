"""Server-side portal sessions, one-time sign-in links and CSRF tokens.

A browser signs in with an API key (or a one-time link printed for the local admin) and gets a
random 256-bit session secret in a cookie (HttpOnly, SameSite=Strict, Secure under TLS). The
database keeps only SHA-256(secret) with the user, the workspace, the key it acts as and three
times: created (absolute expiry), last seen (idle expiry), expires. Every request re-derives the
principal from the key through the identity service, so a revoked key, a disabled user or a
deleted workspace ends the session at once, and the portal enforces the same role table as the
REST API.

The CSRF token is HMAC-SHA256(session secret, "csrf"): bound to the session, never stored, and a
new sign-in (a new session secret) gives a new one.

Sign-in through an organisation's identity provider (OIDC) fits here later: it creates a session
with `method="oidc"` and no `key_id`, and `principal` resolves such a session from the user's
membership instead of a key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from modelport.config import Settings
from modelport.db.base import utcnow
from modelport.db.engine import Database, rowcount
from modelport.db.tables import PortalSession, PortalSigninLink
from modelport.errors import Unauthenticated
from modelport.identity.principal import Principal
from modelport.identity.service import IdentityService

COOKIE = "mp_session"
#: last_seen_at is written at most this often per session (a write per page view would be waste).
TOUCH_EVERY = timedelta(seconds=60)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(session_token), sent or "")


@dataclass(frozen=True)
class Current:
    """The signed-in browser: its cookie secret (for the CSRF token) and who it acts as."""

    token: str
    principal: Principal
    expires_at: datetime

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


class SessionStore:
    def __init__(self, db: Database, identity: IdentityService, settings: Settings) -> None:
        self.db = db
        self.identity = identity
        self.idle = timedelta(minutes=settings.portal_session_idle_minutes)
        self.absolute = timedelta(hours=settings.portal_session_absolute_hours)
        self.link_ttl = timedelta(minutes=settings.portal_signin_link_minutes)

    # -- sign-in -------------------------------------------------------------------------------

    def sign_in_with_key(self, secret: str) -> Current:
        secret = secret.strip()
        if secret.startswith("mpd_"):
            raise Unauthenticated("A deployment key only calls its deployment; sign in with an API key (mpk_...).")
        principal = self.identity.authenticate(secret)
        return self._create(principal, "api_key")

    def issue_link(self, admin_key_secret: str) -> str:
        """A one-time link secret for the holder of this API key (the local admin's key file)."""
        principal = self.identity.authenticate(admin_key_secret)
        token = secrets.token_urlsafe(32)
        with self.db.session() as s:
            s.execute(delete(PortalSigninLink).where(PortalSigninLink.expires_at <= utcnow()))
            s.add(PortalSigninLink(id=_digest(token), key_id=principal.key_id, workspace_id=principal.workspace_id,
                                   expires_at=utcnow() + self.link_ttl))
        return token

    def redeem_link(self, token: str) -> Current:
        """Use a sign-in link: it works once (the row is deleted in the same transaction)."""
        refused = Unauthenticated("This sign-in link is not valid: it was used already, has expired, or was "
                                  "mistyped. Run `modelport signin-link` for a new one.")
        if not token or len(token) > 128:
            raise refused
        with self.db.session() as s:
            link = s.get(PortalSigninLink, _digest(token))
            if link is None:
                raise refused
            gone = rowcount(s.execute(delete(PortalSigninLink).where(PortalSigninLink.id == link.id)))
            if gone != 1 or link.expires_at <= utcnow():
                raise refused
            key_id = link.key_id
        return self._create(self.identity.principal_for_key(key_id), "link")

    def _create(self, principal: Principal, method: str) -> Current:
        self.sweep()
        token = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + self.absolute
        with self.db.session() as s:
            s.add(PortalSession(id=_digest(token), user_id=principal.user_id, workspace_id=principal.workspace_id,
                                key_id=principal.key_id, method=method, created_at=now, last_seen_at=now,
                                expires_at=expires))
        return Current(token=token, principal=principal, expires_at=expires)

    # -- each request --------------------------------------------------------------------------

    def current(self, token: str | None) -> Current | None:
        """The session of this cookie, or None (absent, unknown, idle too long, past its absolute
        expiry, or its key no longer valid). An ended session's row is removed."""
        if not token or len(token) > 128:
            return None
        sid = _digest(token)
        now = utcnow()
        with self.db.session() as s:
            row = s.get(PortalSession, sid)
            if row is None:
                return None
            if row.expires_at <= now or row.last_seen_at + self.idle <= now or row.key_id is None:
                s.delete(row)
                return None
            key_id, expires_at, seen = row.key_id, row.expires_at, row.last_seen_at
            if now - seen >= TOUCH_EVERY:
                s.execute(update(PortalSession).where(PortalSession.id == sid).values(last_seen_at=now))
        try:
            principal = self.identity.principal_for_key(key_id)
        except Unauthenticated:
            self.end(token)
            return None
        return Current(token=token, principal=principal, expires_at=expires_at)

    def end(self, token: str | None) -> None:
        if token and len(token) <= 128:
            with self.db.session() as s:
                s.execute(delete(PortalSession).where(PortalSession.id == _digest(token)))

    def end_for_key(self, key_id: str) -> None:
        """Sessions acting as a key end with it (a revoked key; the next request would refuse anyway)."""
        with self.db.session() as s:
            s.execute(delete(PortalSession).where(PortalSession.key_id == key_id))

    def sweep(self) -> int:
        now = utcnow()
        with self.db.session() as s:
            n = rowcount(s.execute(delete(PortalSession).where(
                (PortalSession.expires_at <= now) | (PortalSession.last_seen_at <= now - self.idle))))
            n += rowcount(s.execute(delete(PortalSigninLink).where(PortalSigninLink.expires_at <= now)))
        return n

