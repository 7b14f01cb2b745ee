"""Policies: list, show, save, delete, test; compliance of what exists. Role checks live here.

Who may do what: every member reads the policies in force in its workspace (the platform's and
its own); owners save and delete their workspace's policies; platform admins (platform-admin
power) save and delete platform policies. A workspace policy whose id is another workspace's is
simply not found (404), like every other resource of another workspace.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.db.base import utcnow
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment, Membership, Policy, PolicyVersion, User, Workspace
from modelport.errors import Conflict, Forbidden, InvalidInput, NotFound
from modelport.identity.principal import Principal
from modelport.policies import compiler
from modelport.policies.engine import Decision, PolicyEngine
from modelport.policies.facts import DeploymentFacts, FilterFacts, ModelFacts, UserFacts, as_json
from modelport.policies.schemas import PolicyPut, PolicyTest
from modelport.safety.config import ContentFilterConfig

#: How many policies one scope holds: each is evaluated on every governed request.
MAX_POLICIES_PER_SCOPE = 200
#: The suspension reason compliance enforcement adds (deployments/suspension.py).
SUSPENSION_REASON = "policy"


@dataclass(frozen=True)
class Violation:
    kind: str  # deployment | model
    id: str
    name: str
    workspace_id: str | None
    workspace: str | None
    action: str
    state: str | None
    decision: Decision


def _serialize_writers(s: Session) -> None:
    """Make this transaction the only one changing policies until it ends, on every server: the
    checks before a write (the cap per scope, an id taken in the other scope) then still hold when
    it commits. (An update of the version row: a row lock on PostgreSQL, the write lock on SQLite;
    the value is left to the triggers.)"""
    s.execute(update(PolicyVersion).where(PolicyVersion.scope_key == "*").values(version=PolicyVersion.version)
              .execution_options(synchronize_session=False))


class PolicyService:
    def __init__(self, db: Database, engine: PolicyEngine, catalog: CatalogService, settings: Settings) -> None:
        self.db = db
        self.engine = engine
        self.catalog = catalog
        self.settings = settings
        self._write_lock = threading.Lock()  # one writer of this server at a time (and _serialize_writers)

    # -- reading ----------------------------------------------------------------------------

    def list(self, actor: Principal) -> Sequence[tuple[Policy, str | None]]:
        """The platform policies and the actor's workspace's (platform admins without a
        membership: the platform's)."""
        if not (actor.is_platform_admin or actor.can("policies.read")):
            actor.require("policies.read")
        with self.db.session() as s:
            cond = Policy.scope_key == ""
            if actor.can("policies.read"):
                cond = cond | (Policy.workspace_id == actor.workspace_id)
            rows = s.scalars(select(Policy).where(cond).order_by(Policy.scope_key, Policy.policy_id)).all()
            return [(r, actor.workspace_name if r.workspace_id else None) for r in rows]

    def get(self, actor: Principal, policy_id: str) -> tuple[Policy, str | None]:
        for row, ws in self.list(actor):  # ids are unique across the scopes one sees (_check_id_free)
            if row.policy_id == policy_id:
                return row, ws
        raise NotFound(f"Policy '{policy_id}' not found ('modelport policies list' shows those in force here).")

    # -- writing ----------------------------------------------------------------------------

    def _require_scope(self, actor: Principal, scope: str) -> str:
        """The scope key the actor writes in, after the role check."""
        if scope == "platform":
            actor.require("platform.policies")
            return ""
        actor.require("policies.write")
        return actor.workspace_id

    def put(self, actor: Principal, policy_id: str, body: PolicyPut) -> tuple[Policy, bool]:
        """Save (create or replace) a policy; it is in force when this returns. (row, created)."""
        scope_key = self._require_scope(actor, body.scope)
        checked = compiler.check_document(policy_id, body.cedar)
        with self._write_lock:
            with self.db.session() as s:
                _serialize_writers(s)
                self._check_id_free(s, scope_key, policy_id)
                row = s.scalar(select(Policy).where(Policy.scope_key == scope_key, Policy.policy_id == policy_id))
                created = row is None
                if row is None:
                    count = len(s.scalars(select(Policy.id).where(Policy.scope_key == scope_key)).all())
                    if count >= MAX_POLICIES_PER_SCOPE:
                        raise Conflict(f"This scope holds {count} policies, the most allowed "
                                       f"({MAX_POLICIES_PER_SCOPE}); combine or delete some.",
                                       details={"limit": "max_policies_per_scope", "current": count,
                                                "max": MAX_POLICIES_PER_SCOPE})
                    row = Policy(policy_id=policy_id, scope_key=scope_key, workspace_id=scope_key or None,
                                 created_by=actor.user_id)
                    s.add(row)
                row.cedar, row.audit, row.updated_by, row.updated_at = (checked.text, checked.audit, actor.user_id,
                                                                        utcnow())
                try:
                    s.flush()
                except SAIntegrityError as exc:  # another server saved the same id meanwhile
                    raise Conflict(f"Policy '{policy_id}' was saved by someone else meanwhile; retry.") from exc
                audit.record(s, actor, "policy.put", resource_type="policy", resource_id=policy_id,
                             workspace_id=scope_key or actor.workspace_id,
                             detail={"scope": body.scope, "effect": "audit" if checked.audit else "deny",
                                     "created": created})
            self.engine.reload()
        return row, created

    @staticmethod
    def _check_id_free(s: Session, scope_key: str, policy_id: str) -> None:
        """Ids name policies in 403 answers and the audit log: a workspace policy may not take a
        platform policy's id, nor a platform policy a workspace's (which says nothing else of it)."""
        other = (Policy.scope_key != "") if scope_key == "" else (Policy.scope_key == "")
        if s.scalar(select(Policy.id).where(other, Policy.policy_id == policy_id)):
            where = "a workspace" if scope_key == "" else "the platform"
            raise Conflict(f"The id '{policy_id}' is taken by a policy of {where}; choose another.", field="id")

    def delete(self, actor: Principal, policy_id: str, scope: str) -> None:
        scope_key = self._require_scope(actor, scope)
        with self._write_lock:
            with self.db.session() as s:
                _serialize_writers(s)
                row = s.scalar(select(Policy).where(Policy.scope_key == scope_key, Policy.policy_id == policy_id))
                if row is None:
                    raise NotFound(f"No {scope} policy '{policy_id}' here ('modelport policies list' shows them).")
                s.delete(row)
                audit.record(s, actor, "policy.delete", resource_type="policy", resource_id=policy_id,
                             workspace_id=scope_key or actor.workspace_id, detail={"scope": scope})
            self.engine.reload()

    # -- deciding without doing -------------------------------------------------------------

    def test(self, actor: Principal, req: PolicyTest) -> tuple[Decision, dict]:
        """The decision on a described request, with no side effect (nothing written, no audit)."""
        if not actor.is_platform_admin:
            actor.require("policies.read")
        with self.db.session() as s:
            user = self._user_facts(s, actor, req.as_user)
            if req.model is None and req.deployment is None:
                raise InvalidInput("Name the model (--model) or, for a deployment action, the deployment.",
                                   field="model")
            dep_row = None
            if req.deployment is not None:
                if req.action not in compiler.DEPLOYMENT_ACTIONS:
                    raise InvalidInput(f"{req.action} acts on a model; leave out the deployment.", field="deployment")
                dep_row = s.scalar(select(Deployment).where(
                    Deployment.workspace_id == actor.workspace_id,
                    (Deployment.name == req.deployment) | (Deployment.id == req.deployment)))
                if dep_row is None:
                    raise NotFound("No deployment of that name in this workspace.", field="deployment")
            if req.model is not None:
                try:
                    model = self.catalog.resolve(s, actor, req.model, req.model_version)
                except NotFound as exc:
                    raise NotFound("No model of that name and version is visible to this workspace.",
                                   field="model") from exc
            else:
                # mypy is told to ignore the next line: dep_row is set on this branch
                model = s.get_one(CatalogModel, dep_row.model_id)  # type: ignore[union-attr]
            mfacts = ModelFacts.of(model, "platform" if not model.owner_workspace_id else actor.workspace_name)
            if req.action in compiler.MODEL_ACTIONS:
                resource: ModelFacts | DeploymentFacts = mfacts
            else:
                resource = self._deployment_facts(actor, req, dep_row, mfacts)
        decision = self.engine.decide(user, actor.workspace_id, req.action, resource)
        return decision, as_json(user, resource)

    def _user_facts(self, s: Session, actor: Principal, as_user: str | None) -> UserFacts:
        if as_user is None or as_user in (actor.user_name, actor.user_id):
            return UserFacts.of(actor)
        if not (actor.can("policies.write") or actor.is_platform_admin):
            raise Forbidden("Only owners and platform admins may test as another user; leave out --as.")
        user = s.scalar(select(User).where((User.name == as_user) | (User.id == as_user)))
        member = user and s.scalar(select(Membership).where(Membership.workspace_id == actor.workspace_id,
                                                           Membership.user_id == user.id))
        if user is None or (member is None and not actor.is_platform_admin):
            raise NotFound("No member of this workspace by that name.", field="as_user")
        return UserFacts(id=user.id, name=user.name, role=member.role if member else "none",
                         workspace=actor.workspace_name, platform_admin=bool(user.is_platform_admin))

    def _deployment_facts(self, actor: Principal, req: PolicyTest, row: Deployment | None,
                          model: ModelFacts) -> DeploymentFacts:
        dep_type = req.type or (row.type if row else "serverless")
        if row is not None:
            base = DeploymentFacts.of(row, model, actor.workspace_name)
        else:
            kind: Literal["serverless", "dedicated"] = "dedicated" if dep_type == "dedicated" else "serverless"
            default = (ContentFilterConfig.default_for(kind) if self.settings.content_filter_default == "on"
                       else ContentFilterConfig.disabled())
            base = DeploymentFacts(id="new", name="new", workspace=actor.workspace_name, model=model, type=dep_type,
                                   geography=next(iter(self.settings.geographies)), instances=1,
                                   public_network_access=True, allowed_ranges=(),
                                   content_filter=FilterFacts.of(default.model_dump(mode="json")))
        network = req.network
        return DeploymentFacts(
            id=base.id, name=base.name, workspace=base.workspace, model=model, type=dep_type,
            geography=req.geography or base.geography, instances=req.instances or base.instances,
            public_network_access=network.public_access if network else base.public_network_access,
            allowed_ranges=tuple(network.allowed_ranges) if network else base.allowed_ranges,
            content_filter=(FilterFacts.of(req.content_filter.model_dump(mode="json")) if req.content_filter
                            else base.content_filter))

    # -- existing resources -----------------------------------------------------------------

    def compliance(self, actor: Principal, all_workspaces: bool = False) -> tuple[int, builtins.list[Violation]]:
        """Deployments (as `deploy` by their creator) and models (as `import_model` by theirs)
        that the policies in force would deny or audit now. Owners: their workspace; platform
        admins with `all_workspaces`: every workspace and the catalog-wide models."""
        if all_workspaces:
            actor.require("platform.policies")
        else:
            actor.require("policies.read")
        snap = self.engine.snapshot  # one set for the whole listing
        version = snap.version
        out: list[Violation] = []
        with self.db.session() as s:
            ws_names = dict(s.execute(select(Workspace.id, Workspace.name)).all())
            users = {u.id: u for u in s.scalars(select(User))}
            roles = {(m.workspace_id, m.user_id): m.role for m in s.scalars(select(Membership))}

            def who(user_id: str | None, ws_id: str | None) -> UserFacts:
                u = users.get(user_id or "")
                ws = ws_names.get(ws_id or "", "")
                if u is None:  # a deleted user, or the platform itself (bundled models)
                    return UserFacts(id=user_id or "platform", name="", role="none", workspace=ws,
                                     platform_admin=False)
                return UserFacts(id=u.id, name=u.name, role=roles.get((ws_id or "", u.id), "none"), workspace=ws,
                                 platform_admin=bool(u.is_platform_admin))

            def model_facts(m: CatalogModel) -> ModelFacts:
                return ModelFacts.of(m, ws_names.get(m.owner_workspace_id, "") if m.owner_workspace_id
                                     else "platform")

            dep_q = select(Deployment, CatalogModel).join(CatalogModel, CatalogModel.id == Deployment.model_id)
            model_q = select(CatalogModel)
            if not all_workspaces:
                dep_q = dep_q.where(Deployment.workspace_id == actor.workspace_id)
                model_q = model_q.where(CatalogModel.owner_workspace_id == actor.workspace_id)
            for dep, m in s.execute(dep_q.order_by(Deployment.workspace_id, Deployment.name)):
                if dep.state == "deleting":
                    continue
                facts = DeploymentFacts.of(dep, model_facts(m), ws_names.get(dep.workspace_id, ""))
                d = self.engine.decide(who(dep.created_by, dep.workspace_id), dep.workspace_id, "deploy", facts,
                                       snapshot=snap)
                if d.denied_by or d.audited_by:
                    out.append(Violation("deployment", dep.id, dep.name, dep.workspace_id,
                                         ws_names.get(dep.workspace_id), "deploy", dep.state, d))
            for m in s.scalars(model_q.order_by(CatalogModel.name, CatalogModel.version)):
                ws_id = m.owner_workspace_id
                d = self.engine.decide(who(m.created_by, ws_id), ws_id, "import_model", model_facts(m), snapshot=snap)
                if d.denied_by or d.audited_by:
                    out.append(Violation("model", m.id, f"{m.name}@{m.version}", ws_id, ws_names.get(ws_id or ""),
                                         "import_model", None, d))
        return version, out

    def suspensions(self, actor: Principal, all_workspaces: bool
                    ) -> tuple[int, builtins.list[Violation], builtins.list[str], builtins.list[str]]:
        """For `--enforce`: (policy version, violations, deployments to suspend for policy now,
        deployments suspended for policy that comply again)."""
        if all_workspaces:
            actor.require("platform.policies")
        else:
            actor.require("policies.write")
        version, found = self.compliance(actor, all_workspaces)
        denied = {v.id for v in found if v.kind == "deployment" and v.decision.denied_by}
        with self.db.session() as s:
            q = select(Deployment).where(Deployment.state != "deleting")
            if not all_workspaces:
                q = q.where(Deployment.workspace_id == actor.workspace_id)
            rows = s.scalars(q).all()
            held = {d.id for d in rows if SUSPENSION_REASON in (d.suspensions or {})}
        return version, found, sorted(denied - held), sorted(held - denied)

    def record_enforcement(self, actor: Principal, suspended: builtins.list[str], resumed: builtins.list[str],
                           all_workspaces: bool) -> None:
        with self.db.session() as s:
            audit.record(s, actor, "policy.enforce", resource_type="deployment", outcome="success",
                         workspace_id=None if all_workspaces else actor.workspace_id,
                         detail={"suspended": suspended, "resumed": resumed, "all_workspaces": all_workspaces})
