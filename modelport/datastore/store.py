"""The Datastore: encrypted objects (datasets, fine-tuned weights) with envelope encryption.

Every object version gets two fresh data keys. The inner one is wrapped by the workspace key
(the workspace's customer-managed key when it registered one, otherwise its own key in the
workspace keystore), the outer one by the platform key (the platform keystore). The two
keystores have separate master keys, and no key is derived from another (P11). The wrapped data
keys live in the workspace's key-ledger file; deleting an object rewrites that file without them
and removes the blob, after which nothing left can be decrypted (P12).

Order of a put, so that a failure at any step leaves no visible partial object:
  1. wrap both data keys (a provider that is down or a disabled key fails here: nothing written)
  2. stream plaintext -> two AEAD layers -> temp blob file; fsync; rename (ciphertext only)
  3. commit the ledger entry (atomic file replace): the object is visible from here on
  4. remove the replaced version's blob (its keys left the ledger in step 3)

Reads are streamed: `open` checks the keys and the header and decrypts the first chunk before
returning, so most errors surface before a response starts; later chunks are decrypted as they
are consumed, in bounded memory.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from modelport.datastore.aead import Source
from modelport.datastore.blobs import BlobStore, LocalBlobStore
from modelport.datastore.envelope import DataKeys, ObjectHeader, decrypt_object, encrypt_object
from modelport.datastore.errors import CorruptObject, StorageUnavailable
from modelport.datastore.keycache import DataKeyCache
from modelport.datastore.ledger import KekRef, Ledger, LedgerEntry, WorkspaceLedger
from modelport.errors import Conflict, Forbidden, InvalidInput, NotFound
from modelport.kms.base import (
    KeyDestroyed,
    KeyDisabled,
    KeyInfo,
    KeyProvider,
    KeyProviderRegistry,
    KeyProviderUnavailable,
    KeyState,
    KeyVersionRetired,
    WrappedKey,
)
from modelport.kms.files import FileSystem
from modelport.kms.local import LocalKeystore

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_KEY_CACHE_TTL = 60.0
PLATFORM_KEY_REF = "platform"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


# ------------------------------------------------------------------------------------ value types
@dataclass(frozen=True)
class KeyVersionRef:
    provider: str
    key_ref: str
    version: int


@dataclass(frozen=True)
class ObjectInfo:
    workspace_id: str
    object_id: str
    version: int
    size: int
    sha256: str
    created_at: str
    chunk_size: int
    workspace_key: KeyVersionRef
    platform_key: KeyVersionRef

    @property
    def key_versions(self) -> dict[str, int]:
        return {"workspace": self.workspace_key.version, "platform": self.platform_key.version}


@dataclass(frozen=True)
class WorkspaceKeyInfo:
    workspace_id: str
    provider: str
    key_ref: str
    cmk: bool
    state: KeyState
    latest_version: int
    min_decryption_version: int
    versioned: bool


@dataclass(frozen=True)
class RewrapReport:
    rewrapped: int
    unchanged: int
    workspaces: int = 1


@dataclass(frozen=True)
class GcReport:
    blobs_removed: int
    temp_files_removed: int


@dataclass(frozen=True)
class PurgeReport:
    """What `purge_workspace` did: objects shredded, blobs removed, local keys destroyed, and the
    provider of a customer-managed key in an external KMS whose registration was forgotten."""

    objects: int
    blobs_removed: int
    keys_destroyed: list[str]
    cmk_forgotten: str | None


def _info(workspace_id: str, e: LedgerEntry) -> ObjectInfo:
    return ObjectInfo(
        workspace_id=workspace_id,
        object_id=e.object_id,
        version=e.version,
        size=e.size,
        sha256=e.sha256,
        created_at=e.created_at,
        chunk_size=e.chunk_size,
        workspace_key=KeyVersionRef(e.inner.provider, e.inner.key_ref, e.inner.key_version),
        platform_key=KeyVersionRef(e.outer.provider, e.outer.key_ref, e.outer.key_version),
    )


def wrap_context(workspace_id: str, object_id: str, version: int, layer: str) -> dict[str, str]:
    """The context bound into each wrapped data key (KMS EncryptionContext, keystore AAD)."""
    return {
        "modelport:workspace": workspace_id,
        "modelport:object": object_id,
        "modelport:version": str(version),
        "modelport:layer": layer,
    }


def check_id(value: str, field: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(
            f"{field} is 1-128 letters, digits, '_' or '-', starting with a letter or digit", field=field
        )
    return value


# ---------------------------------------------------------------------------------- read stream
class PlaintextStream(Iterator[bytes]):
    """Verified plaintext chunks of one object version. Close it (or exhaust it) when done."""

    def __init__(self, info: ObjectInfo, fh: BinaryIO, first: bytes, rest: Iterator[bytes]) -> None:
        self.info = info
        self._fh: BinaryIO | None = fh
        self._first: bytes | None = first
        self._rest = rest
        self._delivered = 0

    def __next__(self) -> bytes:
        if self._fh is None:
            raise StopIteration
        try:
            if self._first is not None:
                chunk, self._first = self._first, None
            else:
                chunk = next(self._rest)
        except StopIteration:
            self.close()
            if self._delivered != self.info.size:
                raise CorruptObject("the stored object does not have its recorded size") from None
            raise
        except BaseException:
            self.close()
            raise
        self._delivered += len(chunk)
        return chunk

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def __enter__(self) -> PlaintextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_fh"):
            self.close()


# -------------------------------------------------------------------------------------- datastore
class Datastore:
    """Encrypted objects per workspace, with workspace and platform key management.

    Thread-safe: ledger and keystore mutations are serialised per workspace (and across
    processes, by file locks); encryption and decryption run without locks.
    """

    def __init__(
        self,
        root: Path,
        *,
        platform_keystore: LocalKeystore,
        workspace_keystore: LocalKeystore,
        providers: Iterable[KeyProvider] = (),
        blob_store: BlobStore | None = None,
        fs: FileSystem | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        key_cache_ttl: float = DEFAULT_KEY_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if platform_keystore.name == workspace_keystore.name:
            raise InvalidInput("the platform and workspace keystores need distinct names", field="name")
        self.root = Path(root)
        self.chunk_size = chunk_size
        ObjectHeader.new("w", "o", 1, chunk_size)  # validates the chunk size once, up front
        self._fs = fs or FileSystem()
        self._platform = platform_keystore
        self._workspace_keystore = workspace_keystore
        self._providers = KeyProviderRegistry([workspace_keystore, *providers])
        if platform_keystore.name in self._providers:
            raise InvalidInput("the platform keystore must not be a workspace key provider", field="name")
        self._ledger = Ledger(self.root / "ledger", fs=self._fs)
        self._blobs: BlobStore = blob_store or LocalBlobStore(self.root / "blobs", fs=self._fs)
        self._cache = DataKeyCache(key_cache_ttl, clock=clock)
        self._reserve_lock = threading.Lock()
        self._reserved: dict[tuple[str, str], int] = {}
        self._platform.ensure_key(PLATFORM_KEY_REF, labels={"purpose": "platform-key"})

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        platform_master_key: bytes,
        workspace_master_key: bytes,
        fs: FileSystem | None = None,
        **kwargs: Any,
    ) -> Datastore:
        """A datastore with its two local keystores under `root/keys` (the default layout)."""
        if platform_master_key == workspace_master_key:
            raise InvalidInput("the platform and workspace master keys must be independent keys", field="master_key")
        fs = fs or FileSystem()
        root = Path(root)
        platform = LocalKeystore(root / "keys" / "platform", platform_master_key, name="platform", fs=fs)
        workspace = LocalKeystore(root / "keys" / "workspace", workspace_master_key, name="local", fs=fs)
        return cls(root, platform_keystore=platform, workspace_keystore=workspace, fs=fs, **kwargs)

    @property
    def providers(self) -> KeyProviderRegistry:
        return self._providers

    @property
    def workspace_keystore(self) -> LocalKeystore:
        return self._workspace_keystore

    @property
    def platform_keystore(self) -> LocalKeystore:
        return self._platform

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    # ================================================================================= objects
    def put(self, workspace_id: str, object_id: str, source: Source) -> ObjectInfo:
        """Encrypt `source` (a binary file, bytes, or an iterable of bytes) as a new version."""
        check_id(workspace_id, "workspace_id")
        check_id(object_id, "object_id")
        kek = self._ensure_kek(workspace_id)
        version = self._reserve(workspace_id, object_id)
        try:
            keys = DataKeys.generate()
            inner = self._wrap_inner(kek, keys.inner, workspace_id, object_id, version)
            outer = self._wrap_outer(keys.outer, workspace_id, object_id, version)
            header = ObjectHeader.new(workspace_id, object_id, version, self.chunk_size)
            blob_key = f"{workspace_id}/{object_id}/v{version}-{secrets.token_hex(6)}"
            with self._blobs.writer(blob_key) as writer:
                result = encrypt_object(source, writer.write, header, keys)
            entry = LedgerEntry(
                object_id=object_id,
                version=version,
                size=result.size,
                sha256=result.sha256,
                chunk_size=self.chunk_size,
                blob_key=blob_key,
                created_at=_now(),
                inner=inner,
                outer=outer,
            )
            try:
                entry = self._commit(workspace_id, entry, keys)
            except BaseException:
                self._remove_blob_quietly(blob_key)
                raise
        finally:
            self._release(workspace_id, object_id, version)
        self._sweep_pending(workspace_id, strict=False)
        self._cache.put((workspace_id, object_id, entry.blob_key), keys)
        return _info(workspace_id, entry)

    def open(self, workspace_id: str, object_id: str) -> PlaintextStream:
        """Stream the plaintext of the current version; each chunk is verified before release."""
        check_id(workspace_id, "workspace_id")
        check_id(object_id, "object_id")
        for attempt in range(3):
            entry = self._entry(workspace_id, object_id)
            keys = self._data_keys(workspace_id, entry)
            try:
                fh, size = self._blobs.open(entry.blob_key)
            except FileNotFoundError:
                if attempt < 2:  # replaced by a concurrent put between our two reads: look again
                    continue
                raise CorruptObject("the object's blob is missing from storage") from None
            except OSError as exc:
                raise StorageUnavailable("the object's blob cannot be read; retry later") from exc
            break
        try:
            frames = decrypt_object(
                fh, size, keys, workspace_id=workspace_id, object_id=object_id, version=entry.version
            )
            first = next(frames)
        except BaseException:
            fh.close()
            raise
        return PlaintextStream(_info(workspace_id, entry), fh, first, frames)

    def read_bytes(self, workspace_id: str, object_id: str) -> bytes:
        """The whole plaintext, or an error and nothing: for small objects only."""
        with self.open(workspace_id, object_id) as stream:
            return b"".join(stream)

    def stat(self, workspace_id: str, object_id: str) -> ObjectInfo:
        check_id(workspace_id, "workspace_id")
        check_id(object_id, "object_id")
        return _info(workspace_id, self._entry(workspace_id, object_id))

    def list_objects(self, workspace_id: str) -> list[ObjectInfo]:
        check_id(workspace_id, "workspace_id")
        ledger = self._ledger.read(workspace_id)
        return [_info(workspace_id, e) for _, e in sorted(ledger.objects.items())]

    def delete(self, workspace_id: str, object_id: str) -> None:
        """Crypto-shred an object: its wrapped data keys leave the ledger, then its blobs go.

        The ledger rewrite is the point of no return. If removing a blob fails afterwards, the
        object is already unreadable and a retried delete (or `collect_garbage`) finishes.
        """
        check_id(workspace_id, "workspace_id")
        check_id(object_id, "object_id")
        prefix = f"{workspace_id}/{object_id}/"
        with self._ledger.transaction(workspace_id) as draft:
            self._prune_pending(draft)
            entry = draft.objects.pop(object_id, None)
            if entry is not None:
                draft.pending_blob_deletes.append(entry.blob_key)
            mine = [k for k in draft.pending_blob_deletes if k.startswith(prefix)]
            if entry is None and not mine:
                raise NotFound("no such object in this workspace")
        self._cache.evict(workspace_id, object_id)
        for key in mine:
            self._blobs.delete(key)
        self._sweep_pending(workspace_id, strict=False)

    def collect_garbage(self, *, min_age_s: float = 3600.0) -> GcReport:
        """Remove blobs no ledger entry points to and temp files left by a crash.

        Only files older than `min_age_s` are touched, so a put in flight (blob written, ledger
        not yet committed) is never collected.
        """
        removed = 0
        cutoff = time.time() - min_age_s
        for ws in self._ledger.workspaces():
            removed += self._sweep_pending(ws, strict=True)
            live = {e.blob_key for e in self._ledger.read(ws).objects.values()}
            for key in list(self._blobs.keys(ws)):
                if key not in live and self._older_than(key, cutoff):
                    removed += int(self._blobs.delete(key))
        temps = 0
        if isinstance(self._blobs, LocalBlobStore):
            for path in list(self._blobs.stale_temp_files()):
                if path.stat().st_mtime < cutoff:
                    self._fs.discard_temp(path)
                    temps += 1
        return GcReport(removed, temps)

    def purge_workspace(self, workspace_id: str) -> PurgeReport:
        """Crypto-shred every object of a workspace and destroy its workspace key: its deletion.

        Each step can be repeated, so a retry after a failure finishes the job:
          1. destroy every key of the workspace in the workspace keystore (its own key, every
             version, and a customer-managed key created there). From here nothing wrapped under
             them opens again, copies of the ledger in old backups included, and nothing new can
             be written for the workspace (`_ensure_kek` finds its key destroyed);
          2. unlink its ledger file: the wrapped data keys and the key registration are gone. A
             customer-managed key held in an external KMS is only forgotten, never disabled or
             deleted there: it is the customer's, and so is the decision to destroy it;
          3. remove its blobs (ciphertext that nothing can open any more) and their directory.
        """
        check_id(workspace_id, "workspace_id")
        with self._ledger.lock(workspace_id):
            ledger = self._ledger.read(workspace_id)
            try:
                destroyed = self._destroy_local_keys(workspace_id)
            finally:
                self._cache.evict(workspace_id)  # unwrapped data keys must not outlive their keys
            kek = ledger.kek
            external = kek is not None and kek.cmk and kek.provider != self._workspace_keystore.name
            self._ledger.remove(workspace_id)
        removed = 0
        for key in [k for k in self._blobs.keys(workspace_id) if k.startswith(f"{workspace_id}/")]:
            removed += int(self._blobs.delete(key))
        if isinstance(self._blobs, LocalBlobStore):  # temp files a crash left, then the directory
            try:
                shutil.rmtree(self._blobs.root / workspace_id)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageUnavailable("the workspace's blob directory could not be removed; retry") from exc
        return PurgeReport(len(ledger.objects), removed, destroyed, kek.provider if external and kek else None)

    def _destroy_local_keys(self, workspace_id: str) -> list[str]:
        keystore = self._workspace_keystore
        mine = [ref for ref in keystore.key_refs()
                if ref == self._default_key_ref(workspace_id) or ref.startswith(f"cmk-{workspace_id}-")]
        destroyed = []
        for ref in mine:
            info = keystore.describe(ref)
            # The label decides (a prefix alone could name another workspace's key); a destroyed
            # key has no labels left and nothing to destroy.
            if info.state is KeyState.DESTROYED or info.labels.get("workspace") != workspace_id:
                continue
            if info.state is KeyState.ENABLED:
                keystore.disable(ref)  # the explicit confirmation destroy asks for
            keystore.destroy(ref)
            destroyed.append(ref)
        return destroyed

    # ========================================================================= workspace keys
    def ensure_workspace_key(self, workspace_id: str) -> WorkspaceKeyInfo:
        """Give the workspace its own key in the workspace keystore unless it has a key already."""
        check_id(workspace_id, "workspace_id")
        self._ensure_kek(workspace_id)
        return self.workspace_key(workspace_id)

    def workspace_key(self, workspace_id: str) -> WorkspaceKeyInfo:
        kek = self._kek(workspace_id)
        info = self._provider(kek.provider).describe(kek.key_ref)
        return WorkspaceKeyInfo(
            workspace_id=workspace_id,
            provider=kek.provider,
            key_ref=kek.key_ref,
            cmk=kek.cmk,
            state=info.state,
            latest_version=info.latest_version,
            min_decryption_version=info.min_decryption_version,
            versioned=info.versioned,
        )

    def create_local_cmk(self, workspace_id: str) -> str:
        """Create a customer-managed key for the workspace in the local keystore; return its ref."""
        check_id(workspace_id, "workspace_id")
        return self._workspace_keystore.create_key(
            f"cmk-{workspace_id}-{secrets.token_hex(4)}", labels={"workspace": workspace_id, "purpose": "cmk"}
        )

    def register_cmk(self, workspace_id: str, provider: str, key_ref: str) -> WorkspaceKeyInfo:
        """Make a customer-managed key the workspace key; rewrap every object's inner key under it.

        The key is probed (wrap and unwrap a throwaway key) before anything changes. Switching is
        one atomic ledger write: every object is under the new key afterwards, or none is.
        """
        check_id(workspace_id, "workspace_id")
        target = self._providers.get(provider)
        if target is self._workspace_keystore:
            labels = self._workspace_keystore.describe(key_ref).labels
            if labels.get("workspace") != workspace_id or labels.get("purpose") != "cmk":
                raise Forbidden("this key is not a customer-managed key of this workspace", field="key_ref")
        info = target.describe(key_ref)
        if info.state is not KeyState.ENABLED:
            raise Conflict("the customer-managed key must be enabled to be registered", field="key_ref")
        probe_ctx = {"modelport:workspace": workspace_id, "modelport:purpose": "cmk-probe"}
        probe = secrets.token_bytes(32)
        if target.unwrap(target.wrap(key_ref, probe, probe_ctx), probe_ctx) != probe:
            raise Conflict("the customer-managed key did not round-trip a test key", field="key_ref")
        self._ensure_kek(workspace_id)
        self._switch_kek(workspace_id, KekRef(target.name, key_ref, cmk=True))
        return self.workspace_key(workspace_id)

    def unregister_cmk(self, workspace_id: str) -> WorkspaceKeyInfo:
        """Go back to the workspace's own key in the workspace keystore (rewrapping every object)."""
        kek = self._kek(workspace_id)
        if not kek.cmk:
            raise Conflict("this workspace has no customer-managed key registered")
        ref = self._default_key_ref(workspace_id)
        self._workspace_keystore.ensure_key(ref, labels={"workspace": workspace_id, "purpose": "workspace-key"})
        self._switch_kek(workspace_id, KekRef(self._workspace_keystore.name, ref, cmk=False))
        return self.workspace_key(workspace_id)

    def rotate_workspace_key(self, workspace_id: str) -> int:
        kek = self._kek(workspace_id)
        return self._provider(kek.provider).rotate(kek.key_ref)

    def disable_workspace_key(self, workspace_id: str) -> None:
        """Every read and write of the workspace's objects fails until `enable_workspace_key`."""
        kek = self._kek(workspace_id)
        self._provider(kek.provider).disable(kek.key_ref)
        self._cache.evict(workspace_id)

    def enable_workspace_key(self, workspace_id: str) -> None:
        kek = self._kek(workspace_id)
        self._provider(kek.provider).enable(kek.key_ref)

    def set_workspace_min_decryption_version(self, workspace_id: str, version: int, *, force: bool = False) -> None:
        """Retire older workspace-key versions. Refused while objects still need them, unless forced."""
        kek = self._kek(workspace_id)
        if not force:
            stale = sum(
                1
                for e in self._ledger.read(workspace_id).objects.values()
                if (e.inner.provider, e.inner.key_ref) == (kek.provider, kek.key_ref) and e.inner.key_version < version
            )
            if stale:
                raise Conflict(f"{stale} objects still use older key versions; run rewrap first (or force)")
        self._provider(kek.provider).set_min_decryption_version(kek.key_ref, version)
        self._cache.evict(workspace_id)

    def rewrap_workspace(self, workspace_id: str) -> RewrapReport:
        """Move every inner data key of the workspace to the newest workspace-key version.

        The objects' data is not touched or decrypted; on AWS KMS this is ReEncrypt and the data
        key never leaves KMS. One atomic ledger write: a failure leaves every entry as it was.
        """
        kek = self._kek(workspace_id)
        provider = self._provider(kek.provider)
        info = provider.describe(kek.key_ref)
        rewrapped = unchanged = 0
        with self._ledger.transaction(workspace_id) as draft:
            for oid, e in list(draft.objects.items()):
                ctx = wrap_context(workspace_id, oid, e.version, "inner")
                if (e.inner.provider, e.inner.key_ref) != (kek.provider, kek.key_ref):
                    dk = self._provider(e.inner.provider).unwrap(e.inner, ctx)
                    new = provider.wrap(kek.key_ref, dk, ctx)
                elif info.versioned and e.inner.key_version == info.latest_version:
                    unchanged += 1
                    continue
                else:
                    new = provider.rewrap(e.inner, ctx)
                draft.objects[oid] = replace(e, inner=new)
                rewrapped += 1
        return RewrapReport(rewrapped, unchanged)

    # ========================================================================== platform key
    def platform_key(self) -> KeyInfo:
        return self._platform.describe(PLATFORM_KEY_REF)

    def rotate_platform_key(self) -> int:
        return self._platform.rotate(PLATFORM_KEY_REF)

    def set_platform_min_decryption_version(self, version: int, *, force: bool = False) -> None:
        if not force:
            stale = sum(
                1
                for ws in self._ledger.workspaces()
                for e in self._ledger.read(ws).objects.values()
                if e.outer.key_version < version
            )
            if stale:
                raise Conflict(f"{stale} objects still use older platform-key versions; run rewrap first (or force)")
        self._platform.set_min_decryption_version(PLATFORM_KEY_REF, version)
        self._cache.clear()

    def rewrap_platform(self) -> RewrapReport:
        """Move every outer data key to the newest platform-key version.

        Atomic per workspace (one ledger file each) and idempotent: after a failure, every
        object is readable under its old or its new key version, and a retry finishes the job.
        """
        latest = self._platform.describe(PLATFORM_KEY_REF).latest_version
        rewrapped = unchanged = 0
        workspaces = self._ledger.workspaces()
        for ws in workspaces:
            with self._ledger.transaction(ws) as draft:
                for oid, e in list(draft.objects.items()):
                    if e.outer.key_version == latest:
                        unchanged += 1
                        continue
                    new = self._platform.rewrap(e.outer, wrap_context(ws, oid, e.version, "outer"))
                    draft.objects[oid] = replace(e, outer=new)
                    rewrapped += 1
        return RewrapReport(rewrapped, unchanged, len(workspaces))

    # ============================================================================== internals
    def _provider(self, name: str) -> KeyProvider:
        """The provider a stored key reference names; its absence is this installation's fault."""
        if name not in self._providers:
            raise KeyProviderUnavailable(f"key provider {name!r} is not configured in this installation")
        return self._providers.get(name)

    def _default_key_ref(self, workspace_id: str) -> str:
        return f"ws-{workspace_id}"

    def _kek(self, workspace_id: str) -> KekRef:
        check_id(workspace_id, "workspace_id")
        kek = self._ledger.read(workspace_id).kek
        if kek is None:
            raise NotFound("this workspace has no workspace key yet")
        return kek

    def _ensure_kek(self, workspace_id: str) -> KekRef:
        kek = self._ledger.read(workspace_id).kek
        if kek is not None:
            return kek
        with self._ledger.transaction(workspace_id) as draft:
            if draft.kek is None:
                ref = self._default_key_ref(workspace_id)
                info = self._workspace_keystore.ensure_key(
                    ref, labels={"workspace": workspace_id, "purpose": "workspace-key"})
                if info.state is KeyState.DESTROYED:  # purged: the workspace was deleted
                    raise KeyDestroyed("this workspace was deleted: its workspace key is destroyed")
                draft.kek = KekRef(self._workspace_keystore.name, ref, cmk=False)
            return draft.kek

    def _switch_kek(self, workspace_id: str, new: KekRef) -> None:
        provider = self._provider(new.provider)
        with self._ledger.transaction(workspace_id) as draft:
            for oid, e in list(draft.objects.items()):
                ctx = wrap_context(workspace_id, oid, e.version, "inner")
                dk = self._provider(e.inner.provider).unwrap(e.inner, ctx)
                draft.objects[oid] = replace(e, inner=provider.wrap(new.key_ref, dk, ctx))
            draft.kek = new
        self._cache.evict(workspace_id)

    def _wrap_inner(self, kek: KekRef, key: bytes, ws: str, obj: str, version: int) -> WrappedKey:
        try:
            return self._provider(kek.provider).wrap(kek.key_ref, key, wrap_context(ws, obj, version, "inner"))
        except KeyDisabled as exc:
            raise _workspace_disabled(ws) from exc

    def _wrap_outer(self, key: bytes, ws: str, obj: str, version: int) -> WrappedKey:
        try:
            return self._platform.wrap(PLATFORM_KEY_REF, key, wrap_context(ws, obj, version, "outer"))
        except KeyDisabled as exc:
            raise _platform_disabled() from exc

    def _data_keys(self, workspace_id: str, entry: LedgerEntry) -> DataKeys:
        cache_key = (workspace_id, entry.object_id, entry.blob_key)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        if entry.outer.provider != self._platform.name:
            raise CorruptObject("the ledger entry's outer key is not wrapped by the platform key")
        v = entry.version
        try:
            inner = self._provider(entry.inner.provider).unwrap(
                entry.inner, wrap_context(workspace_id, entry.object_id, v, "inner")
            )
        except KeyDisabled as exc:
            raise _workspace_disabled(workspace_id) from exc
        except KeyVersionRetired as exc:
            raise KeyVersionRetired(
                "this object's workspace-key version is retired; lower the minimum decryption version, "
                "or rewrap before retiring versions"
            ) from exc
        try:
            outer = self._platform.unwrap(entry.outer, wrap_context(workspace_id, entry.object_id, v, "outer"))
        except KeyDisabled as exc:
            raise _platform_disabled() from exc
        keys = DataKeys(inner, outer)
        self._cache.put(cache_key, keys)
        return keys

    def _entry(self, workspace_id: str, object_id: str) -> LedgerEntry:
        entry = self._ledger.read(workspace_id).objects.get(object_id)
        if entry is None:
            raise NotFound("no such object in this workspace")
        return entry

    def _reserve(self, workspace_id: str, object_id: str) -> int:
        current = self._ledger.read(workspace_id).objects.get(object_id)
        with self._reserve_lock:
            key = (workspace_id, object_id)
            version = max(current.version if current else 0, self._reserved.get(key, 0)) + 1
            self._reserved[key] = version
            return version

    def _release(self, workspace_id: str, object_id: str, version: int) -> None:
        with self._reserve_lock:
            if self._reserved.get((workspace_id, object_id)) == version:
                del self._reserved[(workspace_id, object_id)]

    def _commit(self, workspace_id: str, entry: LedgerEntry, keys: DataKeys) -> LedgerEntry:
        with self._ledger.transaction(workspace_id) as draft:
            current = draft.objects.get(entry.object_id)
            if current is not None and current.version >= entry.version:
                raise Conflict("a newer version of this object was stored concurrently; retry")
            if draft.kek is None:
                raise Conflict("the workspace's key registration was removed during the write; retry")
            if (draft.kek.provider, draft.kek.key_ref) != (entry.inner.provider, entry.inner.key_ref):
                # The workspace switched keys while we streamed: wrap under the new key, as the
                # switch did for every object it saw.
                entry = replace(
                    entry,
                    inner=self._wrap_inner(draft.kek, keys.inner, workspace_id, entry.object_id, entry.version),
                )
            draft.objects[entry.object_id] = entry
            if current is not None:
                draft.pending_blob_deletes.append(current.blob_key)
            self._prune_pending(draft)
        return entry

    def _prune_pending(self, draft: WorkspaceLedger) -> None:
        draft.pending_blob_deletes = [k for k in draft.pending_blob_deletes if self._blobs.exists(k)]

    def _sweep_pending(self, workspace_id: str, *, strict: bool) -> int:
        removed = 0
        for key in self._ledger.read(workspace_id).pending_blob_deletes:
            try:
                removed += int(self._blobs.delete(key))
            except StorageUnavailable:
                if strict:
                    raise
                log.warning("a replaced blob could not be removed yet; collect_garbage will retry")
        return removed

    def _remove_blob_quietly(self, key: str) -> None:
        try:
            self._blobs.delete(key)
        except StorageUnavailable:
            log.warning("an uncommitted blob could not be removed; collect_garbage will retry")

    def _older_than(self, key: str, cutoff: float) -> bool:
        if isinstance(self._blobs, LocalBlobStore):
            try:
                return self._blobs.path(key).stat().st_mtime < cutoff
            except FileNotFoundError:
                return False
        return True


def _workspace_disabled(workspace_id: str) -> KeyDisabled:
    return KeyDisabled(
        "the workspace key of this workspace is disabled: its encrypted data cannot be read or written "
        "until the key is enabled again",
        details={"workspace_id": workspace_id},
    )


def _platform_disabled() -> KeyDisabled:
    return KeyDisabled("the platform key is disabled; an operator must enable it before data can be used")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
