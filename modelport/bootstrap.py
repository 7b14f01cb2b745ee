"""Wiring: build the services from settings, migrate, create the first admin, load bundled models."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from modelport.api.deps import Services
from modelport.catalog.service import CatalogService
from modelport.catalog.storage import LocalModelStore, move_legacy_dir
from modelport.config import Settings
from modelport.datasets.service import DatasetService
from modelport.datastore.settings import from_settings as datastore_from_settings
from modelport.db import migrate
from modelport.db.engine import Database
from modelport.deployments.key_watch import PrivateWeightsWatch
from modelport.deployments.lifecycle import DeploymentLifecycle
from modelport.deployments.schemas import DeploymentCreate
from modelport.deployments.service import DeploymentService
from modelport.encryption_keys.service import EncryptionKeyService
from modelport.finetuning.service import FinetunedWeights, FinetuningService
from modelport.identity.offboarding import Offboarding
from modelport.identity.service import IdentityService
from modelport.inference.gateway import Gateway
from modelport.inference.judge import judge_factory
from modelport.inference.pools import PoolManager, RegionSlots, scale_policy
from modelport.marketplace.changes import Marketplace
from modelport.marketplace.offers import OfferService
from modelport.marketplace.publishers import PublisherService
from modelport.marketplace.report import PublisherReports
from modelport.metering.budgets import BudgetService
from modelport.metering.usage import UsageService
from modelport.metrics import Metrics
from modelport.offload import ThreadBudget
from modelport.policies.engine import PolicyEngine
from modelport.policies.service import PolicyService
from modelport.quotas.limiter import RateLimiter, storage_uri
from modelport.quotas.settle import settle as settle_tokens
from modelport.safety.backends.base import BackendSettings
from modelport.safety.service import SafetyService
from modelport.workers.sandbox import SandboxLauncher
from modelport.workers.supervisor import WorkerSupervisor

log = logging.getLogger("modelport.bootstrap")


def build_services(settings: Settings) -> Services:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    db = Database(settings.db_url)
    if move_legacy_dir(settings.home, settings.model_files_dir):
        log.info("moved model files to their new directory", extra={"event": "catalog.files_moved"})
    policies = PolicyEngine(db)  # one set in force for every governed action of this server
    catalog = CatalogService(db, LocalModelStore(settings.model_files_dir),
                             max_upload_bytes=settings.max_model_upload_bytes,
                             upload_ttl_seconds=settings.upload_ttl_seconds,
                             max_open_uploads=settings.max_open_uploads_per_workspace, policies=policies)
    deployments = DeploymentService(db, catalog, settings, policies=policies)
    if settings.allow_unisolated_workers:
        log.warning("MODELPORT_ALLOW_UNISOLATED_WORKERS=true: where no sandbox can be built, model workers and "
                    "trainers run WITHOUT isolation (network, files, processes); for development machines only")
    # Workers see nothing of the metadata store, the model files, the datastore or the keys (sandbox.py).
    supervisor = WorkerSupervisor(settings.run_dir, regions=list(settings.region_slots),
                                  launcher=SandboxLauncher.from_settings(settings, "workers"))
    datastore = datastore_from_settings(settings)
    pools = PoolManager(supervisor, RegionSlots(settings.region_slots), settings.queue_per_deployment,
                        policy=scale_policy(settings), workspace_cap=settings.pool_requests_per_workspace,
                        share=settings.pool_workspace_share)
    metrics = Metrics()
    gateway = Gateway(settings, db, catalog, deployments, pools, metrics)
    metrics.watch_queues(gateway.provisioner.queue_depths)
    finetuned = FinetunedWeights(db, datastore)
    gateway.provisioner.finetuned = finetuned
    identity = IdentityService(db)
    datasets = DatasetService(db, datastore, settings.max_dataset_bytes, activity=identity.activity)
    safety = SafetyService(db, metrics=metrics, screening_concurrency=settings.screening_concurrency,
                           screening_queue=settings.screening_queue,
                           screening_cache_entries=settings.screening_cache_entries,
                           screening_cascade=settings.screening_cascade,
                           blocklist_budget_s=settings.blocklist_budget_ms / 1000,
                           backend_settings=BackendSettings.from_settings(settings))
    safety.set_judge_factory(judge_factory(gateway))  # the llm-judge backend calls chat deployments
    usage = UsageService(db, gateway.usage.meter)
    budgets = BudgetService(db, usage)
    gateway.usage.meter.on_commit = budgets.on_commit  # every committed charge counts against its budget
    gateway.usage.meter.on_record = settle_tokens  # tokens used beyond the admission estimate count per minute
    finetuning = FinetuningService(db, catalog, datasets, datastore,
                                   max_active_jobs=settings.max_active_finetune_jobs_per_workspace)
    lifecycle = DeploymentLifecycle(deployments, gateway, safety, finetuning)
    offers = OfferService(db, policies)
    return Services(
        settings=settings,
        db=db,
        identity=identity,
        catalog=catalog,
        deployments=deployments,
        gateway=gateway,
        lifecycle=lifecycle,
        key_watch=PrivateWeightsWatch(db, finetuned, lifecycle),
        datasets=datasets,
        encryption_keys=EncryptionKeyService(db, datastore),
        safety=safety,
        finetuning=finetuning,
        offboarding=Offboarding(settings, db, identity, lifecycle, catalog, safety, datastore),
        publishers=PublisherService(db),
        offers=offers,
        marketplace=Marketplace(offers, lifecycle),
        usage=usage,
        budgets=budgets,
        reports=PublisherReports(db, usage),
        policies=PolicyService(db, policies, catalog, settings),
        rate_limiter=RateLimiter(storage_uri(settings.redis_url)),
        metrics=metrics,
        scan_budget=ThreadBudget(settings.scan_concurrency),
    )


@dataclass
class PrepareResult:
    admin_key: str | None
    problems: list[str]
    deployment_key: str | None = None


def prepare(svc: Services) -> PrepareResult:
    """Idempotent: safe on every start, and cheap when nothing changed."""
    if svc.prepared is not None:
        return svc.prepared
    migrate.upgrade(svc.db.engine)
    svc.policies.engine.reload()
    admin_key = svc.identity.bootstrap()
    if admin_key is not None:
        write_admin_key(svc.settings, admin_key)
    problems: list[str] = []
    if svc.settings.load_bundled_models:
        problems = svc.catalog.register_bundled()
        for p in problems:
            log.warning("bundled model not registered: " + p)
    svc.catalog.expire_uploads()
    deployment_key = None
    if admin_key is not None and svc.settings.create_default_deployment:
        deployment_key = _default_deployment(svc, admin_key)
    result = PrepareResult(admin_key=admin_key, problems=problems, deployment_key=deployment_key)
    svc.prepared = result
    return result


def write_admin_key(settings: Settings, secret: str) -> None:
    path = settings.admin_key_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)


def _default_deployment(svc: Services, admin_key: str) -> str | None:
    """First start: a serverless deployment `chat` of the bundled chat model, its key saved."""
    try:
        admin = svc.identity.authenticate(admin_key)
        created = svc.deployments.create(admin, DeploymentCreate(name="chat", model="SmolLM2-135M-Instruct",
                                                                 type="serverless"))
    except Exception:  # no bundled chat model (package missing): the catalog works without it
        log.warning("default deployment not created")
        return None
    path = svc.settings.home / "chat.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(created.primary + "\n")
    return created.primary
