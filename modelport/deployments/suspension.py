"""Why a deployment is suspended: a set of reasons, each added and cleared only by its own cause.

A deployment can be suspended for several reasons at once (its workspace's customer-managed key
is disabled, its marketplace subscription was cancelled, a policy is enforced against it). Each
cause adds its reason with a message for the caller, and clears only that reason when it no
longer holds; the deployment serves again once no reason is left. While any reason holds, its
state is `suspended`, its state reason joins the messages, and its requests answer 503 with them.

These functions change the row in the caller's session (the caller holds the row for update);
the lifecycle service (deployments/lifecycle.py: `suspend`, `resume`) routes the change and
stops and starts the workers.
"""

from __future__ import annotations

from modelport.db.tables import Deployment

#: The causes that suspend a deployment, in the order their messages are shown.
REASONS = ("key_disabled", "subscription", "policy")
#: States a suspension takes a deployment out of (a failed or deleting one stays as it is).
SERVING_STATES = ("creating", "succeeded", "suspended")


def _check(reason: str) -> None:
    if reason not in REASONS:
        raise ValueError(f"unknown suspension reason {reason!r}; one of {', '.join(REASONS)}")


def describe(suspensions: dict[str, str]) -> str | None:
    """The state reason shown for these suspensions: every message, in REASONS order."""
    messages = [suspensions[r] for r in REASONS if r in suspensions]
    return " ".join(messages) if messages else None


def add(row: Deployment, reason: str, message: str) -> bool:
    """Add `reason` (or update its message). Returns True when the deployment was serving or being
    created until now: its workers must stop."""
    _check(reason)
    was_serving = row.state in ("creating", "succeeded")
    row.suspensions = {**(row.suspensions or {}), reason: message}
    if row.state in SERVING_STATES:
        row.state = "suspended"
        row.state_reason = describe(row.suspensions)
    return was_serving


def clear(row: Deployment, reason: str) -> bool:
    """Clear `reason`. Returns True when it was the last one of a suspended deployment: it goes
    back to `creating`, and its workers must start again."""
    _check(reason)
    left = {r: m for r, m in (row.suspensions or {}).items() if r != reason}
    if left == (row.suspensions or {}):
        return False
    row.suspensions = left
    if row.state != "suspended":
        return False
    if left:
        row.state_reason = describe(left)
        return False
    row.state, row.state_reason = "creating", None
    return True
