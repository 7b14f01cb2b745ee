"""A workspace deletion that fails halfway: the workspace stays `deleting`, nothing of it can be
used, and a retry or the next start of the server finishes it.

The services are the real ones (`build_services` on a temporary home, on SQLite and PostgreSQL),
driven in-process.
The failure is injected at the OS edge, where a full or failing disk would raise it: the datastore
the deletion uses is opened on the same files with a FileSystem whose next unlink of the ledger
fails with EIO (tests/kms/helpers.FlakyFileSystem).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from modelport.api.deps import Services
from modelport.bootstrap import build_services, prepare
from modelport.config import Settings, build_settings
from modelport.datastore.settings import from_settings
from modelport.db.tables import AuditEvent, Workspace
from modelport.errors import ModelportError, ServiceUnavailable, Unauthenticated
from modelport.identity.offboarding import Offboarding
from modelport.identity.principal import Principal
from tests.support.kms import FlakyFileSystem


def settings_for(home: Path, db_url: str) -> Settings:
    return build_settings({"MODELPORT_HOME": str(home), "MODELPORT_DATABASE_URL": db_url},
                          load_bundled_models=False, create_default_deployment=False)


@dataclass
class Doomed:
    ws_id: str
    key: str  # an API key of the workspace
    dataset_id: str


def doomed_workspace(svc: Services, admin: Principal, name: str) -> Doomed:
    ws = svc.identity.create_workspace(admin, name)  # the admin becomes its owner
    assert svc.prepared is not None and svc.prepared.admin_key is not None
    inside = svc.identity.authenticate(svc.prepared.admin_key, name)
    key = svc.identity.create_api_key(inside, name="k").secret
    row = svc.datasets.upload(inside, "d", None, iter([b'{"prompt": "p", "completion": "c"}\n']))
    return Doomed(ws.id, key, row.id)


@pytest.fixture
def installation(tmp_path: Path, db_url: str) -> Iterator[tuple[Services, Principal]]:
    svc = build_services(settings_for(tmp_path / "home", db_url))
    admin_key = prepare(svc).admin_key
    assert admin_key is not None
    try:
        yield svc, svc.identity.authenticate(admin_key)
    finally:
        svc.db.dispose()


def failing_offboarding(svc: Services) -> tuple[Offboarding, FlakyFileSystem]:
    fs = FlakyFileSystem()
    store = from_settings(svc.settings, fs=fs)
    return Offboarding(svc.settings, svc.db, svc.identity, svc.lifecycle, svc.catalog, svc.safety, store), fs


def state_of(svc: Services, ws_id: str) -> str | None:
    with svc.db.session() as s:
        return s.scalar(select(Workspace.state).where(Workspace.id == ws_id))


def test_a_failed_deletion_stays_deleting_and_a_retry_finishes_it(installation) -> None:
    svc, admin = installation
    doomed = doomed_workspace(svc, admin, "doomed")
    offboarding, fs = failing_offboarding(svc)
    fs.fail_next_unlink(match=".ledger.json")

    with pytest.raises(ServiceUnavailable) as caught:
        asyncio.run(offboarding.delete_workspace(admin, "doomed"))
    assert "did not finish" in caught.value.message and "repeat the deletion" in caught.value.message

    assert state_of(svc, doomed.ws_id) == "deleting"  # it does not look deleted...
    with pytest.raises(Unauthenticated, match="being deleted"):  # ...and nothing of it can be used
        svc.identity.authenticate(doomed.key)
    with pytest.raises(ModelportError) as read:  # the datastore as any process opens it (no cached data keys)
        from_settings(svc.settings).read_bytes(doomed.ws_id, doomed.dataset_id)
    assert read.value.code == "key_destroyed"  # the keys went first
    with svc.db.session() as s:
        failed = s.scalars(select(AuditEvent).where(AuditEvent.action == "workspace.delete",
                                                    AuditEvent.outcome == "failed")).all()
        assert [e.workspace_id for e in failed] == [doomed.ws_id]

    report = asyncio.run(offboarding.delete_workspace(admin, doomed.ws_id))  # the retry
    assert report["datasets"] == 1 and report["objects_shredded"] == 1, report
    assert state_of(svc, doomed.ws_id) is None
    assert not svc.datasets.datastore.ledger.path(doomed.ws_id).exists()


def test_the_next_start_finishes_a_deletion_a_stopped_server_left(installation, tmp_path: Path, db_url: str) -> None:
    svc, admin = installation
    doomed = doomed_workspace(svc, admin, "doomed")
    kept = doomed_workspace(svc, admin, "kept")
    offboarding, fs = failing_offboarding(svc)
    fs.fail_next_unlink(match=".ledger.json")
    with pytest.raises(ServiceUnavailable):
        asyncio.run(offboarding.delete_workspace(admin, "doomed"))
    svc.db.dispose()

    restarted = build_services(settings_for(tmp_path / "home", db_url))  # a new process on the same home
    try:
        assert asyncio.run(restarted.offboarding.resume()) == [doomed.ws_id]
        assert state_of(restarted, doomed.ws_id) is None
        assert not restarted.datasets.datastore.ledger.path(doomed.ws_id).exists()
        assert state_of(restarted, kept.ws_id) == "active"
        assert restarted.datasets.datastore.read_bytes(kept.ws_id, kept.dataset_id).startswith(b'{"prompt"')
        assert restarted.identity.authenticate(kept.key).workspace_id == kept.ws_id
        assert asyncio.run(restarted.offboarding.resume()) == []
    finally:
        restarted.db.dispose()


def test_who_may_delete_and_what_cannot_be_deleted(installation) -> None:
    svc, admin = installation
    doomed = doomed_workspace(svc, admin, "doomed")
    with pytest.raises(ModelportError) as caught:
        asyncio.run(svc.offboarding.delete_workspace(admin, "default"))
    assert caught.value.status_code == 409
    with pytest.raises(ModelportError) as caught:
        asyncio.run(svc.offboarding.delete_workspace(admin, "no-such-workspace"))
    assert caught.value.status_code == 404
    assert state_of(svc, doomed.ws_id) == "active"
    asyncio.run(svc.offboarding.delete_workspace(svc.identity.authenticate(doomed.key), "doomed"))  # from inside
    assert state_of(svc, doomed.ws_id) is None
