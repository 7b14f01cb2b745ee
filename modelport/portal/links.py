"""The local admin's one-time sign-in link: minted from the admin key file on this machine (what
`modelport serve` prints on its terminal at start, and `modelport signin-link` prints on demand).
Holding the admin key file already grants its power; the link only carries it into a browser
without pasting the key. It is never logged."""

from __future__ import annotations

from modelport.config import Settings
from modelport.db.engine import Database
from modelport.errors import Unauthenticated
from modelport.identity.service import IdentityService
from modelport.portal.sessions import SessionStore


def signin_link(settings: Settings, db: Database | None = None) -> str | None:
    """The URL, or None when this home has no usable admin key file."""
    path = settings.admin_key_file
    if not path.exists():
        return None
    secret = path.read_text().strip()
    own = db is None
    database = db or Database(settings.db_url)
    try:
        token = SessionStore(database, IdentityService(database), settings).issue_link(secret)
    except Unauthenticated:
        return None
    finally:
        if own:
            database.dispose()
    return f"{settings.base_url}/signin/link/{token}"
