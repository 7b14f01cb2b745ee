"""The real services in-process (`build_services` on a temporary home), the chat model on echo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelport.api.deps import Services
from modelport.bootstrap import build_services, prepare
from modelport.config import build_settings
from modelport.identity.principal import Principal
from tests.support.inference import CHAT_MODEL


@contextmanager
def installation_at(home: Path, db_url: str) -> Iterator[tuple[Services, Principal]]:
    """The services of an installation at `home` on `db_url`, prepared, and its platform admin."""
    settings = build_settings({"MODELPORT_HOME": str(home), "MODELPORT_DATABASE_URL": db_url,
                               "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo"})},
                              create_default_deployment=False)
    svc = build_services(settings)
    admin_key = prepare(svc).admin_key
    assert admin_key is not None
    try:
        yield svc, svc.identity.authenticate(admin_key)
    finally:
        svc.db.dispose()
