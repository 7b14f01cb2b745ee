"""Publishers: organisations of the installation that publish catalog models and sell offers.

Platform admins create publishers, add users to them and make their API keys. A publisher key
(`mpp_...`) authenticates as a `PublisherPrincipal`: it sees only its publisher's offers,
subscriptions and reports, and has no workspace powers at all (an API key belongs to a
workspace or to a publisher, never both).
"""

from __future__ import annotations

import builtins
import re
import threading
import time
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.db.base import new_id, utcnow
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Offer, Publisher, PublisherApiKey, PublisherMember, User
from modelport.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from modelport.identity import secrets as keysecrets
from modelport.identity.principal import Principal, PublisherPrincipal

PUBLISHER_KEY_KIND = "mpp"
PUBLISHER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NO_PUBLISHER = "No publisher has that name or id; 'modelport publishers list' shows them."
NO_PUBLISHER_KEY = "This publisher has no API key with that id; 'modelport apikeys list --publisher P' shows them."
#: How many of the records that still refer to a publisher a refused deletion names.
NAMED_AT_MOST = 10


def check_publisher_name(name: str) -> str:
    if not PUBLISHER_NAME_RE.match(name):
        raise InvalidInput("A publisher name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or "
                           "digit.", field="name")
    return name


def publisher_by_ref(s: Session, ref: str) -> Publisher | None:
    return s.scalar(select(Publisher).where((Publisher.id == ref) | (Publisher.name == ref)))


def ensure_publisher(s: Session, name: str) -> Publisher:
    """The record of a publisher named by a bundled model's package (made on first start)."""
    row = s.scalar(select(Publisher).where(Publisher.name == name))
    if row is None:
        row = Publisher(id=new_id("pub"), name=name, display_name=name)
        s.add(row)
        s.flush()
    return row


class PublisherService:
    AUTH_CACHE_SECONDS = 5.0

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, PublisherPrincipal]] = {}
        self._lock = threading.Lock()

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, secret: str) -> PublisherPrincipal:
        parsed = keysecrets.parse(secret)
        if parsed is None or parsed.kind != PUBLISHER_KEY_KIND:
            raise Unauthenticated("Invalid publisher API key.")
        digest = keysecrets.digest(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        with self.db.session() as s:
            key = s.get(PublisherApiKey, f"pkey_{parsed.lookup}")
            if key is None or not keysecrets.matches(secret, key.digest):
                raise Unauthenticated("Invalid publisher API key.")
            if key.revoked_at is not None:
                raise Unauthenticated("This publisher API key was revoked; ask a platform admin for a new one.")
            user = s.get(User, key.user_id)
            member = s.scalar(select(PublisherMember).where(PublisherMember.publisher_id == key.publisher_id,
                                                            PublisherMember.user_id == key.user_id))
            if user is None or user.disabled or member is None:
                raise Unauthenticated("The user of this publisher API key is disabled or no longer a member of "
                                      "its publisher.")
            pub = s.get_one(Publisher, key.publisher_id)
            principal = PublisherPrincipal(user_id=user.id, user_name=user.name, key_id=key.id,
                                           publisher_id=pub.id, publisher_name=pub.name)
        with self._lock:
            self._cache[digest] = (now + self.AUTH_CACHE_SECONDS, principal)
        return principal

    def invalidate_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- publishers (platform admins) -----------------------------------------------------

    def create(self, actor: Principal, name: str, display_name: str = "") -> Publisher:
        actor.require("platform.publishers")
        check_publisher_name(name)
        with self.db.session() as s:
            row = Publisher(id=new_id("pub"), name=name, display_name=display_name or name)
            s.add(row)
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(f"A publisher named '{name}' already exists.", field="name") from exc
            audit.record(s, actor, "publisher.create", resource_type="publisher", resource_id=row.id)
            return row

    def list(self, actor: Principal) -> Sequence[Publisher]:
        actor.require("platform.publishers")
        with self.db.session() as s:
            return s.scalars(select(Publisher).order_by(Publisher.name)).all()

    def get(self, actor: Principal | PublisherPrincipal, ref: str) -> tuple[Publisher, builtins.list[str]]:
        """A publisher and its users' names: platform admins any, a publisher key only its own."""
        with self.db.session() as s:
            row = publisher_by_ref(s, ref)
            if isinstance(actor, PublisherPrincipal):
                if row is None or row.id != actor.publisher_id:
                    raise NotFound(NO_PUBLISHER)
            else:
                actor.require("platform.publishers")
                if row is None:
                    raise NotFound(NO_PUBLISHER)
            users = list(s.scalars(select(User.name).join(PublisherMember, PublisherMember.user_id == User.id)
                                   .where(PublisherMember.publisher_id == row.id).order_by(User.name)))
            return row, users

    def add_user(self, actor: Principal, ref: str, user_ref: str) -> tuple[Publisher, User]:
        actor.require("platform.publishers")
        with self.db.session() as s:
            pub = publisher_by_ref(s, ref)
            if pub is None:
                raise NotFound(NO_PUBLISHER)
            user = s.scalar(select(User).where((User.id == user_ref) | (User.name == user_ref)))
            if user is None:
                raise NotFound("No user has that name or id; 'modelport users list' shows them.", field="user")
            if user.is_platform_admin:
                raise Forbidden("A platform admin cannot be a publisher user; create a user for the publisher.",
                                field="user")
            s.add(PublisherMember(publisher_id=pub.id, user_id=user.id))
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(f"'{user.name}' is already a user of '{pub.name}'.", field="user") from exc
            audit.record(s, actor, "publisher.user.add", resource_type="publisher", resource_id=pub.id,
                         detail={"user": user.id})
            return pub, user

    def create_key(self, actor: Principal, ref: str, user_ref: str, name: str = "") -> tuple[PublisherApiKey, str]:
        """A platform admin makes a publisher key for a user of that publisher (shown once)."""
        actor.require("platform.publishers")
        if len(name) > 64:
            raise InvalidInput("name must be at most 64 characters.", field="name")
        with self.db.session() as s:
            pub = publisher_by_ref(s, ref)
            if pub is None:
                raise NotFound(NO_PUBLISHER, field="publisher")
            user = s.scalar(select(User).where((User.id == user_ref) | (User.name == user_ref)))
            member = user and s.scalar(select(PublisherMember).where(PublisherMember.publisher_id == pub.id,
                                                                     PublisherMember.user_id == user.id))
            if user is None or not member:
                raise Conflict("That user is not a user of this publisher; add them first "
                               "('modelport publishers add-user PUBLISHER USER').", field="user")
            if user.disabled:
                raise Conflict("This user is disabled; enable it first ('modelport users enable').", field="user")
            lookup, secret = keysecrets.generate(PUBLISHER_KEY_KIND)
            row = PublisherApiKey(id=f"pkey_{lookup}", name=name, digest=keysecrets.digest(secret),
                                  publisher_id=pub.id, user_id=user.id, created_by=actor.user_id)
            s.add(row)
            s.flush()
            audit.record(s, actor, "publisher.apikey.create", resource_type="publisher_apikey", resource_id=row.id,
                         detail={"publisher": pub.id, "user": user.id})
            return row, secret

    def list_keys(self, actor: Principal, ref: str) -> Sequence[PublisherApiKey]:
        """A publisher's API keys, revoked ones too (never their secrets)."""
        actor.require("platform.publishers")
        with self.db.session() as s:
            pub = publisher_by_ref(s, ref)
            if pub is None:
                raise NotFound(NO_PUBLISHER)
            return s.scalars(select(PublisherApiKey).where(PublisherApiKey.publisher_id == pub.id)
                             .order_by(PublisherApiKey.created_at, PublisherApiKey.id)).all()

    def revoke_key(self, actor: Principal, key_id: str, ref: str | None = None) -> PublisherApiKey:
        """Revoke a publisher key (of publisher `ref`, when given): it stops working at once.
        Revoking a revoked key changes nothing and answers the same."""
        actor.require("platform.publishers")
        with self.db.session() as s:
            pub = publisher_by_ref(s, ref) if ref is not None else None
            if ref is not None and pub is None:
                raise NotFound(NO_PUBLISHER)
            row = s.get(PublisherApiKey, key_id)
            if row is None or (pub is not None and row.publisher_id != pub.id):
                raise NotFound(NO_PUBLISHER_KEY)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                audit.record(s, actor, "publisher.apikey.revoke", resource_type="publisher_apikey",
                             resource_id=row.id, detail={"publisher": row.publisher_id})
        self.invalidate_cache()
        return row

    def update(self, actor: Principal, ref: str, name: str | None = None,
               display_name: str | None = None) -> Publisher:
        """Rename a publisher or change its display name (platform admins). The catalog models
        that name it show the new name; its keys keep working, their principal names it anew."""
        actor.require("platform.publishers")
        if name is not None:
            check_publisher_name(name)
        with self.db.session() as s:
            pub = publisher_by_ref(s, ref)
            if pub is None:
                raise NotFound(NO_PUBLISHER)
            before = {"name": pub.name, "display_name": pub.display_name}
            if name is not None and name != pub.name:
                if s.scalar(select(Publisher.id).where(Publisher.name == name)) is not None:
                    raise Conflict(f"A publisher named '{name}' already exists.", field="name")
                pub.name = name
                try:
                    s.flush()
                except SAIntegrityError as exc:  # a concurrent rename took the name
                    raise Conflict(f"A publisher named '{name}' already exists.", field="name") from exc
                for model in s.scalars(select(CatalogModel).where(CatalogModel.publisher_id == pub.id)):
                    model.publisher = name
            if display_name is not None:
                pub.display_name = display_name
            after = {"name": pub.name, "display_name": pub.display_name}
            changed = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
            if changed:
                audit.record(s, actor, "publisher.update", resource_type="publisher", resource_id=pub.id,
                             detail=changed)
        self.invalidate_cache()
        return pub

    def delete(self, actor: Principal, ref: str) -> Publisher:
        """Delete a publisher with its users' memberships and its API keys (platform admins).
        Refused (409, naming them) while offers or catalog models refer to it: their charges,
        reports and subscriptions need it. Retired offers count: billing history refers to them."""
        actor.require("platform.publishers")
        with self.db.session() as s:
            pub = publisher_by_ref(s, ref)
            if pub is None:
                raise NotFound(NO_PUBLISHER)
            offers = list(s.scalars(select(Offer.id).where(Offer.publisher_id == pub.id).order_by(Offer.id)
                                    .limit(NAMED_AT_MOST + 1)))
            models = list(s.execute(select(CatalogModel.name, CatalogModel.version)
                                    .where(CatalogModel.publisher_id == pub.id)
                                    .order_by(CatalogModel.name, CatalogModel.version).limit(NAMED_AT_MOST + 1)))
            if offers or models:
                named = [f"offer {o}" for o in offers[:NAMED_AT_MOST]]
                named += [f"model {n}:{v}" for n, v in models[:NAMED_AT_MOST]]
                more = " and more" if len(offers) > NAMED_AT_MOST or len(models) > NAMED_AT_MOST else ""
                raise Conflict(f"Publisher '{pub.name}' is still referred to by {', '.join(named)}{more}. A "
                               "publisher whose offers were ever sold keeps its record (charges and reports refer "
                               "to it): rename it ('modelport publishers rename') or revoke its keys instead; "
                               "models without offers can be deleted first.",
                               details={"offers": offers[:NAMED_AT_MOST],
                                        "models": [f"{n}:{v}" for n, v in models[:NAMED_AT_MOST]]})
            keys = list(s.scalars(select(PublisherApiKey).where(PublisherApiKey.publisher_id == pub.id)))
            for key in keys:
                s.delete(key)
            for member in s.scalars(select(PublisherMember).where(PublisherMember.publisher_id == pub.id)):
                s.delete(member)
            s.flush()
            s.delete(pub)
            audit.record(s, actor, "publisher.delete", resource_type="publisher", resource_id=pub.id,
                         detail={"name": pub.name, "api_keys_deleted": len(keys)})
        self.invalidate_cache()
        return pub
