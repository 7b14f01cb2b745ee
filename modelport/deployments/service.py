"""Deployments: create, list, show, update, delete, rotate keys; the rows behind the endpoints.

The service owns the database side and the rules (names, model checks, geography, keys).
Starting and stopping worker processes is the data plane's job (`inference.gateway.Gateway`); a
change that touches both planes goes through `deployments.lifecycle.DeploymentLifecycle`, which
writes the row here first and then updates the routing table and the workers.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.catalog.service import CatalogService
from modelport.config import Settings
from modelport.db.base import new_id, utcnow
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, Deployment, UsageEvent, Workspace
from modelport.deployments import suspension
from modelport.deployments.schemas import DeploymentCreate, DeploymentUpdate
from modelport.errors import Conflict, InvalidInput, NotFound
from modelport.identity import secrets as keysecrets
from modelport.identity.principal import Principal
from modelport.identity.service import check_name
from modelport.marketplace import offers as marketplace
from modelport.policies.engine import PolicyEngine
from modelport.policies.facts import DeploymentFacts, FilterFacts, ModelFacts
from modelport.quotas import rates
from modelport.safety.config import ContentFilterConfig


@dataclass(frozen=True)
class CreatedDeployment:
    row: Deployment
    model: CatalogModel
    primary: str
    secondary: str


class DeploymentService:
    def __init__(self, db: Database, catalog: CatalogService, settings: Settings,
                 policies: PolicyEngine | None = None) -> None:
        self.db = db
        self.catalog = catalog
        self.settings = settings
        self.policies = policies or PolicyEngine(db)  # governance: deploy, update, content filter
        self._cap_lock = threading.Lock()  # counting a workspace's instances and adding some: atomic

    def _check_instance_cap(self, s: Session, workspace_id: str, adding: int, replacing: str | None = None) -> None:
        """Refuse `adding` more dedicated instances when the workspace would pass its cap. Call
        with `_cap_lock` held; the workspace row is locked too (PostgreSQL: several servers)."""
        cap = self.settings.max_dedicated_instances_per_workspace
        s.execute(select(Workspace.id).where(Workspace.id == workspace_id).with_for_update())
        stmt = select(func.coalesce(func.sum(Deployment.instances), 0)).where(
            Deployment.workspace_id == workspace_id, Deployment.type == "dedicated", Deployment.state != "deleting")
        if replacing is not None:
            stmt = stmt.where(Deployment.id != replacing)
        current = s.scalar(stmt) or 0
        if current + adding > cap:
            raise Conflict(
                f"This workspace runs {current} dedicated instances; {adding} more would pass the {cap} this server "
                "allows per workspace (MODELPORT_MAX_DEDICATED_INSTANCES_PER_WORKSPACE). Delete or scale down a "
                "dedicated deployment, or use a serverless one.", field="instances",
                details={"limit": "max_dedicated_instances_per_workspace", "current": current, "max": cap})

    def create(self, actor: Principal, req: DeploymentCreate) -> CreatedDeployment:
        actor.require("deployments.write")
        with self._cap_lock:
            return self._create(actor, req)

    def _create(self, actor: Principal, req: DeploymentCreate) -> CreatedDeployment:
        check_name(req.name, "name")
        geography = req.geography or next(iter(self.settings.geographies))
        if geography not in self.settings.geographies:
            raise InvalidInput(
                "That geography is not served by this installation; choose one of: "
                f"{', '.join(sorted(self.settings.geographies))}.",
                field="geography",
            )
        with self.db.session() as s:
            try:
                model = self.catalog.resolve(s, actor, req.model, req.model_version)
            except NotFound as exc:  # the message must not echo a body field (errors.py)
                raise NotFound("No model of that name and version is visible to this workspace; "
                               "'modelport models list' shows them.", field="model") from exc
            self._check_deployable(model, req.type)
            marketplace.check_deployable(s, actor.workspace_id, model, req.type)  # 409 subscription_required
            if req.type == "serverless" and req.instances != 1:
                raise InvalidInput(
                    "instances applies to dedicated deployments; serverless pools scale themselves.", field="instances"
                )
            content_filter = (
                ContentFilterConfig.default_for(req.type)
                if self.settings.content_filter_default == "on"
                else ContentFilterConfig.disabled()
            ).model_dump(mode="json")
            self.policies.enforce(actor, "deploy", DeploymentFacts(
                id="new", name=req.name, workspace=actor.workspace_name,
                model=ModelFacts.seen_by(model, actor, offer=marketplace.offer_id_of(s, model.id)),
                type=req.type, geography=geography, instances=req.instances,
                public_network_access=req.network.public_access, allowed_ranges=tuple(req.network.allowed_ranges),
                content_filter=FilterFacts.of(content_filter)))
            if req.type == "dedicated":
                self._check_instance_cap(s, actor.workspace_id, req.instances)
            p_lookup, primary = keysecrets.generate("mpd")
            s_lookup, secondary = keysecrets.generate("mpd")
            row = Deployment(
                id=new_id("dep"),
                workspace_id=actor.workspace_id,
                name=req.name,
                model_id=model.id,
                type=req.type,
                instances=req.instances,
                geography=geography,
                state="creating",
                network=req.network.model_dump(),
                content_filter=content_filter,
                primary_lookup=p_lookup,
                primary_digest=keysecrets.digest(primary),
                secondary_lookup=s_lookup,
                secondary_digest=keysecrets.digest(secondary),
                created_by=actor.user_id,
            )
            s.add(row)
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(
                    f"A deployment named '{req.name}' already exists in this workspace.", field="name"
                ) from exc
            audit.record(
                s,
                actor,
                "deployment.create",
                resource_type="deployment",
                resource_id=row.id,
                detail={"type": row.type, "model": model.id, "geography": geography},
            )
            return CreatedDeployment(row=row, model=model, primary=primary, secondary=secondary)

    @staticmethod
    def _check_deployable(model: CatalogModel, dep_type: str) -> None:
        if model.scan_status != "passed":
            raise Conflict(
                f"Model '{model.name}' failed its artifact scan and cannot be deployed; "
                "see its scan report (modelport models show)."
            )
        if dep_type not in (model.deployment_types or []):
            raise InvalidInput(
                f"Model '{model.name}' allows only {', '.join(model.deployment_types)} deployments.", field="type"
            )
        if model.deprecated:
            raise Conflict(f"Model '{model.name}' is deprecated; deploy a current model.")

    def _get(self, s: Session, actor: Principal, name: str, lock: bool = False) -> Deployment:
        stmt = select(Deployment).where(
            Deployment.workspace_id == actor.workspace_id, (Deployment.name == name) | (Deployment.id == name))
        row = s.scalar(stmt.with_for_update() if lock else stmt)
        if row is None:
            raise NotFound(f"Deployment '{name}' not found.")
        return row

    def get(self, actor: Principal, name: str) -> tuple[Deployment, CatalogModel]:
        actor.require("deployments.read")
        with self.db.session() as s:
            row = self._get(s, actor, name)
            return row, s.get_one(CatalogModel, row.model_id)

    def list(self, actor: Principal) -> Sequence[tuple[Deployment, CatalogModel]]:
        actor.require("deployments.read")
        with self.db.session() as s:
            rows = s.execute(
                select(Deployment, CatalogModel)
                .join(CatalogModel, CatalogModel.id == Deployment.model_id)
                .where(Deployment.workspace_id == actor.workspace_id)
                .order_by(Deployment.name)
            )
            return [(d, m) for d, m in rows]

    def update(self, actor: Principal, name: str, change: DeploymentUpdate) -> Deployment:
        """Instances and network: contributors; rate limits: owners; rate-limit caps: platform admins."""
        limits_only = change.instances is None and change.network is None and (
            change.rate_limits is not None or change.rate_limit_caps is not None)
        if not limits_only:
            actor.require("deployments.write")
        if change.rate_limits is not None:
            actor.require("deployments.rate_limits")
        if change.rate_limit_caps is not None:
            actor.require("platform.quotas")
        with self._cap_lock, self.db.session() as s:
            # Locked (PostgreSQL): a cap and an owner's limit changed at once by two servers
            # must not leave the limit above the cap.
            row = self._get(s, actor, name, lock=True)
            if row.state == "deleting":
                raise Conflict("This deployment is being deleted.")
            if change.instances is not None and row.type != "dedicated":
                raise InvalidInput("instances applies to dedicated deployments only.", field="instances")
            self.policies.enforce(actor, "update_deployment", DeploymentFacts.of(
                row, self._model_facts(s, actor, row), actor.workspace_name, instances=change.instances,
                network=change.network.model_dump() if change.network is not None else None))
            if change.instances is not None:
                if change.instances > row.instances:
                    self._check_instance_cap(s, actor.workspace_id, change.instances, replacing=row.id)
                row.instances = change.instances
            if change.network is not None:
                row.network = change.network.model_dump()
            if change.rate_limit_caps is not None:
                self._set_caps(actor, row, change.rate_limit_caps)
            if change.rate_limits is not None:
                self._set_rate_limits(actor, row, change.rate_limits)
            row.updated_at = utcnow()
            audit.record(
                s,
                actor,
                "deployment.update",
                resource_type="deployment",
                resource_id=row.id,
                detail={"fields": sorted(change.model_dump(exclude_none=True)),
                        **({"rate_limits": row.rate_limits, "rate_limit_caps": row.rate_limit_caps}
                           if change.rate_limits is not None or change.rate_limit_caps is not None else {})},
            )
            return row

    def _set_caps(self, actor: Principal, row: Deployment, change: rates.RateLimitsIn) -> None:
        """Platform admins set a deployment's caps; an owner's limit above a new cap comes down to it."""
        row.rate_limit_caps = rates.merged(row.rate_limit_caps, change)
        caps = rates.caps_of(self.settings, row.type, row.rate_limit_caps)
        own = dict(row.rate_limits or {})
        for f in rates.FIELDS:
            if own.get(f) is not None and own[f] > getattr(caps, f):
                own[f] = getattr(caps, f)
        row.rate_limits = own

    def _set_rate_limits(self, actor: Principal, row: Deployment, change: rates.RateLimitsIn) -> None:
        """Owners set limits at most the caps (400 naming the cap beyond)."""
        caps = rates.caps_of(self.settings, row.type, row.rate_limit_caps)
        wanted = rates.merged(row.rate_limits, change)
        for f in rates.FIELDS:
            value, cap = wanted[f], getattr(caps, f)
            if value is not None and value > cap:
                raise InvalidInput(f"rate_limits.{f} may be at most this deployment's cap of {cap}; a platform "
                                   "admin sets the caps.", field=f"rate_limits.{f}",
                                   details={"cap": cap})
        row.rate_limits = wanted

    def set_content_filter(self, actor: Principal, name: str, config: ContentFilterConfig,
                           known_blocklists: set[str]) -> Deployment:
        """Owners change a deployment's filter at once; the next request uses it."""
        actor.require("safety.manage")
        unknown = sorted(set(config.blocklists) - known_blocklists)
        if unknown:
            raise InvalidInput("The configuration names a blocklist this workspace does not have; create it first "
                               "(modelport safety blocklists put).",
                               field="blocklists")
        with self.db.session() as s:
            row = self._get(s, actor, name)
            if config.judge_deployment is not None:
                self._check_judge(s, actor, row, config.judge_deployment)
            new_filter = config.model_dump(mode="json")
            self.policies.enforce(actor, "change_content_filter", DeploymentFacts.of(
                row, self._model_facts(s, actor, row), actor.workspace_name, content_filter=new_filter))
            row.content_filter = new_filter
            row.updated_at = utcnow()
            audit.record(s, actor, "deployment.content_filter", resource_type="deployment", resource_id=row.id,
                         detail={"enabled": config.enabled})
            return row

    @staticmethod
    def _model_facts(s: Session, actor: Principal, row: Deployment) -> ModelFacts:
        return ModelFacts.seen_by(s.get_one(CatalogModel, row.model_id), actor)

    @staticmethod
    def _check_judge(s: Session, actor: Principal, row: Deployment, judge: str) -> None:
        """The llm-judge backend's deployment: a chat deployment of the same workspace and geography
        (the judged text must not leave the deployment's geography)."""
        found = s.execute(
            select(Deployment, CatalogModel)
            .join(CatalogModel, CatalogModel.id == Deployment.model_id)
            .where(Deployment.workspace_id == actor.workspace_id, Deployment.name == judge)
        ).first()
        if found is None:
            raise InvalidInput("judge_deployment names no deployment of this workspace; create the chat deployment "
                               "that should judge first.", field="judge_deployment")
        judge_row, model = found
        if model.task != "chat-completion":
            raise InvalidInput("judge_deployment must be a chat deployment (its model serves chat completions).",
                               field="judge_deployment")
        if judge_row.geography != row.geography:
            raise InvalidInput(f"judge_deployment must be in the deployment's geography ({row.geography}): screened "
                               "text may not leave it.", field="judge_deployment")

    def mark_deleting(self, actor: Principal, name: str) -> Deployment:
        actor.require("deployments.write")
        with self.db.session() as s:
            row = self._get(s, actor, name)
            row.state = "deleting"
            audit.record(s, actor, "deployment.delete", resource_type="deployment", resource_id=row.id)
            return row

    def remove_row(self, dep_id: str) -> None:
        with self.db.session() as s:
            row = s.get(Deployment, dep_id)
            if row is not None:
                s.delete(row)

    def regenerate_key(self, actor: Principal, name: str, which: str) -> tuple[Deployment, str]:
        actor.require("deployments.write")
        lookup, secret = keysecrets.generate("mpd")
        with self.db.session() as s:
            row = self._get(s, actor, name)
            if which == "primary":
                row.primary_lookup, row.primary_digest = lookup, keysecrets.digest(secret)
            else:
                row.secondary_lookup, row.secondary_digest = lookup, keysecrets.digest(secret)
            audit.record(
                s,
                actor,
                "deployment.regenerate_key",
                resource_type="deployment",
                resource_id=row.id,
                detail={"which": which},
            )
            return row, secret

    def set_state(self, dep_id: str, state: str, reason: str | None = None,
                  isolation: dict[str, bool] | None = None) -> None:
        """Record the data plane's outcome. A suspended deployment stays suspended (its workers
        may have finished starting after it was suspended): only `resume` of its last reason ends
        a suspension."""
        with self.db.session() as s:
            row = s.execute(select(Deployment).where(Deployment.id == dep_id).with_for_update()).scalar_one_or_none()
            if row is None or row.state == "deleting":
                return
            if isolation is not None:
                row.isolation = isolation
                row.egress = "isolated" if isolation["network"] else "not isolated"
            if row.suspensions:  # (stopping its workers may also have failed a start that was under way)
                return
            row.state = state
            row.state_reason = reason

    def suspend(self, dep_id: str, reason: str, message: str) -> bool:
        """Add a suspension reason (deployments/suspension.py). True when its workers must stop."""
        with self.db.session() as s:
            row = s.execute(select(Deployment).where(Deployment.id == dep_id).with_for_update()).scalar_one_or_none()
            return row is not None and row.state != "deleting" and suspension.add(row, reason, message)

    def resume(self, dep_id: str, reason: str) -> bool:
        """Clear one suspension reason. True when it was the last: its workers must start again."""
        with self.db.session() as s:
            row = s.execute(select(Deployment).where(Deployment.id == dep_id).with_for_update()).scalar_one_or_none()
            return row is not None and row.state != "deleting" and suspension.clear(row, reason)

    def usage(self, actor: Principal, name: str) -> dict:
        actor.require("deployments.read")
        with self.db.session() as s:
            row = self._get(s, actor, name)
            n, p, c = s.execute(
                select(
                    func.count(UsageEvent.id),
                    func.coalesce(func.sum(UsageEvent.input_tokens), 0),
                    func.coalesce(func.sum(UsageEvent.output_tokens), 0),
                ).where(UsageEvent.deployment_id == row.id)
            ).one()
            return {"deployment": row.name, "requests": n, "prompt_tokens": p, "completion_tokens": c}

    def usage_by_hour(self, actor: Principal, name: str, hours: int = 24) -> builtins.list[dict]:
        """Requests and tokens per hour over the last `hours` (oldest first, empty hours included):
        what the portal's usage chart draws."""
        actor.require("deployments.read")
        now = utcnow().replace(minute=0, second=0, microsecond=0)
        start = now - timedelta(hours=hours - 1)
        with self.db.session() as s:
            row = self._get(s, actor, name)
            if s.get_bind().dialect.name == "sqlite":
                bucket = func.strftime("%Y-%m-%dT%H", UsageEvent.at)
            else:
                bucket = func.to_char(func.date_trunc("hour", UsageEvent.at), "YYYY-MM-DD\"T\"HH24")
            rows = s.execute(
                select(bucket, func.count(UsageEvent.id),
                       func.coalesce(func.sum(UsageEvent.input_tokens + UsageEvent.output_tokens), 0))
                .where(UsageEvent.deployment_id == row.id, UsageEvent.at >= start).group_by(bucket)
            ).all()
        found = {b: (n, t) for b, n, t in rows}
        out = []
        for i in range(hours):
            at = start + timedelta(hours=i)
            n, t = found.get(at.strftime("%Y-%m-%dT%H"), (0, 0))
            out.append({"hour": at, "requests": n, "tokens": t})
        return out
