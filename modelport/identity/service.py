"""Workspaces, users, memberships and API keys: the tenancy service.

Every function takes the acting Principal and checks the role table through
`Principal.require`, so routes stay thin and the checks live in one place. A resource of
another workspace is reported as missing (404), never as forbidden.

No one gains power through another user:
- a key never carries more privilege than the principal who made it: API keys are made by
  their own user, or by a platform admin for a non-admin member of a workspace (without joining
  it); only a key a platform admin made for itself, with a key that has that power, carries
  platform-admin power (`ApiKey.platform_admin`);
- platform admins are invisible to workspace owners: an owner cannot add one (the answer is the
  404 of an unknown user), change its role, remove it or revoke its platform keys;
- an owner adds only enabled users, and an unknown, disabled or platform-admin user gets one
  and the same 404, so add-member answers do not enumerate the installation's users;
- a workspace keeps at least one enabled owner.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.db.base import new_id, utcnow
from modelport.db.engine import Database
from modelport.db.tables import ApiKey, Membership, User, Workspace
from modelport.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from modelport.identity import secrets as keysecrets
from modelport.identity.activity import WorkspaceActivity
from modelport.identity.principal import Principal
from modelport.identity.roles import Role
from modelport.identity.schemas import NAME_PATTERN

NAME_RE = re.compile(NAME_PATTERN)

# One answer for every user an owner cannot add, so that the answers do not tell them apart.
NO_ADDABLE_USER = "No user you can add has that name or id; ask a platform admin for the user's name."
KEYS_ARE_PERSONAL = (
    "An API key is created by its own user. A platform admin creates one for a member with "
    "POST /api/v1/users/{user}/apikeys ('modelport apikeys create --user USER --workspace WORKSPACE')."
)
ADMIN_MEMBERSHIP = "A platform admin's membership is changed only by a platform admin."


def check_name(value: str, field: str) -> str:
    if not NAME_RE.fullmatch(value):  # fullmatch: a trailing newline is not a name's
        raise InvalidInput(
            f"{field} must be 1-63 characters of lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            field=field,
        )
    return value


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    secret: str


class LastUsedTracker:
    """Records `last_used_at` without a database write on the request path.

    Requests only touch a dict; `flush()` (called every few seconds by the server and at
    shutdown) writes the newest timestamp of each key in one transaction.
    """

    def __init__(self) -> None:
        self._pending: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def touch(self, key_id: str) -> None:
        with self._lock:
            self._pending[key_id] = utcnow()

    def flush(self, db: Database) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        with db.session() as s:
            for key_id, at in pending.items():
                s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=at))
        return len(pending)


class IdentityService:
    AUTH_CACHE_SECONDS = 5.0

    def __init__(self, db: Database) -> None:
        self.db = db
        self.activity = WorkspaceActivity()
        self.last_used = LastUsedTracker()
        self._cache: dict[str, tuple[float, Principal, datetime | None]] = {}
        self._cache_lock = threading.Lock()

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, secret: str | None, workspace: str | None = None) -> Principal:
        """Resolve an API key (and, for platform admins, an optional other workspace)."""
        if not secret:
            raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'.")
        parsed = keysecrets.parse(secret)
        if parsed is None or parsed.kind != "mpk":
            raise Unauthenticated("Invalid API key.")
        cache_key = keysecrets.digest(secret) + "|" + (workspace or "")
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(cache_key)
        if hit and hit[0] > now and (hit[2] is None or hit[2] > utcnow()):
            self.last_used.touch(hit[1].key_id)
            return hit[1]
        principal, expires_at = self._authenticate_db(parsed, workspace)
        with self._cache_lock:
            self._cache[cache_key] = (now + self.AUTH_CACHE_SECONDS, principal, expires_at)
        self.last_used.touch(principal.key_id)
        return principal

    def needs_lookup(self, secret: str | None, workspace: str | None = None) -> bool:
        """Whether `authenticate(secret, workspace)` would query the database: an API key that
        is not in the cache. Callers on an event loop run such a call on a worker thread."""
        parsed = keysecrets.parse(secret) if secret else None
        if parsed is None or parsed.kind != "mpk":
            return False  # refused (or not an API key) without a query
        with self._cache_lock:
            hit = self._cache.get(keysecrets.digest(secret or "") + "|" + (workspace or ""))
        return not (hit and hit[0] > time.monotonic() and (hit[2] is None or hit[2] > utcnow()))

    def _authenticate_db(
        self, parsed: keysecrets.ParsedSecret, workspace: str | None
    ) -> tuple[Principal, datetime | None]:
        with self.db.session() as s:
            key = s.get(ApiKey, f"key_{parsed.lookup}")
            if key is None or not keysecrets.matches(parsed.secret, key.digest):
                raise Unauthenticated("Invalid API key.")
            return self._principal_of_key(s, key, workspace)

    def principal_for_key(self, key_id: str) -> Principal:
        """The principal of a key already proven once (a portal session keeps the key's id, never
        its secret): the same checks as `authenticate`, so that revoking the key, disabling its
        user or deleting its workspace ends the session too."""
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None:
                raise Unauthenticated("Invalid API key.")
            return self._principal_of_key(s, key, None)[0]

    def _principal_of_key(self, s: Session, key: ApiKey, workspace: str | None
                          ) -> tuple[Principal, datetime | None]:
        if key.revoked_at is not None:
            raise Unauthenticated("This API key was revoked; create a new one.")
        if key.expires_at is not None and key.expires_at <= utcnow():
            raise Unauthenticated("This API key has expired; create a new one.")
        user = s.get(User, key.user_id)
        if user is None or user.disabled:
            raise Unauthenticated("The user of this API key is disabled.")
        # Platform-admin power needs both: a platform admin, and a key made with that power.
        platform_admin = user.is_platform_admin and key.platform_admin
        ws_id = key.workspace_id
        if workspace:
            if not platform_admin:
                raise Forbidden("Only a platform admin's key may name another workspace.")
            ws = s.scalar(select(Workspace).where((Workspace.id == workspace) | (Workspace.name == workspace)))
            if ws is None:
                raise NotFound(f"Workspace '{workspace}' not found.")
            ws_id = ws.id
        ws = s.get(Workspace, ws_id)
        if ws is None:
            raise Unauthenticated("The workspace of this API key no longer exists.")
        if ws.state == "deleting":
            if workspace:
                raise NotFound(f"Workspace '{workspace}' is being deleted.")
            raise Unauthenticated("The workspace of this API key is being deleted.")
        member = s.scalar(
            select(Membership).where(Membership.workspace_id == ws_id, Membership.user_id == user.id)
        )
        if member is None and workspace:
            # An admin reaches a workspace's resources only as a member of it.
            raise NotFound(f"Workspace '{workspace}' not found among your memberships.")
        return (
            Principal(
                user_id=user.id,
                user_name=user.name,
                is_platform_admin=platform_admin,
                key_id=key.id,
                workspace_id=ws.id,
                workspace_name=ws.name,
                role=Role(member.role) if member else None,
            ),
            key.expires_at,
        )

    def invalidate_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    # -- bootstrap ------------------------------------------------------------------------

    def bootstrap(self) -> str | None:
        """On first start: the platform admin, a `default` workspace it owns, an admin key.

        Returns the new key's secret, or None when the installation already has an admin.
        """
        with self.db.session() as s:
            if s.scalar(select(User).where(User.is_platform_admin.is_(True)).limit(1)) is not None:
                return None
            admin = User(id=new_id("usr"), name="admin", is_platform_admin=True)
            ws = Workspace(id=new_id("ws"), name="default", description="Created on first start.")
            s.add_all([admin, ws])
            s.flush()
            s.add(Membership(workspace_id=ws.id, user_id=admin.id, role=Role.OWNER.value))
            created = self._new_key(s, user_id=admin.id, workspace_id=ws.id, name="admin", expires_at=None,
                                    created_by=admin.id, platform_admin=True)
            audit.record(s, None, "platform.bootstrap", resource_type="workspace", resource_id=ws.id,
                         workspace_id=ws.id)
            return created.secret

    # -- workspaces -----------------------------------------------------------------------

    def create_workspace(self, actor: Principal, name: str, description: str = "",
                         owner: str | None = None) -> Workspace:
        actor.require("platform.workspaces")
        check_name(name, "name")
        with self.db.session() as s:
            owner_user = self._user_by_ref(s, owner, "owner") if owner else s.get(User, actor.user_id)
            assert owner_user is not None
            ws = Workspace(id=new_id("ws"), name=name, description=description)
            s.add(ws)
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(f"A workspace named '{name}' already exists.", field="name") from exc
            s.add(Membership(workspace_id=ws.id, user_id=owner_user.id, role=Role.OWNER.value))
            audit.record(s, actor, "workspace.create", resource_type="workspace", resource_id=ws.id,
                         workspace_id=ws.id, detail={"owner": owner_user.id})
            if owner_user.id == actor.user_id:
                audit.record(s, actor, "workspace.member.self_add", resource_type="workspace",
                             resource_id=ws.id, workspace_id=ws.id, detail={"role": Role.OWNER.value})
            return ws

    def list_workspaces(self, actor: Principal) -> Sequence[tuple[Workspace, str | None]]:
        """A platform admin sees every workspace; anyone else the workspaces they belong to."""
        with self.db.session() as s:
            mine = {
                m.workspace_id: m.role
                for m in s.scalars(select(Membership).where(Membership.user_id == actor.user_id))
            }
            stmt = select(Workspace).order_by(Workspace.name)
            if not actor.is_platform_admin:
                stmt = stmt.where(Workspace.id.in_(list(mine)))
            return [(ws, mine.get(ws.id)) for ws in s.scalars(stmt)]

    def get_workspace(self, actor: Principal, ref: str) -> Workspace:
        with self.db.session() as s:
            ws = self._visible_workspace(s, actor, ref)
            return ws

    def authorize_delete(self, s: Session, actor: Principal, ref: str) -> Workspace:
        """The workspace `actor` may delete (its owner, or a platform admin); the deletion itself
        is modelport/identity/offboarding.py."""
        ws = self._visible_workspace(s, actor, ref)
        if ws.name == "default":
            raise Conflict("The default workspace cannot be deleted.")
        if not actor.is_platform_admin:
            if ws.id != actor.workspace_id:
                raise NotFound(f"Workspace '{ref}' not found.")
            actor.require("workspace.delete")
        return ws

    def _visible_workspace(self, s: Session, actor: Principal, ref: str) -> Workspace:
        ws = s.scalar(select(Workspace).where((Workspace.id == ref) | (Workspace.name == ref)))
        if ws is None:
            raise NotFound(f"Workspace '{ref}' not found.")
        if actor.is_platform_admin:
            return ws
        member = s.scalar(select(Membership).where(Membership.workspace_id == ws.id,
                                                   Membership.user_id == actor.user_id))
        if member is None:
            raise NotFound(f"Workspace '{ref}' not found.")
        return ws

    # -- users ----------------------------------------------------------------------------

    def create_user(self, actor: Principal, name: str, email: str | None = None,
                    platform_admin: bool = False) -> User:
        actor.require("platform.users")
        check_name(name, "name")
        with self.db.session() as s:
            user = User(id=new_id("usr"), name=name, email=email, is_platform_admin=platform_admin)
            s.add(user)
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(f"A user named '{name}' already exists.", field="name") from exc
            audit.record(s, actor, "user.create", resource_type="user", resource_id=user.id,
                         detail={"platform_admin": platform_admin})
            return user

    def list_users(self, actor: Principal) -> Sequence[User]:
        actor.require("platform.users")
        with self.db.session() as s:
            return s.scalars(select(User).order_by(User.name)).all()

    def set_user_disabled(self, actor: Principal, ref: str, disabled: bool) -> User:
        actor.require("platform.users")
        with self.db.session() as s:
            user = self._user_by_ref(s, ref)
            if user.id == actor.user_id and disabled:
                raise Conflict("You cannot disable yourself.")
            user.disabled = disabled
            audit.record(s, actor, "user.disable" if disabled else "user.enable", resource_type="user",
                         resource_id=user.id)
        self.invalidate_cache()
        return user

    def _user_by_ref(self, s: Session, ref: str, field: str = "user") -> User:
        user = s.scalar(select(User).where((User.id == ref) | (User.name == ref)))
        if user is None:
            # The value is not echoed: it may come from a request body (errors.py).
            raise NotFound("No user has that name or id; 'modelport users list' shows them.", field=field)
        return user

    # -- members --------------------------------------------------------------------------

    def list_members(self, actor: Principal) -> Sequence[Membership]:
        actor.require("members.read")
        with self.db.session() as s:
            return s.scalars(
                select(Membership).where(Membership.workspace_id == actor.workspace_id).order_by(Membership.id)
            ).all()

    def add_member(self, actor: Principal, user_ref: str, role: Role, workspace: str | None = None) -> Membership:
        """Owners add members to their workspace; a platform admin to any (`workspace`, audited)."""
        with self.db.session() as s:
            ws: Workspace | None
            if workspace is not None:
                actor.require("platform.users")
                ws = self._workspace_by_ref(s, workspace)
            else:
                actor.require("members.write")
                ws = s.get(Workspace, actor.workspace_id)
            assert ws is not None
            user = self._addable_user(s, actor, user_ref)
            # Read before the insert: a failed flush leaves the session unusable for lazy loads.
            already = f"'{user.name}' is already a member of '{ws.name}'."
            m = Membership(workspace_id=ws.id, user_id=user.id, role=Role(role).value)
            s.add(m)
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(already, field="user") from exc
            audit.record(s, actor, "workspace.member.add", resource_type="user", resource_id=user.id,
                         workspace_id=ws.id, detail={"role": m.role})
            if user.id == actor.user_id:
                audit.record(s, actor, "workspace.member.self_add", resource_type="workspace",
                             resource_id=ws.id, workspace_id=ws.id, detail={"role": m.role})
            s.refresh(m)
            return m

    def _addable_user(self, s: Session, actor: Principal, ref: str) -> User:
        """A platform admin adds anyone; an owner an enabled user who is not a platform admin."""
        if actor.is_platform_admin:
            return self._user_by_ref(s, ref)
        user = s.scalar(select(User).where((User.id == ref) | (User.name == ref)))
        if user is None or user.disabled or user.is_platform_admin:
            raise NotFound(NO_ADDABLE_USER, field="user")
        return user

    def _workspace_by_ref(self, s: Session, ref: str) -> Workspace:
        ws = s.scalar(select(Workspace).where((Workspace.id == ref) | (Workspace.name == ref)))
        if ws is None:
            raise NotFound("No workspace has that name or id; 'modelport workspaces list' shows them.",
                           field="workspace")
        return ws

    def set_member_role(self, actor: Principal, user_ref: str, role: Role) -> Membership:
        actor.require("members.write")
        with self.db.session() as s:
            m = self._member(s, actor, user_ref)
            self._guard_admin_membership(actor, m)
            if m.role == Role.OWNER and role != Role.OWNER:
                self._ensure_other_owner(s, actor.workspace_id, m.user_id)
            m.role = Role(role).value
            audit.record(s, actor, "workspace.member.role", resource_type="user", resource_id=m.user_id,
                         detail={"role": m.role})
        self.invalidate_cache()
        return m

    def remove_member(self, actor: Principal, user_ref: str) -> None:
        """Owners remove members; any member may leave (a workspace keeps an enabled owner)."""
        if user_ref not in (actor.user_id, actor.user_name):
            actor.require("members.write")
        with self.db.session() as s:
            m = self._member(s, actor, user_ref)
            self._guard_admin_membership(actor, m)
            if m.role == Role.OWNER:
                self._ensure_other_owner(s, actor.workspace_id, m.user_id)
            s.delete(m)
            # Keys of a removed member stop working in this workspace at once.
            s.execute(update(ApiKey).where(ApiKey.workspace_id == actor.workspace_id,
                                           ApiKey.user_id == m.user_id,
                                           ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
            audit.record(s, actor, "workspace.member.remove", resource_type="user", resource_id=m.user_id)
        self.invalidate_cache()

    def _member(self, s: Session, actor: Principal, user_ref: str) -> Membership:
        # One answer for "no such user" and "a user of another workspace": a workspace must not
        # learn which users exist elsewhere on the installation.
        m = s.scalar(select(Membership).join(User, Membership.user_id == User.id).where(
            Membership.workspace_id == actor.workspace_id, (User.id == user_ref) | (User.name == user_ref)))
        if m is None:
            raise NotFound("No member of this workspace has that name or id; 'modelport workspaces members' "
                           "lists them.", field="user")
        return m

    def _guard_admin_membership(self, actor: Principal, m: Membership) -> None:
        if m.user.is_platform_admin and not actor.is_platform_admin:
            raise Forbidden(ADMIN_MEMBERSHIP, field="user")

    def _ensure_other_owner(self, s: Session, workspace_id: str, user_id: str) -> None:
        """A disabled owner does not count: it could not act for the workspace."""
        others = s.scalars(select(Membership).join(User, Membership.user_id == User.id).where(
            Membership.workspace_id == workspace_id, Membership.role == Role.OWNER.value,
            Membership.user_id != user_id, User.disabled.is_(False))).first()
        if others is None:
            raise Conflict("A workspace needs at least one enabled owner; make someone else owner first.")

    # -- API keys -------------------------------------------------------------------------

    def create_api_key(self, actor: Principal, name: str = "", expires_in_days: int | None = None,
                       user_ref: str | None = None) -> CreatedKey:
        """A key for the caller itself, in the caller's workspace, with at most the caller's power.

        `user_ref` may only name the caller: nobody creates a key for someone else here.
        """
        if user_ref is not None and user_ref not in (actor.user_id, actor.user_name):
            raise Forbidden(KEYS_ARE_PERSONAL, field="user")
        expires = _expiry(name, expires_in_days)
        actor.require("apikeys.own")
        with self.db.session() as s:
            created = self._new_key(s, user_id=actor.user_id, workspace_id=actor.workspace_id, name=name,
                                    expires_at=expires, created_by=actor.user_id,
                                    platform_admin=actor.is_platform_admin)
            audit.record(s, actor, "apikey.create", resource_type="apikey", resource_id=created.row.id,
                         detail={"user": actor.user_id})
            return created

    def create_api_key_for_user(self, actor: Principal, user_ref: str, workspace: str, name: str = "",
                                expires_in_days: int | None = None) -> CreatedKey:
        """A platform admin makes a key for a non-admin member of a workspace, without joining it.

        The key never carries platform-admin power, and the workspace's audit log records it.
        """
        actor.require("platform.users")
        expires = _expiry(name, expires_in_days)
        with self.db.session() as s:
            user = self._user_by_ref(s, user_ref)
            if user.is_platform_admin:
                raise Forbidden("A platform admin's API keys are created by that platform admin, with its own key.",
                                field="user")
            if user.disabled:
                raise Conflict("This user is disabled; enable it first ('modelport users enable').", field="user")
            ws = self._workspace_by_ref(s, workspace)
            member = s.scalar(select(Membership).where(Membership.workspace_id == ws.id,
                                                       Membership.user_id == user.id))
            if member is None:
                raise Conflict(f"'{user.name}' is not a member of '{ws.name}'; add them first "
                               "('modelport workspaces add-member USER --to WORKSPACE').", field="workspace")
            created = self._new_key(s, user_id=user.id, workspace_id=ws.id, name=name, expires_at=expires,
                                    created_by=actor.user_id, platform_admin=False)
            audit.record(s, actor, "apikey.create", resource_type="apikey", resource_id=created.row.id,
                         workspace_id=ws.id, detail={"user": user.id})
            return created

    def _new_key(self, s: Session, *, user_id: str, workspace_id: str, name: str,
                 expires_at: datetime | None, created_by: str, platform_admin: bool) -> CreatedKey:
        lookup, secret = keysecrets.generate("mpk")
        row = ApiKey(id=f"key_{lookup}", name=name, digest=keysecrets.digest(secret), user_id=user_id,
                     workspace_id=workspace_id, expires_at=expires_at, created_by=created_by,
                     platform_admin=platform_admin)
        s.add(row)
        s.flush()
        return CreatedKey(row=row, secret=secret)

    def list_api_keys(self, actor: Principal) -> Sequence[ApiKey]:
        """Owners see every key of the workspace; others only their own."""
        with self.db.session() as s:
            stmt = select(ApiKey).where(ApiKey.workspace_id == actor.workspace_id).order_by(ApiKey.created_at)
            if not actor.can("apikeys.manage"):
                actor.require("apikeys.own")
                stmt = stmt.where(ApiKey.user_id == actor.user_id)
            return s.scalars(stmt).all()

    def revoke_api_key(self, actor: Principal, key_id: str) -> ApiKey:
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None or key.workspace_id != actor.workspace_id:
                raise NotFound(f"API key '{key_id}' not found.")
            if key.user_id != actor.user_id:
                if not actor.can("apikeys.manage"):
                    raise NotFound(f"API key '{key_id}' not found.")
            else:
                actor.require("apikeys.own")
            if key.platform_admin and not actor.is_platform_admin:
                raise Forbidden("This key carries platform-admin power; only a platform admin revokes it.")
            if key.revoked_at is None:
                key.revoked_at = utcnow()
            audit.record(s, actor, "apikey.revoke", resource_type="apikey", resource_id=key.id)
        self.invalidate_cache()
        return key


def _expiry(name: str, expires_in_days: int | None) -> datetime | None:
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise InvalidInput("expires_in_days must be between 1 and 3650.", field="expires_in_days")
    if len(name) > 64:
        raise InvalidInput("name must be at most 64 characters.", field="name")
    return utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
