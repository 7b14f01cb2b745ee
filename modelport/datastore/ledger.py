"""The key ledger: per-object wrapped data keys, one file per workspace, replaced atomically.

Why a file and not a table: crypto-shredding (P12) needs the wrapped data keys of a deleted
object to be gone from disk, and a database keeps old row bytes in its WAL, free pages and
vacuum leftovers for an unbounded time. Here a deletion rewrites the workspace's ledger file
without the entry (temp file, fsync, rename, fsync directory): the only file that held the
wrapped keys is unlinked. The blob header never holds them either.

The file also records which key is the workspace key (the default one in the workspace keystore,
or a registered customer-managed key), so switching keys and rewrapping every object is one
atomic replace, and `pending_blob_deletes`: blobs whose keys are already destroyed but whose
removal has not been confirmed (a retry or `collect_garbage` finishes them).

Concurrency: `transaction(ws)` holds the workspace's inter-process lock, reads the file fresh,
hands out a copy and writes it back only if the block exits cleanly. A write failure leaves the
old file, so the key state is unchanged and the operation can be retried. Readers never lock:
they read whatever complete file is there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from modelport.datastore.errors import CorruptObject, StorageUnavailable
from modelport.kms.base import WrappedKey
from modelport.kms.files import TEMP_MARKER, FileSystem, InterProcessLock, is_temp_name, sweep_temp_files

FORMAT = 1
_SUFFIX = ".ledger.json"


@dataclass(frozen=True)
class KekRef:
    """Which key wraps a workspace's inner data keys."""

    provider: str
    key_ref: str
    cmk: bool


@dataclass(frozen=True)
class LedgerEntry:
    object_id: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    blob_key: str
    created_at: str
    inner: WrappedKey
    outer: WrappedKey


@dataclass
class WorkspaceLedger:
    workspace_id: str
    kek: KekRef | None = None
    objects: dict[str, LedgerEntry] = field(default_factory=dict)
    pending_blob_deletes: list[str] = field(default_factory=list)

    def copy(self) -> WorkspaceLedger:
        return replace(self, objects=dict(self.objects), pending_blob_deletes=list(self.pending_blob_deletes))


class Ledger:
    def __init__(self, root: Path, *, fs: FileSystem | None = None) -> None:
        self.root = Path(root)
        self._fs = fs or FileSystem()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._guard = threading.Lock()
        self._locks: dict[str, InterProcessLock] = {}
        self._cache: dict[str, tuple[bytes, WorkspaceLedger]] = {}
        self._sweep()

    def _sweep(self) -> None:
        """Temp copies of ledgers that crashed writers left (each removed under its workspace's
        lock, which every writer of that ledger holds while its temp file exists)."""
        try:
            names = [p.name for p in self.root.iterdir() if is_temp_name(p.name)]
            for workspace_id in {n[1:].split(_SUFFIX + TEMP_MARKER, 1)[0] for n in names if _SUFFIX + TEMP_MARKER in n}:
                with self.lock(workspace_id):
                    sweep_temp_files(self.root, self._fs, f".{workspace_id}{_SUFFIX}{TEMP_MARKER}")
        except OSError as exc:
            raise StorageUnavailable("the key ledger directory cannot be cleaned of temp files") from exc

    def path(self, workspace_id: str) -> Path:
        return self.root / f"{workspace_id}{_SUFFIX}"

    def lock(self, workspace_id: str) -> contextlib.AbstractContextManager[None]:
        with self._guard:
            lock = self._locks.get(workspace_id)
            if lock is None:
                lock = self._locks[workspace_id] = InterProcessLock(self.root / f".{workspace_id}.lock")
        return lock()

    def read(self, workspace_id: str) -> WorkspaceLedger:
        """The current ledger of a workspace (a private copy); an empty one if none exists.

        The file is read on every call and parsed only when its bytes changed, so a change made
        by another process is seen at once.
        """
        try:
            raw = self.path(workspace_id).read_bytes()
        except FileNotFoundError:
            return WorkspaceLedger(workspace_id)
        except OSError as exc:
            raise StorageUnavailable("the key ledger cannot be read; retry later") from exc
        with self._guard:
            cached = self._cache.get(workspace_id)
        if cached is not None and cached[0] == raw:
            return cached[1].copy()
        parsed = _parse(workspace_id, raw)
        with self._guard:
            self._cache[workspace_id] = (raw, parsed)
        return parsed.copy()

    @contextlib.contextmanager
    def transaction(self, workspace_id: str) -> Iterator[WorkspaceLedger]:
        """Lock, read, let the caller edit a copy, write it back atomically on a clean exit."""
        with self.lock(workspace_id):
            current = self.read(workspace_id)
            draft = current.copy()
            yield draft
            if draft != current:
                self._write(draft)

    def remove(self, workspace_id: str) -> bool:
        """Unlink a workspace's ledger file (its wrapped keys and key registration) durably.

        Only for the deletion of the whole workspace: the caller holds `lock(workspace_id)`.
        """
        try:
            removed = self._fs.remove(self.path(workspace_id))
            # and any copy a crashed writer left: it holds the same wrapped keys
            sweep_temp_files(self.root, self._fs, f".{workspace_id}{_SUFFIX}{TEMP_MARKER}")
        except OSError as exc:
            raise StorageUnavailable("the key ledger could not be removed; retry the deletion") from exc
        with self._guard:
            self._cache.pop(workspace_id, None)
        return removed

    def workspaces(self) -> list[str]:
        return sorted(
            p.name[: -len(_SUFFIX)]
            for p in self.root.iterdir()
            if p.name.endswith(_SUFFIX) and not is_temp_name(p.name)
        )

    def _write(self, ledger: WorkspaceLedger) -> None:
        raw = _dump(ledger)
        try:
            self._fs.write_atomic(self.path(ledger.workspace_id), raw)
        except OSError as exc:
            raise StorageUnavailable(
                "the key ledger could not be written; nothing changed, retry the operation"
            ) from exc
        with self._guard:
            self._cache[ledger.workspace_id] = (raw, ledger.copy())


def _wrapped_doc(w: WrappedKey) -> dict:
    return {
        "provider": w.provider,
        "key_ref": w.key_ref,
        "key_version": w.key_version,
        "ciphertext": base64.b64encode(w.ciphertext).decode(),
    }


def _wrapped(doc: dict) -> WrappedKey:
    return WrappedKey(doc["provider"], doc["key_ref"], int(doc["key_version"]), base64.b64decode(doc["ciphertext"]))


def _dump(ledger: WorkspaceLedger) -> bytes:
    doc = {
        "format": FORMAT,
        "workspace_id": ledger.workspace_id,
        "kek": None
        if ledger.kek is None
        else {"provider": ledger.kek.provider, "key_ref": ledger.kek.key_ref, "cmk": ledger.kek.cmk},
        "objects": {
            oid: {
                "version": e.version,
                "size": e.size,
                "sha256": e.sha256,
                "chunk_size": e.chunk_size,
                "blob_key": e.blob_key,
                "created_at": e.created_at,
                "inner": _wrapped_doc(e.inner),
                "outer": _wrapped_doc(e.outer),
            }
            for oid, e in sorted(ledger.objects.items())
        },
        "pending_blob_deletes": sorted(set(ledger.pending_blob_deletes)),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def _parse(workspace_id: str, raw: bytes) -> WorkspaceLedger:
    try:
        doc = json.loads(raw)
        if doc["format"] != FORMAT or doc["workspace_id"] != workspace_id:
            raise CorruptObject("the key ledger file does not belong to this workspace")
        kek = doc["kek"]
        objects = {
            oid: LedgerEntry(
                object_id=oid,
                version=int(e["version"]),
                size=int(e["size"]),
                sha256=e["sha256"],
                chunk_size=int(e["chunk_size"]),
                blob_key=e["blob_key"],
                created_at=e["created_at"],
                inner=_wrapped(e["inner"]),
                outer=_wrapped(e["outer"]),
            )
            for oid, e in doc["objects"].items()
        }
        return WorkspaceLedger(
            workspace_id=workspace_id,
            kek=None if kek is None else KekRef(kek["provider"], kek["key_ref"], bool(kek["cmk"])),
            objects=objects,
            pending_blob_deletes=list(doc.get("pending_blob_deletes", [])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject("the key ledger file is corrupt; restore it from a backup") from exc
