"""Who is calling: resolved once per request from the key, then passed to every service."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.errors import Forbidden
from modelport.identity.roles import PLATFORM_ACTIONS, Role, role_allows


@dataclass(frozen=True)
class Principal:
    user_id: str
    user_name: str
    is_platform_admin: bool
    key_id: str
    workspace_id: str
    workspace_name: str
    role: Role | None  # None: a platform admin acting outside any membership

    def can(self, action: str) -> bool:
        if action in PLATFORM_ACTIONS:
            return self.is_platform_admin
        return role_allows(self.role, action)

    def require(self, action: str) -> None:
        if not self.can(action):
            if action in PLATFORM_ACTIONS:
                raise Forbidden("This action needs a platform admin's API key.")
            role = self.role.value if self.role else "no role"
            raise Forbidden(
                f"Your role in workspace '{self.workspace_name}' ({role}) does not allow {action}; "
                "ask a workspace owner."
            )


@dataclass(frozen=True)
class PublisherPrincipal:
    """A publisher user's key: it reaches its publisher's offers, subscriptions and reports, and
    nothing of any workspace (it has no workspace, no role, no platform power)."""

    user_id: str
    user_name: str
    key_id: str
    publisher_id: str
    publisher_name: str
