"""Wiring: build the services from settings, migrate, create the first admin, load bundled models."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from modelport.api.deps import Services
from modelport.catalog.service import CatalogService
from modelport.catalog.storage import LocalModelStore
from modelport.config import Settings
from modelport.db import migrate
from modelport.db.engine import Database
from modelport.identity.service import IdentityService

log = logging.getLogger("modelport.bootstrap")


def build_services(settings: Settings) -> Services:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    db = Database(settings.db_url)
    return Services(
        settings=settings,
        db=db,
        identity=IdentityService(db),
        catalog=CatalogService(db, LocalModelStore(settings.blob_dir), max_upload_bytes=settings.max_model_upload_bytes,
                               upload_ttl_seconds=settings.upload_ttl_seconds),
    )


@dataclass
class PrepareResult:
    admin_key: str | None
    problems: list[str]


def prepare(svc: Services) -> PrepareResult:
    """Idempotent: safe on every start, and cheap when nothing changed."""
    if svc.extra.get("prepared"):
        return svc.extra["prepared"]  # type: ignore[return-value]
    migrate.upgrade(svc.db.engine)
    admin_key = svc.identity.bootstrap()
    if admin_key is not None:
        write_admin_key(svc.settings, admin_key)
    problems: list[str] = []
    if svc.settings.load_bundled_models:
        problems = svc.catalog.register_bundled()
        for p in problems:
            log.warning("bundled model not registered: " + p)
    svc.catalog.expire_uploads()
    result = PrepareResult(admin_key=admin_key, problems=problems)
    svc.extra["prepared"] = result
    return result


def write_admin_key(settings: Settings, secret: str) -> None:
    path = settings.admin_key_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)
