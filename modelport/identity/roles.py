"""The role table, written once and enforced here and nowhere else.

| action                  | reader | contributor | owner | platform admin (without membership) |
|-------------------------|:------:|:-----------:|:-----:|:------------------------------------:|
| workspace.read          |   x    |      x      |   x   |                                      |
| members.read            |   x    |      x      |   x   |                                      |
| members.write           |        |             |   x   |  x (audited; adding itself flagged)   |
| apikeys.own             |   x    |      x      |   x   |                                      |
| apikeys.manage (list, revoke) |  |             |   x   |                                      |
| models.read             |   x    |      x      |   x   |                                      |
| models.import           |        |      x      |   x   |                                      |
| models.manage           |        |             |   x   |                                      |
| deployments.read        |   x    |      x      |   x   |                                      |
| deployments.write       |        |      x      |   x   |                                      |
| deployments.call        |   x    |      x      |   x   |                                      |
| deployments.rate_limits |        |             |   x   |                                      |
| datasets.read           |   x    |      x      |   x   |                                      |
| datasets.write          |        |      x      |   x   |                                      |
| finetuning.read         |   x    |      x      |   x   |                                      |
| finetuning.write        |        |      x      |   x   |                                      |
| encryption_keys.manage (cmk, workspace key) | | |  x  |                                      |
| safety.manage           |        |             |   x   |                                      |
| audit.read              |        |             |   x   |  x (all workspaces)                   |
| marketplace.read (offers, subscriptions) | x | x   |   x   |                                      |
| marketplace.subscribe (subscribe, unsubscribe) | | x |  x   |                                      |
| usage.read              |   x    |      x      |   x   |  x (all workspaces: chargeback)       |
| budgets.read            |   x    |      x      |   x   |                                      |
| budgets.manage          |        |             |   x   |                                      |
| policies.read           |   x    |      x      |   x   |                                      |
| policies.write          |        |             |   x   |                                      |
| workspace.delete        |        |             |   x   |  x                                   |

Platform-wide actions (`platform.*`: create workspaces, manage users, create a key for a member,
catalog-wide models, the platform key, platform-scope governance policies, publishers, any
publisher's offers, every workspace's usage) need platform-admin power, which only a platform
admin's key made by that admin itself carries. A platform admin reaches a workspace's resources
only as a member of it; the table above applies to it like to anyone else.

Governance policies: every member reads the policies in force in its workspace; owners save and
delete the workspace's own (which can only add forbids) and suspend its violating deployments;
platform policies and compliance across workspaces need `platform.policies`.

A publisher API key is none of these: it has no workspace and no role, and reaches only its
publisher's offers, subscriptions and reports (modelport/marketplace/publishers.py).

No role creates API keys for someone else: `apikeys.own` is one's own keys, `apikeys.manage`
lists and revokes the workspace's keys (not those with platform-admin power). A platform admin's
membership is changed only by a platform admin.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    READER = "reader"
    CONTRIBUTOR = "contributor"
    OWNER = "owner"


RANK = {Role.READER: 1, Role.CONTRIBUTOR: 2, Role.OWNER: 3}

# action -> least role that may do it, inside the caller's workspace
WORKSPACE_ACTIONS: dict[str, Role] = {
    "workspace.read": Role.READER,
    "workspace.delete": Role.OWNER,
    "members.read": Role.READER,
    "members.write": Role.OWNER,
    "apikeys.own": Role.READER,
    "apikeys.manage": Role.OWNER,
    "models.read": Role.READER,
    "models.import": Role.CONTRIBUTOR,
    "models.manage": Role.OWNER,
    "deployments.read": Role.READER,
    "deployments.write": Role.CONTRIBUTOR,
    "deployments.call": Role.READER,
    "deployments.rate_limits": Role.OWNER,
    "datasets.read": Role.READER,
    "datasets.write": Role.CONTRIBUTOR,
    "finetuning.read": Role.READER,
    "finetuning.write": Role.CONTRIBUTOR,
    "encryption_keys.manage": Role.OWNER,
    "safety.manage": Role.OWNER,
    "audit.read": Role.OWNER,
    "marketplace.read": Role.READER,
    "marketplace.subscribe": Role.CONTRIBUTOR,
    "usage.read": Role.READER,
    "budgets.read": Role.READER,
    "budgets.manage": Role.OWNER,
    "policies.read": Role.READER,
    "policies.write": Role.OWNER,
}

PLATFORM_ACTIONS = frozenset(
    {
        "platform.workspaces",  # create, list all, delete any workspace
        "platform.users",  # create, list, disable users; add members anywhere
        "platform.models",  # import, curate, deprecate, delete catalog-wide models
        "platform.encryption_keys",  # rotate and rewrap the platform key
        "platform.audit",  # read every workspace's audit log
        "platform.publishers",  # create publishers, add their users, make their keys
        "platform.offers",  # create and retire any publisher's offers
        "platform.usage",  # every workspace's usage and charges (chargeback)
        "platform.policies",  # save and delete platform policies; compliance of every workspace
        "platform.quotas",  # set deployments' rate-limit caps
        "platform.metrics",  # read GET /metrics
    }
)


def role_allows(role: Role | str | None, action: str) -> bool:
    if role is None:
        return False
    need = WORKSPACE_ACTIONS.get(action)
    if need is None:
        raise KeyError(f"unknown action {action!r}")  # a bug in our code, not a user error
    return RANK[Role(role)] >= RANK[need]
