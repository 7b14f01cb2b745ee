"""Key management for operators: the workspace key (or its customer-managed key) and the
platform key. Role checks and audit here; the cryptography lives in the datastore and the
key providers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from modelport.audit import service as audit
from modelport.datastore.store import Datastore
from modelport.db.engine import Database
from modelport.identity.principal import Principal


def _plain(obj: Any) -> dict:
    out = asdict(obj)
    for k, v in list(out.items()):
        if hasattr(v, "value"):
            out[k] = v.value
        elif isinstance(v, dict):
            out[k] = dict(v)
    return out


class KeyService:
    def __init__(self, db: Database, datastore: Datastore) -> None:
        self.db = db
        self.datastore = datastore

    def _audit(self, actor: Principal, action: str, detail: dict | None = None) -> None:
        with self.db.session() as s:
            audit.record(s, actor, action, resource_type="key", resource_id=actor.workspace_id, detail=detail)

    # workspace key / customer-managed key ---------------------------------------------------
    def workspace_key(self, actor: Principal) -> dict:
        actor.require("workspace.read")
        return _plain(self.datastore.ensure_workspace_key(actor.workspace_id))

    def rotate_workspace_key(self, actor: Principal) -> dict:
        actor.require("keys.manage")
        version = self.datastore.rotate_workspace_key(actor.workspace_id)
        self._audit(actor, "workspace_key.rotate", {"version": version})
        return self.workspace_key(actor)

    def rewrap_workspace(self, actor: Principal) -> dict:
        actor.require("keys.manage")
        report = self.datastore.rewrap_workspace(actor.workspace_id)
        self._audit(actor, "workspace_key.rewrap", {"rewrapped": report.rewrapped})
        return asdict(report)

    def set_workspace_min_version(self, actor: Principal, version: int, force: bool) -> dict:
        actor.require("keys.manage")
        self.datastore.set_workspace_min_decryption_version(actor.workspace_id, version, force=force)
        self._audit(actor, "workspace_key.min_decryption_version", {"version": version, "force": force})
        return self.workspace_key(actor)

    def register_cmk(self, actor: Principal, provider: str | None, key_ref: str | None) -> dict:
        actor.require("keys.manage")
        if provider is None or (provider == "local" and key_ref is None):
            provider, key_ref = "local", self.datastore.create_local_cmk(actor.workspace_id)
        info = self.datastore.register_cmk(actor.workspace_id, provider, key_ref or "")
        self._audit(actor, "cmk.register", {"provider": provider})
        return _plain(info)

    def unregister_cmk(self, actor: Principal) -> dict:
        actor.require("keys.manage")
        info = self.datastore.unregister_cmk(actor.workspace_id)
        self._audit(actor, "cmk.unregister")
        return _plain(info)

    def set_workspace_key_enabled(self, actor: Principal, enabled: bool) -> dict:
        actor.require("keys.manage")
        if enabled:
            self.datastore.enable_workspace_key(actor.workspace_id)
        else:
            self.datastore.disable_workspace_key(actor.workspace_id)
        self._audit(actor, "cmk.enable" if enabled else "cmk.disable")
        return self.workspace_key(actor)

    # platform key ---------------------------------------------------------------------------
    def platform_key(self, actor: Principal) -> dict:
        actor.require("platform.keys")
        return _plain(self.datastore.platform_key())

    def rotate_platform_key(self, actor: Principal) -> dict:
        actor.require("platform.keys")
        version = self.datastore.rotate_platform_key()
        self._audit(actor, "platform_key.rotate", {"version": version})
        return self.platform_key(actor)

    def rewrap_platform(self, actor: Principal) -> dict:
        actor.require("platform.keys")
        report = self.datastore.rewrap_platform()
        self._audit(actor, "platform_key.rewrap", {"rewrapped": report.rewrapped, "workspaces": report.workspaces})
        return asdict(report)

    def set_platform_min_version(self, actor: Principal, version: int, force: bool) -> dict:
        actor.require("platform.keys")
        self.datastore.set_platform_min_decryption_version(version, force=force)
        self._audit(actor, "platform_key.min_decryption_version", {"version": version, "force": force})
        return self.platform_key(actor)
