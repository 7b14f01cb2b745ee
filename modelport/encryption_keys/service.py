"""Key management for operators: the workspace key (or its customer-managed key) and the
platform key. Role checks and audit here; the cryptography lives in the datastore and the
key providers.

A customer-managed key belongs to one workspace. Registering one needs proof from the key's
provider that the key's owner bound it to the caller's workspace (the local keystore labels the
keys it makes per workspace; AWS KMS keys carry the tag `modelport:workspace`); a key already
registered by another workspace is refused, whatever alias, id or ARN names it. Enabling,
disabling and rotating a registered key check the proof again, so a registration the key's owner
has since withdrawn cannot switch the key off for the workspace that owns it.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from modelport.audit import service as audit
from modelport.datastore.store import Datastore
from modelport.db.engine import Database
from modelport.errors import Conflict, Forbidden
from modelport.identity.principal import Principal
from modelport.kms.base import BindsKeysToWorkspaces, KeyDestroyed, KeyNotFound


def _plain(obj: Any) -> dict:
    out = asdict(obj)
    for k, v in list(out.items()):
        if hasattr(v, "value"):
            out[k] = v.value
        elif isinstance(v, dict):
            out[k] = dict(v)
    return out


class EncryptionKeyService:
    """The datastore's key-encryption keys (workspace key, customer-managed key, platform key);
    not API keys or deployment keys, which authenticate callers (identity/, deployments/)."""

    def __init__(self, db: Database, datastore: Datastore) -> None:
        self.db = db
        self.datastore = datastore
        self._registering = threading.Lock()  # one registration at a time: check, then register

    def _audit(self, actor: Principal, action: str, detail: dict | None = None) -> None:
        with self.db.session() as s:
            audit.record(s, actor, action, resource_type="key", resource_id=actor.workspace_id, detail=detail)

    # workspace key / customer-managed key ---------------------------------------------------
    def workspace_key(self, actor: Principal) -> dict:
        actor.require("workspace.read")
        return _plain(self.datastore.ensure_workspace_key(actor.workspace_id))

    def rotate_workspace_key(self, actor: Principal) -> dict:
        actor.require("encryption_keys.manage")
        self._still_bound(actor.workspace_id)
        version = self.datastore.rotate_workspace_key(actor.workspace_id)
        self._audit(actor, "workspace_key.rotate", {"version": version})
        return self.workspace_key(actor)

    def rewrap_workspace(self, actor: Principal) -> dict:
        actor.require("encryption_keys.manage")
        report = self.datastore.rewrap_workspace(actor.workspace_id)
        self._audit(actor, "workspace_key.rewrap", {"rewrapped": report.rewrapped})
        return asdict(report)

    def set_workspace_min_version(self, actor: Principal, version: int, force: bool) -> dict:
        actor.require("encryption_keys.manage")
        self.datastore.set_workspace_min_decryption_version(actor.workspace_id, version, force=force)
        self._audit(actor, "workspace_key.min_decryption_version", {"version": version, "force": force})
        return self.workspace_key(actor)

    def register_cmk(self, actor: Principal, provider: str | None, key_ref: str | None) -> dict:
        actor.require("encryption_keys.manage")
        ws = actor.workspace_id
        if provider is None or (provider == "local" and key_ref is None):
            provider, key_ref = "local", self.datastore.create_local_cmk(ws)
        with self._registering:
            ref = self._bound_ref(provider, key_ref or "", ws)
            self._refuse_if_registered_elsewhere(provider, ref, ws)
            info = self.datastore.register_cmk(ws, provider, ref)
        self._audit(actor, "cmk.register", {"provider": provider})
        return _plain(info)

    def _bound_ref(self, provider: str, key_ref: str, workspace_id: str) -> str:
        """The key's canonical reference, once its provider shows it is bound to this workspace."""
        target = self.datastore.providers.get(provider)
        if target is self.datastore.workspace_keystore:
            return key_ref  # its keys carry their workspace as a label, which the datastore checks
        if not isinstance(target, BindsKeysToWorkspaces):
            raise Forbidden("this key provider cannot show which workspace a key belongs to, so it cannot hold "
                            "customer-managed keys", field="provider")
        binding = target.key_binding(key_ref)
        if binding.workspace_id != workspace_id:
            raise Forbidden(f"the key is not bound to this workspace: its owner tags it modelport:workspace="
                            f"{workspace_id} at the key provider first", field="key_ref")
        return binding.key_ref

    def _refuse_if_registered_elsewhere(self, provider: str, ref: str, workspace_id: str) -> None:
        ledger = self.datastore.ledger
        for other in ledger.workspaces():
            kek = ledger.read(other).kek
            if other == workspace_id or kek is None or not kek.cmk or kek.provider != provider:
                continue
            if self._canonical(provider, kek.key_ref) == ref:
                raise Conflict("this key is already another workspace's customer-managed key; a key belongs to "
                               "one workspace", field="key_ref")

    def _canonical(self, provider: str, key_ref: str) -> str | None:
        """How a stored registration names its key today (registrations before the binding rule
        may name it by alias or id); None for a key that is gone."""
        target = self.datastore.providers.get(provider)
        if key_ref.startswith("arn:") or not isinstance(target, BindsKeysToWorkspaces):
            return key_ref
        try:
            return target.key_binding(key_ref).key_ref
        except (KeyNotFound, KeyDestroyed):
            return None

    def _still_bound(self, workspace_id: str) -> None:
        """Before a customer-managed key changes state: its owner still binds it to this workspace."""
        kek = self.datastore.ledger.read(workspace_id).kek
        if kek is None or not kek.cmk or kek.provider not in self.datastore.providers:
            return  # no customer-managed key, or its provider is gone (the operation says so itself)
        target = self.datastore.providers.get(kek.provider)
        if target is self.datastore.workspace_keystore:
            return
        if not isinstance(target, BindsKeysToWorkspaces) or \
                target.key_binding(kek.key_ref).workspace_id != workspace_id:
            raise Forbidden("the registered customer-managed key is no longer bound to this workspace at its key "
                            "provider (tag modelport:workspace); it cannot be enabled, disabled or rotated from here")

    def unregister_cmk(self, actor: Principal) -> dict:
        actor.require("encryption_keys.manage")
        info = self.datastore.unregister_cmk(actor.workspace_id)
        self._audit(actor, "cmk.unregister")
        return _plain(info)

    def set_workspace_key_enabled(self, actor: Principal, enabled: bool) -> dict:
        actor.require("encryption_keys.manage")
        self._still_bound(actor.workspace_id)
        if enabled:
            self.datastore.enable_workspace_key(actor.workspace_id)
        else:
            self.datastore.disable_workspace_key(actor.workspace_id)
        self._audit(actor, "cmk.enable" if enabled else "cmk.disable")
        return self.workspace_key(actor)

    # platform key ---------------------------------------------------------------------------
    def platform_key(self, actor: Principal) -> dict:
        actor.require("platform.encryption_keys")
        return _plain(self.datastore.platform_key())

    def rotate_platform_key(self, actor: Principal) -> dict:
        actor.require("platform.encryption_keys")
        version = self.datastore.rotate_platform_key()
        self._audit(actor, "platform_key.rotate", {"version": version})
        return self.platform_key(actor)

    def rewrap_platform(self, actor: Principal) -> dict:
        actor.require("platform.encryption_keys")
        report = self.datastore.rewrap_platform()
        self._audit(actor, "platform_key.rewrap", {"rewrapped": report.rewrapped, "workspaces": report.workspaces})
        return asdict(report)

    def set_platform_min_version(self, actor: Principal, version: int, force: bool) -> dict:
        actor.require("platform.encryption_keys")
        self.datastore.set_platform_min_decryption_version(version, force=force)
        self._audit(actor, "platform_key.min_decryption_version", {"version": version, "force": force})
        return self.platform_key(actor)
