"""The decision: does any saved policy forbid this action on this resource for this caller?

The policies in force live in one immutable `Snapshot`, compiled from the database and then
swapped in by a single assignment. A decision reads the current snapshot once, so it sees the
whole old set or the whole new set, never a mix.

In force at the next request, on every server: the database advances a version counter in the
transaction of every change to the policies table (triggers, migration 0015; see
`PolicyVersion`), so no change can be made without moving it and no clock is involved. Each
governed request reads that one row first (a primary-key read) and, when it moved, the server
reloads before deciding. When it cannot be read the request is refused (503): the control fails
closed. The reload reads only the scopes whose own counter moved past the snapshot, and
recompiles only those (every workspace's sets when a platform policy changed, since they hold the
platform's policies: each is a copy of the platform's parsed set with only the workspace's own
policies parsed).

A snapshot holds, for each workspace that has policies of its own and for "no workspace", one
pre-parsed Cedar policy set per action: the implicit permit, the platform policies and the
workspace's policies whose action scope can match that action. A workspace's own policies can
only add forbids, so they never loosen a platform policy. A policy annotated `@audit` is in the
same set: when it matches, the decision names it as audited and still allows.

Each set knows which attributes its policies can read (`compiler.reads_of`). A decision passes
Cedar only those, and remembers its outcome under exactly those values (and the caller's,
model's and deployment's ids): a later request that differs only in what no policy reads (a new
deployment's name, usually) is decided from memory. Cedar is deterministic, the memory belongs to
the compiled set and goes with it, so a remembered decision is the one Cedar would make again.

Before Cedar, each policy of the set is pre-evaluated exactly in Python (`prefilter.py`, one
check per policy and action, compiled with the set): policies that certainly cannot match are
dropped, those that certainly match are matched, and Cedar evaluates only the rest, on a subset
parsed once and kept, with entities holding only what that subset reads. When nothing is left,
Cedar is not called.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import cedarpy
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from modelport.audit import service as audit
from modelport.db.engine import Database
from modelport.db.tables import Policy, PolicyVersion
from modelport.errors import PolicyDenied, ServiceUnavailable
from modelport.identity.principal import Principal
from modelport.policies import compiler, prefilter
from modelport.policies.facts import DeploymentFacts, ModelFacts, Resource, UserFacts

log = logging.getLogger("modelport.policies")

BASE_PERMIT_ID = "modelport-base-permit"
BASE_PERMIT = f'@id("{BASE_PERMIT_ID}")\npermit(principal, action, resource);\n'
_VERSION = select(PolicyVersion.version).where(PolicyVersion.scope_key == "*")
#: Decisions remembered per compiled set; past this the memory starts again.
MEMORY_ENTRIES = 4096

_USER_ATTRS = ("name", "role", "workspace", "platform_admin")
_MODEL_ATTRS = ("name", "version", "publisher", "license", "format", "task", "source", "curated", "scan_status",
                "sha256", "offer", "owner")
_DEPLOYMENT_ATTRS = ("name", "workspace", "model", "type", "geography", "instances", "public_network_access",
                     "allowed_ranges", "content_filter")


@dataclass(frozen=True)
class StoredPolicy:
    id: str
    workspace_id: str | None  # None: platform scope
    cedar: str
    audit: bool
    actions: frozenset[str]


@dataclass(frozen=True)
class Reads:
    """The attributes a compiled set's policies can read, per entity (`paths` None: every one)."""

    paths: frozenset[compiler.Path] | None
    user: tuple[str, ...]
    model: tuple[str, ...]
    deployment: tuple[str, ...]
    filter_fields: tuple[str, ...] | None = None  # of the deployment's content_filter record; None: all

    @classmethod
    def of(cls, texts: Iterable[str], deployment_action: bool, also: Reads | None = None) -> Reads:
        """What the policies `texts` (and those `also` covers) can read."""
        paths: set[compiler.Path] | None = set(also.paths) if also is not None and also.paths is not None else set()
        if also is not None and also.paths is None:
            paths = None
        for text in texts:
            found = compiler.reads_of(text)
            if found is None or paths is None:
                paths = None
                break
            paths |= found
        if also is not None and paths is not None and also.paths is not None and len(paths) == len(also.paths):
            return also  # the added policies read nothing new (saves rebuilding it per workspace)
        if paths is None:  # one policy reads in a way not followed: give every attribute
            return cls(None, _USER_ATTRS, _MODEL_ATTRS, _DEPLOYMENT_ATTRS if deployment_action else ())
        filter_paths = [p for p in paths if p[:2] == ("resource", "content_filter")]
        # The record whole where a policy uses it whole (compares it), else only the fields read.
        fields = None if any(len(p) == 2 for p in filter_paths) else tuple(sorted({p[2] for p in filter_paths}))
        user = {p[1] for p in paths if p[0] == "principal" and len(p) > 1}
        resource = {p[1] for p in paths if p[0] == "resource" and len(p) > 1}
        if deployment_action:
            model = {p[2] for p in paths if p[:2] == ("resource", "model") and len(p) > 2}
            deployment = resource | ({"model"} if model else set())
        else:
            model, deployment = resource, set()
        return cls(frozenset(paths), tuple(a for a in _USER_ATTRS if a in user),
                   tuple(a for a in _MODEL_ATTRS if a in model), tuple(a for a in _DEPLOYMENT_ATTRS if a in deployment),
                   fields)


@dataclass(frozen=True)
class CompiledSet:
    policy_set: cedarpy.PolicySet
    ids: tuple[str, ...]  # the saved policies in the set (beside the base permit)
    texts: tuple[str, ...]  # their Cedar, in the same order
    audit_ids: frozenset[str]
    reads: Reads
    checks: tuple[prefilter.Check, ...] = ()  # each policy's exact pre-evaluation, in the order of ids
    # Outcomes (allowed, denied_by, audited_by) by the facts the policies can read; parsed
    # caller-and-model entities by theirs; single-policy sets for finding one that failed.
    # Filled by decisions, never copied to another set.
    memory: dict = field(default_factory=dict, compare=False, repr=False)
    bases: dict = field(default_factory=dict, compare=False, repr=False)
    singles: dict = field(default_factory=dict, compare=False, repr=False)
    subsets: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, chosen: list[StoredPolicy], action: str, base: CompiledSet | None = None) -> CompiledSet:
        """The base permit and `chosen`; or `base` (the platform's set for the action) and
        `chosen` added to it, parsing only `chosen` (a copy of the base's parsed policies)."""
        fragment = "\n".join(p.cedar for p in chosen)
        deployment_action = action in compiler.DEPLOYMENT_ACTIONS
        ids: tuple[str, ...]
        texts: tuple[str, ...]
        audit_ids: frozenset[str]
        if base is None:
            ps, ids, texts, audit_ids = (cedarpy.PolicySet.from_str(BASE_PERMIT + fragment), (), (), frozenset())
            reads = Reads.of((p.cedar for p in chosen), deployment_action)
        else:
            ps, ids, texts, audit_ids = base.policy_set.with_added_str(fragment), base.ids, base.texts, base.audit_ids
            reads = Reads.of((p.cedar for p in chosen), deployment_action, also=base.reads)
        checks = (base.checks if base is not None else ()) + tuple(prefilter.check_of(p.cedar, action) for p in chosen)
        ids += tuple(p.id for p in chosen)
        texts += tuple(p.cedar for p in chosen)
        return cls(ps, ids, texts, audit_ids | frozenset(p.id for p in chosen if p.audit), reads, checks)

    def only(self, keep: tuple[int, ...], deployment_action: bool) -> CompiledSet:
        """This set with only the policies at positions `keep`, reading only what they read;
        parsed once per such subset and kept."""
        if len(keep) == len(self.ids):
            return self
        sub = self.subsets.get(keep)
        if sub is None:
            ids, texts = tuple(self.ids[i] for i in keep), tuple(self.texts[i] for i in keep)
            sub = CompiledSet(cedarpy.PolicySet.from_str(BASE_PERMIT + "\n".join(texts)), ids, texts,
                              self.audit_ids & frozenset(ids), Reads.of(texts, deployment_action))
            if len(self.subsets) >= MEMORY_ENTRIES:
                self.subsets.clear()
            self.subsets[keep] = sub
        return sub

    def failed(self, request: dict, entities: cedarpy.Entities) -> set[str]:
        """The policies that fail to evaluate on this request, each tried alone (only when the
        whole set reported an error: Cedar's message names a policy by its position in a parse)."""
        out = set()
        for policy_id, text in zip(self.ids, self.texts, strict=True):
            single = self.singles.get(policy_id)
            if single is None:
                single = self.singles[policy_id] = cedarpy.PolicySet.from_str(BASE_PERMIT + text)
            if cedarpy.is_authorized(request, single, entities, compiler.schema()).diagnostics.errors:
                out.add(policy_id)
        return out


@dataclass(frozen=True)
class Decision:
    allowed: bool
    denied_by: tuple[str, ...] = ()
    audited_by: tuple[str, ...] = ()
    version: int = 0  # the snapshot that decided


@dataclass
class Snapshot:
    """Every policy in force, compiled. Never changed after it is built."""

    version: int  # the database's policy version it was built at (or after)
    platform: tuple[StoredPolicy, ...] = ()
    workspaces: dict[str, tuple[StoredPolicy, ...]] = field(default_factory=dict)
    sets: dict[tuple[str | None, str], CompiledSet] = field(default_factory=dict)

    @property
    def policies(self) -> tuple[StoredPolicy, ...]:
        return self.platform + tuple(p for ws in sorted(self.workspaces) for p in self.workspaces[ws])

    @classmethod
    def build(cls, version: int, policies: Iterable[StoredPolicy]) -> Snapshot:
        """From every stored policy."""
        platform: list[StoredPolicy] = []
        workspaces: dict[str, list[StoredPolicy]] = {}
        for p in policies:
            (platform if p.workspace_id is None else workspaces.setdefault(p.workspace_id, [])).append(p)
        return cls(version).updated(version, platform, {ws: tuple(ps) for ws, ps in workspaces.items()})

    def updated(self, version: int, platform: Iterable[StoredPolicy] | None,
                workspaces: dict[str, tuple[StoredPolicy, ...]]) -> Snapshot:
        """A new snapshot: this one with the platform's policies (None: unchanged) and the given
        workspaces' policies (an empty tuple: the workspace has none now) replaced. Only what
        changed is compiled again; the rest (and what it remembers) is shared."""
        snap = Snapshot(version=version, platform=self.platform if platform is None else tuple(platform),
                        workspaces={**self.workspaces, **{ws: ps for ws, ps in workspaces.items() if ps}})
        for ws, ps in workspaces.items():
            if not ps:
                snap.workspaces.pop(ws, None)
        if platform is None:
            snap.sets = {k: v for k, v in self.sets.items() if k[0] is None or k[0] not in workspaces}
            todo = sorted(ws for ws, ps in workspaces.items() if ps)
        else:
            for action in compiler.ACTIONS:
                chosen = [p for p in snap.platform if action in p.actions]
                if chosen:
                    snap.sets[(None, action)] = CompiledSet.of(chosen, action)
            todo = sorted(snap.workspaces)
        for ws in todo:
            for action in compiler.ACTIONS:
                mine = [p for p in snap.workspaces[ws] if action in p.actions]
                if mine:  # else decided by the platform's set alone
                    snap.sets[(ws, action)] = CompiledSet.of(mine, action, base=snap.sets.get((None, action)))
        return snap

    def compiled(self, workspace_id: str | None, action: str) -> CompiledSet | None:
        hit = self.sets.get((workspace_id, action))
        if hit is None and workspace_id is not None:
            hit = self.sets.get((None, action))
        return hit


def _stored(r: Policy) -> StoredPolicy:
    return StoredPolicy(id=r.policy_id, workspace_id=r.workspace_id, cedar=r.cedar, audit=r.audit,
                        actions=compiler.actions_of(r.cedar))


class PolicyEngine:
    """Holds the snapshot in force; decides, enforces and audits."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: False: every policy of a set goes to Cedar, as before the prefilter (benchmarks compare the two).
        self.prefilter = True
        self._snapshot: Snapshot | None = None
        self._reload_lock = threading.Lock()

    # -- the set in force -------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The set in force now: the database's policy version is read, and when it moved past
        this server's snapshot, the changed scopes are reloaded first."""
        version = self._read_version()
        snap = self._snapshot
        if snap is None or snap.version != version:
            snap = self.reload()
        return snap

    def _read_version(self) -> int:
        """The database's policy version: one primary-key read on the light engine (no pre-ping);
        tried once more only where the pooled connection was found dead (and dropped)."""
        try:
            try:
                with self.db.light.connect() as conn:
                    return int(conn.execute(_VERSION).scalar_one())
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            with self.db.light.connect() as conn:
                return int(conn.execute(_VERSION).scalar_one())
        except SQLAlchemyError as exc:
            log.warning("the policy version could not be read", extra={"event": "policy.version_unreadable"})
            raise ServiceUnavailable("The governance policies in force could not be checked (the metadata store did "
                                     "not answer); nothing was done. Retry shortly.") from exc

    def reload(self) -> Snapshot:
        """Bring the snapshot up to the database: the scopes whose version moved past it, or
        everything the first time (or if the counter went back, as after a restore). Serialized,
        and each reload reads the database when it runs, so a later reload never installs an
        older set."""
        try:
            with self._reload_lock, self.db.session() as s:
                # The version first: policies read after it are at least as new, and anything newer
                # moved the version past it, so the next request loads it again.
                version = int(s.execute(_VERSION).scalar_one())
                old = self._snapshot
                if old is not None and old.version == version:
                    return old
                if old is None or old.version > version:
                    rows = s.scalars(select(Policy).order_by(Policy.scope_key, Policy.policy_id)).all()
                    snap = Snapshot.build(version, map(_stored, rows))
                else:
                    changed = set(s.scalars(select(PolicyVersion.scope_key).where(
                        PolicyVersion.version > old.version, PolicyVersion.scope_key != "*")))
                    rows = s.scalars(select(Policy).where(Policy.scope_key.in_(changed))
                                     .order_by(Policy.scope_key, Policy.policy_id)).all() if changed else []
                    by_scope: dict[str, list[StoredPolicy]] = {k: [] for k in changed}
                    for r in rows:
                        by_scope[r.scope_key].append(_stored(r))
                    platform = by_scope.pop("", None)
                    snap = old.updated(version, platform, {k: tuple(v) for k, v in by_scope.items()})
                self._snapshot = snap  # one assignment: a decision sees the old set or this one
                return snap
        except SQLAlchemyError as exc:
            log.warning("the policies could not be loaded", extra={"event": "policy.reload_failed"})
            raise ServiceUnavailable("The governance policies in force could not be loaded (the metadata store did "
                                     "not answer); nothing was done. Retry shortly.") from exc

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, user: UserFacts, workspace_id: str | None, action: str, resource: Resource,
               snapshot: Snapshot | None = None) -> Decision:
        """The decision alone: no audit, no exception (for `policies test` and compliance, which
        pass one `snapshot` for all their decisions)."""
        snap = snapshot or self.snapshot
        compiled = snap.compiled(workspace_id, action)
        if compiled is None:
            return Decision(allowed=True, version=snap.version)
        allowed, denied, audited = decide_in(compiled, user, action, resource, self.prefilter)
        return Decision(allowed=allowed, denied_by=denied, audited_by=audited, version=snap.version)

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


# -- one decision on one compiled set -------------------------------------------------------------

def decide_in(compiled: CompiledSet, user: UserFacts, action: str, resource: Resource,
              use_prefilter: bool = True) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """(allowed, denied_by, audited_by) of `compiled` on these facts: remembered, or decided
    (`use_prefilter` False: every policy of the set goes to Cedar, as before the prefilter)."""
    reads = compiled.reads
    model = resource.model if isinstance(resource, DeploymentFacts) else resource
    key: tuple = (action, (user.id, *[getattr(user, a) for a in reads.user]),
                  (model.id, *[getattr(model, a) for a in reads.model]))
    if isinstance(resource, DeploymentFacts):
        key += (resource.id, *[getattr(resource, a) for a in reads.deployment if a != "model"])
    hit = compiled.memory.get(key)
    if hit is not None:
        return hit
    if use_prefilter:
        outcome = prefiltered_decision(compiled, user, action, resource)
    else:
        outcome = cedar_decision(compiled, user, action, resource)
    if len(compiled.memory) >= MEMORY_ENTRIES:
        compiled.memory.clear()
    compiled.memory[key] = outcome
    return outcome


def prefiltered_decision(compiled: CompiledSet, user: UserFacts, action: str,
                         resource: Resource) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """Each policy pre-evaluated in Python (prefilter.py): those that certainly cannot match are
    dropped, those that certainly match are matched; Cedar evaluates only the rest (not called at
    all when none is left), with entities holding only what the rest read."""
    matched: set[str] = set()
    rest: list[int] = []
    ids = compiled.ids
    for i, check in enumerate(compiled.checks):
        certain = check(user, resource)
        if certain is None:
            rest.append(i)
        elif certain:
            matched.add(ids[i])
    if rest:
        sub = compiled.only(tuple(rest), action in compiler.DEPLOYMENT_ACTIONS)
        _, denied, audited = cedar_decision(sub, user, action, resource)
        matched.update(denied, audited)
    denied = tuple(sorted(matched - compiled.audit_ids))
    return not denied, denied, tuple(sorted(matched & compiled.audit_ids))


def cedar_decision(compiled: CompiledSet, user: UserFacts, action: str,
                   resource: Resource) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """Ask Cedar, with the entities and attributes the set's policies can read."""
    reads = compiled.reads
    model = resource.model if isinstance(resource, DeploymentFacts) else resource
    base_key = ((user.id, *[getattr(user, a) for a in reads.user]),
                (model.id, *[getattr(model, a) for a in reads.model]))
    base = compiled.bases.get(base_key)
    if base is None:
        base = cedarpy.Entities.from_json_str(json.dumps([
            {"uid": {"type": "User", "id": user.id}, "parents": [],
             "attrs": {a: getattr(user, a) for a in reads.user}},
            {"uid": {"type": "Model", "id": model.id}, "parents": [],
             "attrs": {a: getattr(model, a) for a in reads.model}}]))
        if len(compiled.bases) >= MEMORY_ENTRIES:
            compiled.bases.clear()
        compiled.bases[base_key] = base
    if isinstance(resource, DeploymentFacts):
        attrs = {a: _deployment_attr(resource, a, reads.filter_fields) for a in reads.deployment}
        entities = base.with_added_json_str(json.dumps(
            [{"uid": {"type": "Deployment", "id": resource.id}, "parents": [], "attrs": attrs}]))
        resource_uid = {"type": "Deployment", "id": resource.id}
    else:
        entities = base
        resource_uid = {"type": "Model", "id": resource.id}
    request = {"principal": {"type": "User", "id": user.id}, "action": {"type": "Action", "id": action},
               "resource": resource_uid}  # no context: every fact is an entity attribute
    result = cedarpy.is_authorized(request, compiled.policy_set, entities, compiler.schema())
    # Every saved policy carries its @id; the base permit is the only other one that can match.
    matched = {i for i in result.diagnostics.id_annotations_by_reason.values() if i != BASE_PERMIT_ID}
    # A policy that failed to evaluate did not forbid anything; a governance control fails closed,
    # so an error in a deny policy denies (and in an audit policy, audits). If the error is in no
    # policy tried alone (the request itself), nothing can be trusted: deny by them all.
    if result.diagnostics.errors:
        log.warning("a policy failed to evaluate", extra={"event": "policy.error", "action": action})
        matched |= compiled.failed(request, entities) or set(compiled.ids)
    if not matched and not result.allowed:
        matched.update(compiled.ids)  # a deny that names nothing (no decision): deny by them all
    denied = tuple(sorted(matched - compiled.audit_ids))
    audited = tuple(sorted(matched & compiled.audit_ids))
    return not denied, denied, audited


def _deployment_attr(d: DeploymentFacts, name: str, filter_fields: tuple[str, ...] | None) -> object:
    if name == "model":
        return {"__entity": {"type": "Model", "id": d.model.id}}
    if name == "allowed_ranges":
        return list(d.allowed_ranges)
    if name == "content_filter":
        record = d.content_filter.record()
        # A field the record does not have is left out (`content_filter has foo` is false), never a KeyError.
        return record if filter_fields is None else {k: record[k] for k in filter_fields if k in record}
    return getattr(d, name)
