"""Crypto-shredding (P12): after a delete, nothing left on disk can be decrypted.

The wrapped data keys of a deleted object must not survive anywhere under the data directory
(every file is byte-scanned for them, raw, base64 and hex), and a leftover copy of its blob (a
backup, say) must not open, not even for someone holding both master keys and every version of
the platform and workspace keys.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
from pathlib import Path

import pytest

from modelport.datastore import CorruptObject, Datastore
from modelport.datastore.envelope import DataKeys, decrypt_object
from modelport.datastore.store import PLATFORM_KEY_REF
from modelport.errors import NotFound
from tests.support.kms import kek_materials


def forms(secret: bytes) -> list[bytes]:
    return [secret, base64.b64encode(secret), secret.hex().encode()]


def scan(root: Path, secrets: list[bytes]) -> tuple[int, int]:
    """(files scanned, hits) for every secret in every form, in every file under root."""
    files = [p for p in root.rglob("*") if p.is_file()]
    hits = sum(1 for p in files for s in secrets for f in forms(s) if f in p.read_bytes())
    return len(files), hits


def test_delete_destroys_the_wrapped_keys_everywhere(store: Datastore, master_keys: tuple[bytes, bytes]) -> None:
    victim = b"delete me " * 3000
    store.put("ws1", "first", b"makes the workspace key")
    store.rotate_workspace_key("ws1")  # two versions of each key for the attack below
    store.rotate_platform_key()
    store.put("ws1", "victim", victim)
    store.put("ws1", "victim", victim + b"v2")  # an overwritten version must be shredded as well
    store.put("ws1", "keeper", b"keep me")
    store.put("ws2", "victim", b"same id, other workspace")
    ledger = store.ledger.read("ws1")
    entry = ledger.objects["victim"]
    wrapped = [entry.inner.ciphertext, entry.outer.ciphertext]
    leftover = store.blobs.path(entry.blob_key).read_bytes()  # type: ignore[attr-defined]
    assert scan(store.root, wrapped)[1] > 0  # the scan does find them while the object exists

    store.delete("ws1", "victim")

    files, hits = scan(store.root, wrapped)
    print(f"\nafter delete: {files} files under the data directory scanned, {hits} hits for the wrapped keys")
    assert hits == 0
    assert not store.blobs.exists(entry.blob_key)
    assert [k for k in store.blobs.keys("ws1") if "/victim/" in k] == []
    with pytest.raises(NotFound):
        store.read_bytes("ws1", "victim")
    assert store.read_bytes("ws1", "keeper") == b"keep me"
    assert store.read_bytes("ws2", "victim") == b"same id, other workspace"

    # A leftover copy of the blob, attacked with both master keys and every key version.
    kek_versions = [
        *kek_materials(store.platform_keystore.root, master_keys[0], PLATFORM_KEY_REF).values(),
        *kek_materials(store.workspace_keystore.root, master_keys[1], "ws-ws1").values(),
    ]
    attempts = 0
    for inner, outer in itertools.product(kek_versions, repeat=2):
        with pytest.raises(CorruptObject):
            b"".join(
                decrypt_object(
                    io.BytesIO(leftover),
                    len(leftover),
                    DataKeys(inner, outer),
                    workspace_id="ws1",
                    object_id="victim",
                    version=entry.version,
                )
            )
        attempts += 1
    print(f"leftover blob vs platform and workspace keys (every version, both layers): {attempts} attempts, 0 opened")


def test_overwrite_shreds_the_previous_version(store: Datastore) -> None:
    store.put("ws1", "obj", os.urandom(10_000))
    first = store.ledger.read("ws1").objects["obj"]
    store.put("ws1", "obj", os.urandom(10_000))
    assert scan(store.root, [first.inner.ciphertext, first.outer.ciphertext])[1] == 0
    assert not store.blobs.exists(first.blob_key)


def test_delete_then_put_again_uses_fresh_keys(store: Datastore) -> None:
    store.put("ws1", "obj", b"first life")
    first = store.ledger.read("ws1").objects["obj"]
    store.delete("ws1", "obj")
    store.put("ws1", "obj", b"second life")
    second = store.ledger.read("ws1").objects["obj"]
    assert second.inner.ciphertext != first.inner.ciphertext and second.blob_key != first.blob_key
    assert store.read_bytes("ws1", "obj") == b"second life"
    assert scan(store.root, [first.inner.ciphertext, first.outer.ciphertext])[1] == 0
