"""Purging a workspace (its deletion): every object crypto-shredded and the workspace key destroyed.

After `purge_workspace`, nothing of the workspace can be decrypted, not even from a backup of its
ledger and blobs taken before: the local keys that wrapped its inner data keys (its own workspace
key, every version, and a customer-managed key created in the local keystore) are destroyed.
A customer-managed key held in AWS KMS is the customer's: its registration is forgotten, the key
itself is left untouched (the customer disables or deletes it in AWS). Other workspaces are not
touched, the purge can be repeated after a failure, and nothing can be written for the workspace
afterwards (no ledger file or key appears again).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from modelport.datastore import Datastore
from modelport.errors import ModelportError
from modelport.kms.base import KeyState
from tests.support.kms import FlakyFileSystem, aws_provider_for, kek_materials


def forms(secret: bytes) -> list[bytes]:
    return [secret, base64.b64encode(secret), secret.hex().encode()]


def hits(root: Path, secrets: list[bytes]) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() for s in secrets for f in forms(s) if f in p.read_bytes()]


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_purge_shreds_every_object_and_destroys_every_local_key(
        store: Datastore, master_keys: tuple[bytes, bytes]) -> None:
    store.put("ws1", "a", b"alpha " * 2000)
    store.rotate_workspace_key("ws1")  # two versions of the workspace's own key
    cmk = store.create_local_cmk("ws1")
    store.register_cmk("ws1", "local", cmk)
    store.put("ws1", "b", b"beta " * 2000)
    store.put("ws1", "b", b"beta again")  # an overwritten version as well
    store.put("ws2", "a", b"the neighbour")
    ledger = store.ledger.read("ws1")
    wrapped = [w.ciphertext for e in ledger.objects.values() for w in (e.inner, e.outer)]
    keystore = store.workspace_keystore.root
    materials = [*kek_materials(keystore, master_keys[1], "ws-ws1").values(),
                 *kek_materials(keystore, master_keys[1], cmk).values()]
    assert len(materials) == 3 and hits(store.root, wrapped)
    backup = files_of(store.root / "ledger") | files_of(store.root / "blobs" / "ws1")

    report = store.purge_workspace("ws1")

    assert (report.objects, sorted(report.keys_destroyed), report.cmk_forgotten) == (2, sorted(["ws-ws1", cmk]), None)
    assert hits(store.root, wrapped + materials) == []
    assert not store.ledger.path("ws1").exists() and not (store.root / "blobs" / "ws1").exists()
    for ref in ("ws-ws1", cmk):
        assert store.workspace_keystore.describe(ref).state is KeyState.DESTROYED
    assert store.read_bytes("ws2", "a") == b"the neighbour"
    assert store.workspace_key("ws2").state is KeyState.ENABLED

    # A backup of the ledger and blobs, taken before and put back: its data keys cannot be unwrapped.
    for path, data in backup.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for oid in ("a", "b"):
        with pytest.raises(ModelportError) as caught:
            store.read_bytes("ws1", oid)
        assert caught.value.code == "key_destroyed"


def test_a_purged_workspace_gets_no_key_and_no_ledger_again(store: Datastore) -> None:
    store.put("ws1", "a", b"x")
    store.purge_workspace("ws1")
    for attempt in (lambda: store.put("ws1", "late", b"written after the purge"),
                    lambda: store.ensure_workspace_key("ws1")):
        with pytest.raises(ModelportError) as caught:
            attempt()
        assert caught.value.code == "key_destroyed"
    assert not store.ledger.path("ws1").exists() and list(store.blobs.keys("ws1")) == []
    assert store.purge_workspace("ws1").objects == 0  # again: nothing left to do, no error


def test_a_purge_that_failed_halfway_is_finished_by_a_retry(
        make_store: Callable[..., Datastore], flaky_fs: FlakyFileSystem) -> None:
    store = make_store()
    store.put("ws1", "a", os.urandom(5000))
    entry = store.ledger.read("ws1").objects["a"]
    flaky_fs.fail_next_unlink(match=".ledger.json")
    with pytest.raises(ModelportError):
        store.purge_workspace("ws1")
    # The keys went first: what is left can no longer be decrypted, even before the retry.
    with pytest.raises(ModelportError) as caught:
        store.read_bytes("ws1", "a")
    assert caught.value.code == "key_destroyed"
    report = store.purge_workspace("ws1")
    assert report.objects == 1 and not store.ledger.path("ws1").exists()
    assert not store.blobs.exists(entry.blob_key)
    assert hits(store.root, [entry.inner.ciphertext, entry.outer.ciphertext]) == []


def test_a_cmk_in_aws_kms_is_forgotten_never_deleted(make_store: Callable[..., Datastore], kms_endpoint: str) -> None:
    """moto in server mode stands in for AWS KMS (it cannot run here); the customer's key must
    still be there and enabled after the purge, while the workspace's own local key is destroyed."""
    aws = aws_provider_for(kms_endpoint)
    store = make_store(providers=[aws], key_cache_ttl=0)
    store.put("ws1", "before", b"under the local key first")
    arn = aws.create_key(labels={"workspace": "ws1"})
    store.register_cmk("ws1", "aws", arn)
    store.put("ws1", "after", b"under the customer's key")

    report = store.purge_workspace("ws1")

    assert (report.objects, report.keys_destroyed, report.cmk_forgotten) == (2, ["ws-ws1"], "aws")
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=kms_endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    meta = kms.describe_key(KeyId=arn)["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"]) == ("Enabled", True)
    assert aws.describe(arn).state is KeyState.ENABLED
    with pytest.raises(ModelportError):
        store.workspace_key("ws1")  # no registration left
    assert not store.ledger.path("ws1").exists()


def test_a_backup_of_a_deleted_object_opens_while_the_workspace_key_lives(store: Datastore) -> None:
    """What the README says of backups: deleting one object destroys its data keys in the live
    system, but the key-encryption keys stay valid, so a backup of the ledger and blob from before
    the deletion opens again. Only destroying the workspace key (the workspace's deletion) ends that."""
    store.put("ws1", "a", b"restored from a backup")
    backup = files_of(store.root / "ledger") | files_of(store.root / "blobs" / "ws1")
    store.delete("ws1", "a")
    for path, data in backup.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert store.read_bytes("ws1", "a") == b"restored from a backup"
    store.purge_workspace("ws1")
    for path, data in backup.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with pytest.raises(ModelportError) as caught:
        store.read_bytes("ws1", "a")
    assert caught.value.code == "key_destroyed"
