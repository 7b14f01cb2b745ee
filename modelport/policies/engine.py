"""The decision: does any saved policy forbid this action on this resource for this caller?

The policies in force live in one immutable `Snapshot`, compiled from the database whenever a
policy is saved or deleted and then swapped in by a single assignment. A decision reads the
current snapshot once, so it sees the whole old set or the whole new set, never a mix; and the
save answers only after the swap, so the very next request is decided by the new set.

A snapshot holds, for each workspace that has policies of its own and for "no workspace", one
pre-parsed Cedar policy set per action: the implicit permit, the platform policies and the
workspace's policies whose action scope can match that action. A workspace's own policies can
only add forbids, so they never loosen a platform policy. A policy annotated `@audit` is in the
same set: when it matches, the decision names it as audited and still allows.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import cedarpy
from sqlalchemy import func, select

from modelport.audit import service as audit
from modelport.db.engine import Database
from modelport.db.tables import Policy
from modelport.errors import PolicyDenied
from modelport.identity.principal import Principal
from modelport.policies import compiler
from modelport.policies.facts import DeploymentFacts, ModelFacts, Resource, UserFacts, entities

log = logging.getLogger("modelport.policies")

BASE_PERMIT_ID = "modelport-base-permit"
BASE_PERMIT = f'@id("{BASE_PERMIT_ID}")\npermit(principal, action, resource);\n'
_ERROR_POSITION = re.compile(r"^error while evaluating policy `policy(\d+)`")


@dataclass(frozen=True)
class StoredPolicy:
    id: str
    workspace_id: str | None  # None: platform scope
    cedar: str
    audit: bool
    actions: frozenset[str]


@dataclass(frozen=True)
class CompiledSet:
    policy_set: cedarpy.PolicySet
    ids: tuple[str, ...]  # position i+1 in the set (position 0 is the base permit)
    audit_ids: frozenset[str]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    denied_by: tuple[str, ...] = ()
    audited_by: tuple[str, ...] = ()
    version: int = 0  # the snapshot that decided


@dataclass
class Snapshot:
    """Every policy in force, compiled. Never changed after it is built."""

    version: int
    policies: tuple[StoredPolicy, ...]
    fingerprint: tuple = ()  # (count, latest update) of the rows it was built from
    sets: dict[tuple[str | None, str], CompiledSet] = field(default_factory=dict)

    @classmethod
    def build(cls, version: int, policies: Iterable[StoredPolicy], fingerprint: tuple = ()) -> Snapshot:
        policies = tuple(policies)
        snap = cls(version=version, policies=policies, fingerprint=fingerprint)
        platform = [p for p in policies if p.workspace_id is None]
        bases: dict[str, tuple[cedarpy.PolicySet, list[StoredPolicy]]] = {}
        for action in compiler.ACTIONS:
            chosen = [p for p in platform if action in p.actions]
            bases[action] = (cedarpy.PolicySet.from_str(BASE_PERMIT + "\n".join(p.cedar for p in chosen)), chosen)
            if chosen:
                snap.sets[(None, action)] = CompiledSet(bases[action][0], tuple(p.id for p in chosen),
                                                        frozenset(p.id for p in chosen if p.audit))
        for ws in sorted({p.workspace_id for p in policies if p.workspace_id is not None}):
            own = [p for p in policies if p.workspace_id == ws]
            for action in compiler.ACTIONS:
                mine = [p for p in own if action in p.actions]
                if not mine:  # decided by the platform's set alone
                    continue
                # Parsed whole (about 20 µs a policy), so that Cedar's positional ids (policy0, policy1,
                # ...) follow this order: adding to the platform's parsed set renumbers only the
                # fragment's ids that collide, which would misname policies in error messages.
                both = bases[action][1] + mine
                snap.sets[(ws, action)] = CompiledSet(
                    cedarpy.PolicySet.from_str(BASE_PERMIT + "\n".join(p.cedar for p in both)),
                    tuple(p.id for p in both), frozenset(p.id for p in both if p.audit))
        return snap

    def compiled(self, workspace_id: str | None, action: str) -> CompiledSet | None:
        hit = self.sets.get((workspace_id, action))
        if hit is None and workspace_id is not None:
            hit = self.sets.get((None, action))
        return hit


class PolicyEngine:
    """Holds the snapshot in force; decides, enforces and audits.

    A save or delete on this server reloads at once. Saves made by another server on the same
    database are noticed within `refresh_seconds`: at most that often, a decision first compares
    the policy table's row count and latest update with its snapshot's."""

    def __init__(self, db: Database, refresh_seconds: float = 1.0) -> None:
        self.db = db
        self.refresh_seconds = refresh_seconds
        self._snapshot: Snapshot | None = None
        self._reload_lock = threading.Lock()
        self._next_check = 0.0

    # -- the set in force -------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:  # first decision before `reload` (a service used without the server)
            return self.reload()
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.refresh_seconds
            with self.db.session() as s:
                current = tuple(s.execute(select(func.count(Policy.id), func.max(Policy.updated_at))).one())
            if current != snap.fingerprint:
                snap = self.reload()
        return snap

    def reload(self) -> Snapshot:
        """Compile the stored policies into a new snapshot and swap it in. Serialized, and each
        reload reads the database when it runs, so a later reload never installs an older set."""
        with self._reload_lock, self.db.session() as s:
            rows = s.scalars(select(Policy).order_by(Policy.scope_key, Policy.policy_id)).all()
            stored = [StoredPolicy(id=r.policy_id, workspace_id=r.workspace_id, cedar=r.cedar, audit=r.audit,
                                   actions=compiler.actions_of(r.cedar))
                      for r in rows]
            version = (self._snapshot.version + 1) if self._snapshot else 1
            fingerprint = tuple(s.execute(select(func.count(Policy.id), func.max(Policy.updated_at))).one())
            snap = Snapshot.build(version, stored, fingerprint)
            self._snapshot = snap  # one assignment: a decision sees the old set or this one
            return snap

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, user: UserFacts, workspace_id: str | None, action: str, resource: Resource) -> Decision:
        """The decision alone: no audit, no exception (for `policies test` and compliance)."""
        snap = self.snapshot
        compiled = snap.compiled(workspace_id, action)
        if compiled is None:
            return Decision(allowed=True, version=snap.version)
        request = {"principal": {"type": "User", "id": user.id}, "action": {"type": "Action", "id": action},
                   "resource": {"type": "Deployment" if isinstance(resource, DeploymentFacts) else "Model",
                                "id": resource.id}}  # no context: every fact is an entity attribute
        result = cedarpy.is_authorized(request, compiled.policy_set, entities(user, resource), compiler.schema())
        # Every saved policy carries its @id; the base permit is the only other one that can match.
        matched = {i for i in result.diagnostics.id_annotations_by_reason.values() if i != BASE_PERMIT_ID}
        # A policy that failed to evaluate did not forbid anything; a governance control fails closed,
        # so an error in a deny policy denies (and in an audit policy, audits).
        for err in result.diagnostics.errors:
            m = _ERROR_POSITION.match(str(err))
            if m is None or not 0 < int(m.group(1)) <= len(compiled.ids):
                # An error that names no policy of the set: nothing can be trusted, deny by them all.
                matched.update(compiled.ids)
            else:
                matched.add(compiled.ids[int(m.group(1)) - 1])
        if result.diagnostics.errors:
            log.warning("a policy failed to evaluate", extra={"event": "policy.error", "action": action})
        denied = tuple(sorted(matched - compiled.audit_ids))
        audited = tuple(sorted(matched & compiled.audit_ids))
        return Decision(allowed=not denied, denied_by=denied, audited_by=audited, version=snap.version)

    def enforce(self, actor: Principal, action: str, resource: Resource) -> Decision:
        """Decide for `actor` in its workspace; audit a deny or an audited match (policy ids and
        resource ids only); raise PolicyDenied (403, naming the policies) when denied.

        This is the one call every route that performs a governed action makes, e.g. the
        marketplace's `svc.policies.enforce(actor, "subscribe", ModelFacts.of(model, owner))`.
        """
        decision = self.decide(UserFacts.of(actor), actor.workspace_id, action, resource)
        if decision.denied_by or decision.audited_by:
            self._audit(actor, action, resource, decision)
        if not decision.allowed:
            raise PolicyDenied(action, list(decision.denied_by))
        return decision

    def _audit(self, actor: Principal, action: str, resource: Resource, decision: Decision) -> None:
        """In a session of its own: the request's own transaction is rolled back when it is denied."""
        is_model = isinstance(resource, ModelFacts)
        detail: dict = {"action": action, "denied_by": list(decision.denied_by),
                        "audited_by": list(decision.audited_by)}
        if not isinstance(resource, ModelFacts):
            detail["model"] = resource.model.id
        with self.db.session() as s:
            audit.record(s, actor, "policy.deny" if decision.denied_by else "policy.audit",
                         resource_type="model" if is_model else "deployment",
                         resource_id=None if resource.id == "new" else resource.id,
                         outcome="denied" if decision.denied_by else "audited",
                         status_code=403 if decision.denied_by else None, detail=detail)
