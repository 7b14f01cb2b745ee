"""Governance policies for tests: filling a workspace up to the per-scope cap through the API."""

from __future__ import annotations

import httpx

from modelport.policies.service import MAX_POLICIES_PER_SCOPE
from tests.support.tenants import ok


def harmless(i: int) -> str:
    """A valid deploy policy that forbids nothing a test does (no deployment has that name)."""
    return f'forbid(principal, action == Action::"deploy", resource) when {{ resource.name == "never-{i}" }};'


def fill_workspace(owner: httpx.Client, count: int = MAX_POLICIES_PER_SCOPE) -> list[str]:
    """Save `count` harmless policies in the owner's workspace, one PUT each; their ids."""
    ids = [f"cap-{i:03d}" for i in range(count)]
    for i, policy_id in enumerate(ids):
        ok(owner.put(f"/api/v1/policies/{policy_id}", json={"cedar": harmless(i)}), 201)
    return ids
