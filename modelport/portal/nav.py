"""The portal's navigation: one entry per page family, shown when the user may use it.

Adding a page (for instance the marketplace or the policy pages, which arrive with their own
capabilities): write its routes in `modelport/portal/routes/<name>.py` with `router =
APIRouter(route_class=PortalRoute)`, add the module to `ROUTE_MODULES` in
`modelport/portal/__init__.py`, and register its entry here with `register()`. The service a
page fronts is a named field of `api.deps.Services`, present on every installation, so an entry
depends only on the user's role.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.identity.principal import Principal


@dataclass(frozen=True)
class Entry:
    label: str
    href: str
    action: str  # the role-table action a user needs to see the entry
    or_action: str | None = None  # another action that also shows the entry


ENTRIES: list[Entry] = [
    Entry("Catalog", "/catalog", "models.read"),
    Entry("Deployments", "/deployments", "deployments.read"),
    Entry("Playground", "/playground", "deployments.call"),
    Entry("Datasets", "/datasets", "datasets.read"),
    Entry("Fine-tuning", "/finetuning", "finetuning.read"),
    Entry("Marketplace", "/marketplace", "marketplace.read"),
    Entry("Usage", "/usage", "usage.read"),
    # Governance: members read the policies in force; a platform admin outside any membership
    # still reads (and writes) the platform's.
    Entry("Policies", "/policies", "policies.read", or_action="platform.policies"),
    Entry("Workspace", "/workspace", "members.read"),
    Entry("Admin", "/admin", "platform.workspaces"),
]


def register(entry: Entry, before: str = "Workspace") -> None:
    labels = [e.label for e in ENTRIES]
    ENTRIES.insert(labels.index(before) if before in labels else len(ENTRIES), entry)


def entries(me: Principal | None) -> list[Entry]:
    """The entries this user may use (none before sign-in)."""
    if me is None:
        return []
    return [e for e in ENTRIES if me.can(e.action) or (e.or_action is not None and me.can(e.or_action))]
