"""LocalKeystore: the default key provider, and the reference for every other one.

Each key is one JSON file `<key_ref>.json` in the keystore directory, replaced atomically on
every change. It holds the key's versions, each 32 bytes of key material encrypted with
AES-256-GCM under the keystore's master key (bound to key ref and version as associated data),
its state and its minimum decryption version: the shape of a Vault transit keyring. Key material
is never in the metadata database and never in plaintext on disk; the master key comes from a
file or an environment variable and is never stored beside the keys by this class.

The file is read again on every operation (a few hundred bytes), so a key disabled by another
process on the same machine (the CLI while the gateway runs) takes effect at once here; only
the datastore's data-key cache (bounded by its TTL) can delay it.

Wrapped data key layout (all of it authenticated; the version is in the clear so the right
key version is picked, as in Vault's `vault:v3:` prefix):

    0x01 | key version (u32 big-endian) | nonce (12) | AES-256-GCM(data key) | tag (16)
"""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelport.errors import Conflict, InvalidInput
from modelport.kms.base import (
    KeyDestroyed,
    KeyDisabled,
    KeyInfo,
    KeyNotFound,
    KeyProviderUnavailable,
    KeyState,
    KeyVersionRetired,
    UnwrapFailed,
    WrappedKey,
    validate_key_ref,
)
from modelport.kms.files import FileSystem, InterProcessLock, is_temp_name, sweep_temp_files

FORMAT = 1
MASTER_KEY_SIZE = 32
_WRAP_FORMAT = 0x01
_WRAP_HEAD = struct.Struct(">BI")
_NONCE = 12
_MATERIAL_AAD = b"modelport/keystore/material/v1\x00"
_WRAP_AAD = b"modelport/keystore/wrap/v1\x00"


def canonical_context(context: Mapping[str, str]) -> bytes:
    """A stable byte encoding of a wrap context, used as associated data."""
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("wrap context keys and values must be str")
    return json.dumps(sorted(context.items()), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class _Keyring:
    key_ref: str
    state: KeyState
    latest_version: int
    min_decryption_version: int
    labels: dict[str, str]
    created_at: str
    versions: dict[int, AESGCM] = field(repr=False)
    raw_versions: dict[int, dict[str, str]] = field(repr=False)


class LocalKeystore:
    """Versioned key-encryption keys in files, encrypted under a master key.

    `name` is the provider name recorded in every WrappedKey; the datastore runs two instances
    with separate directories and separate master keys (the platform keystore and the workspace
    keystore), so that neither hierarchy can open the other's keys.
    """

    def __init__(self, root: Path, master_key: bytes, *, name: str = "local", fs: FileSystem | None = None) -> None:
        if len(master_key) != MASTER_KEY_SIZE:
            raise InvalidInput("a keystore master key is 32 bytes (AES-256)", field="master_key")
        self.name = name
        self.root = Path(root)
        self._master = AESGCM(master_key)
        self._fs = fs or FileSystem()
        self._lock = InterProcessLock(self.root / ".lock")
        self._cache_lock = threading.Lock()
        self._cache: dict[str, tuple[bytes, _Keyring | None]] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise KeyProviderUnavailable("the local keystore directory cannot be created") from exc
        self._sweep()

    def _sweep(self) -> None:
        """What a crashed writer left: a key file's temp copy, which would keep a destroyed key's
        sealed material on disk. Every writer holds the lock while its temp file exists."""
        try:
            with self._mutation():
                sweep_temp_files(self.root, self._fs)
        except OSError as exc:
            raise KeyProviderUnavailable("the local keystore directory cannot be cleaned of temp files") from exc

    # ------------------------------------------------------------------------------ key admin
    def create_key(self, key_ref: str | None = None, *, labels: Mapping[str, str] | None = None) -> str:
        if key_ref is None:
            key_ref = "key-" + os.urandom(12).hex()
        validate_key_ref(key_ref)
        with self._mutation():
            if self._path(key_ref).exists():
                raise Conflict("a key with this reference already exists (or was destroyed)", field="key_ref")
            now = _now()
            ring = _Keyring(
                key_ref=key_ref,
                state=KeyState.ENABLED,
                latest_version=0,
                min_decryption_version=1,
                labels=dict(labels or {}),
                created_at=now,
                versions={},
                raw_versions={},
            )
            self._add_version(ring)
            self._store(ring)
        return key_ref

    def ensure_key(self, key_ref: str, *, labels: Mapping[str, str] | None = None) -> KeyInfo:
        """Create the key unless it exists; return its description either way."""
        with self._mutation():
            if not self._path(key_ref).exists():
                self.create_key(key_ref, labels=labels)
            return self.describe(key_ref)

    def key_refs(self) -> list[str]:
        """Every key of this keystore, destroyed ones (tombstones) included."""
        return sorted(p.stem for p in self.root.glob("*.json") if not is_temp_name(p.name))

    def describe(self, key_ref: str) -> KeyInfo:
        ring = self._load(key_ref)
        if ring is None:
            return KeyInfo(self.name, key_ref, KeyState.DESTROYED, 0, 0)
        return KeyInfo(
            provider=self.name,
            key_ref=key_ref,
            state=ring.state,
            latest_version=ring.latest_version,
            min_decryption_version=ring.min_decryption_version,
            labels=dict(ring.labels),
        )

    def rotate(self, key_ref: str) -> int:
        with self._mutation():
            ring = self._require(key_ref)
            self._add_version(ring)
            self._store(ring)
            return ring.latest_version

    def set_min_decryption_version(self, key_ref: str, version: int) -> None:
        with self._mutation():
            ring = self._require(key_ref)
            if not 1 <= version <= ring.latest_version:
                raise InvalidInput(
                    f"the minimum decryption version must be between 1 and {ring.latest_version}",
                    field="min_decryption_version",
                )
            ring.min_decryption_version = version
            self._store(ring)

    def disable(self, key_ref: str) -> None:
        self._set_state(key_ref, KeyState.DISABLED)

    def enable(self, key_ref: str) -> None:
        self._set_state(key_ref, KeyState.ENABLED)

    def destroy(self, key_ref: str) -> None:
        """Replace the key file by a tombstone: every version's material is gone.

        Refused while the key is enabled: disabling first is the explicit confirmation (Vault
        asks for `deletion_allowed`, AWS KMS for a disabled or scheduled key).
        """
        with self._mutation():
            ring = self._require(key_ref, allow_disabled=True)
            if ring.state is KeyState.ENABLED:
                raise Conflict("disable the key before destroying it; destruction cannot be undone")
            tombstone = {"format": FORMAT, "key_ref": key_ref, "state": "destroyed", "destroyed_at": _now()}
            self._write(key_ref, tombstone)
            self._sweep()  # a crashed writer's copy of this key must not outlive it

    # ------------------------------------------------------------------------------- wrapping
    def wrap(self, key_ref: str, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        ring = self._require(key_ref)
        version = ring.latest_version
        nonce = os.urandom(_NONCE)
        aad = self._wrap_aad(key_ref, version, context)
        ciphertext = ring.versions[version].encrypt(nonce, bytes(plaintext), aad)
        blob = _WRAP_HEAD.pack(_WRAP_FORMAT, version) + nonce + ciphertext
        return WrappedKey(self.name, key_ref, version, blob)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if wrapped.provider != self.name:
            raise UnwrapFailed("the wrapped key belongs to another key provider")
        ring = self._require(wrapped.key_ref)
        blob = wrapped.ciphertext
        if len(blob) < _WRAP_HEAD.size + _NONCE + 16:
            raise UnwrapFailed("the wrapped key is malformed")
        fmt, version = _WRAP_HEAD.unpack_from(blob)
        if fmt != _WRAP_FORMAT or version != wrapped.key_version or version not in ring.versions:
            raise UnwrapFailed("the wrapped key is malformed or names an unknown key version")
        if version < ring.min_decryption_version:
            raise KeyVersionRetired(
                f"this data key is wrapped under key version {version}, below the minimum decryption "
                f"version {ring.min_decryption_version}; lower the minimum or restore from a rewrapped copy"
            )
        nonce = blob[_WRAP_HEAD.size : _WRAP_HEAD.size + _NONCE]
        try:
            return ring.versions[version].decrypt(
                nonce, blob[_WRAP_HEAD.size + _NONCE :], self._wrap_aad(wrapped.key_ref, version, context)
            )
        except InvalidTag:
            raise UnwrapFailed("the wrapped key did not authenticate (tampered, or bound to another object)") from None

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        data_key = self.unwrap(wrapped, context)
        return self.wrap(wrapped.key_ref, data_key, context)

    # ------------------------------------------------------------------------------ internals
    def _wrap_aad(self, key_ref: str, version: int, context: Mapping[str, str]) -> bytes:
        return b"%s%s\x00%d\x00%s" % (_WRAP_AAD, key_ref.encode(), version, canonical_context(context))

    def _material_aad(self, key_ref: str, version: int) -> bytes:
        return b"%s%s\x00%d" % (_MATERIAL_AAD, key_ref.encode(), version)

    def _path(self, key_ref: str) -> Path:
        return self.root / f"{validate_key_ref(key_ref)}.json"

    def _mutation(self) -> AbstractContextManager[None]:
        return self._lock()

    def _add_version(self, ring: _Keyring) -> None:
        version = ring.latest_version + 1
        material = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._master.encrypt(nonce, material, self._material_aad(ring.key_ref, version))
        ring.raw_versions[version] = {"created_at": _now(), "material": base64.b64encode(sealed).decode()}
        ring.versions[version] = AESGCM(material)
        ring.latest_version = version

    def _set_state(self, key_ref: str, state: KeyState) -> None:
        with self._mutation():
            ring = self._require(key_ref, allow_disabled=True)
            if ring.state is not state:
                ring.state = state
                self._store(ring)

    def _require(self, key_ref: str, *, allow_disabled: bool = False) -> _Keyring:
        ring = self._load(key_ref)
        if ring is None:
            raise KeyDestroyed("the key was destroyed; data protected by it cannot be recovered")
        if ring.state is KeyState.DISABLED and not allow_disabled:
            raise KeyDisabled(
                f"the key is disabled in key provider {self.name!r}; enable it to use data protected by it"
            )
        return ring

    def _load(self, key_ref: str) -> _Keyring | None:
        """Read the key file (fresh every call); None for a destroyed key."""
        path = self._path(key_ref)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(f"no such key in key provider {self.name!r}", field="key_ref") from None
        except OSError as exc:
            raise KeyProviderUnavailable("the local keystore cannot be read; retry later") from exc
        with self._cache_lock:
            cached = self._cache.get(key_ref)
        if cached is not None and cached[0] == raw:
            return _copy(cached[1])
        try:
            ring = self._parse(key_ref, raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise UnwrapFailed("the keystore file is corrupt; restore it from a backup") from exc
        with self._cache_lock:
            self._cache[key_ref] = (raw, ring)
        return _copy(ring)

    def _parse(self, key_ref: str, raw: bytes) -> _Keyring | None:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("key_ref") != key_ref:
            raise UnwrapFailed("the keystore file is not a key file of this format")
        if doc["state"] == KeyState.DESTROYED:
            return None
        versions: dict[int, AESGCM] = {}
        raw_versions: dict[int, dict[str, str]] = {}
        for number, entry in doc["versions"].items():
            version = int(number)
            sealed = base64.b64decode(entry["material"])
            try:
                material = self._master.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._material_aad(key_ref, version))
            except InvalidTag:
                raise UnwrapFailed(
                    "the keystore's master key does not open this key file (wrong master key?)"
                ) from None
            versions[version] = AESGCM(material)
            raw_versions[version] = dict(entry)
        return _Keyring(
            key_ref=key_ref,
            state=KeyState(doc["state"]),
            latest_version=int(doc["latest_version"]),
            min_decryption_version=int(doc["min_decryption_version"]),
            labels=dict(doc.get("labels", {})),
            created_at=doc["created_at"],
            versions=versions,
            raw_versions=raw_versions,
        )

    def _store(self, ring: _Keyring) -> None:
        doc = {
            "format": FORMAT,
            "key_ref": ring.key_ref,
            "state": ring.state.value,
            "labels": ring.labels,
            "created_at": ring.created_at,
            "latest_version": ring.latest_version,
            "min_decryption_version": ring.min_decryption_version,
            "versions": {str(v): ring.raw_versions[v] for v in sorted(ring.raw_versions)},
        }
        self._write(ring.key_ref, doc)

    def _write(self, key_ref: str, doc: dict) -> None:
        try:
            self._fs.write_atomic(self._path(key_ref), json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise KeyProviderUnavailable(
                "the local keystore could not write its key file; the key is unchanged, retry later"
            ) from exc


def _copy(ring: _Keyring | None) -> _Keyring | None:
    """A shallow copy, so that a mutation in progress never edits the shared cached object."""
    if ring is None:
        return None
    return _Keyring(
        key_ref=ring.key_ref,
        state=ring.state,
        latest_version=ring.latest_version,
        min_decryption_version=ring.min_decryption_version,
        labels=dict(ring.labels),
        created_at=ring.created_at,
        versions=dict(ring.versions),
        raw_versions={k: dict(v) for k, v in ring.raw_versions.items()},
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
