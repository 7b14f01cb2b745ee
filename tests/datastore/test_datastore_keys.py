"""Workspace and platform keys: rotation, rewrap, retirement, customer-managed keys.

Disable and enable semantics use a customer-managed key in the local keystore, because the KMS
stand-in (moto) does not enforce key state; AWS KMS CMKs are tested for wrap and unwrap through
the datastore against the moto server.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from modelport.datastore import Datastore
from modelport.errors import Conflict, Forbidden, InvalidInput
from modelport.kms import KeyDisabled, KeyProviderUnavailable, KeyState, KeyVersionRetired
from tests.support.clock import ManualClock
from tests.support.kms import aws_provider_for


def put_after_each_rotation(store: Datastore, rotate: Callable[[], int], rotations: int = 10) -> dict[str, bytes]:
    objects = {}
    for i in range(rotations + 1):
        data = os.urandom(3 * store.chunk_size + i)
        store.put("ws1", f"obj{i}", data)
        objects[f"obj{i}"] = data
        if i < rotations:
            assert rotate() == i + 2
    return objects


def test_workspace_key_rotation_rewrap_and_retirement(make_store: Callable[..., Datastore]) -> None:
    store = make_store(key_cache_ttl=0)
    objects = put_after_each_rotation(store, lambda: store.rotate_workspace_key("ws1"))
    versions = sorted(i.workspace_key.version for i in store.list_objects("ws1"))
    assert versions == list(range(1, 12))
    assert all(store.read_bytes("ws1", o) == d for o, d in objects.items())  # every version decrypts
    # Retiring versions still in use is refused unless forced; forced, old objects stop opening.
    with pytest.raises(Conflict):
        store.set_workspace_min_decryption_version("ws1", 11)
    store.set_workspace_min_decryption_version("ws1", 11, force=True)
    with pytest.raises(KeyVersionRetired):
        store.read_bytes("ws1", "obj0")
    assert store.read_bytes("ws1", "obj10") == objects["obj10"]
    store.set_workspace_min_decryption_version("ws1", 1)
    # Rewrap moves every inner data key to the newest version; blobs are not touched.
    blobs_before = {o: store.blobs.path(e.blob_key).read_bytes() for o, e in store.ledger.read("ws1").objects.items()}
    report = store.rewrap_workspace("ws1")
    assert (report.rewrapped, report.unchanged) == (10, 1)
    assert {i.workspace_key.version for i in store.list_objects("ws1")} == {11}
    blobs_after = {o: store.blobs.path(e.blob_key).read_bytes() for o, e in store.ledger.read("ws1").objects.items()}
    assert blobs_after == blobs_before
    store.set_workspace_min_decryption_version("ws1", 11)  # nothing needs the old versions now
    assert all(store.read_bytes("ws1", o) == d for o, d in objects.items())
    assert store.rewrap_workspace("ws1").rewrapped == 0
    info = store.workspace_key("ws1")
    assert (info.latest_version, info.min_decryption_version, info.cmk) == (11, 11, False)
    print(
        f"\nworkspace key: 10 rotations, 11 objects decrypted at versions 1-11, rewrap moved {report.rewrapped}, "
        "min version 11 retires the rest"
    )


def test_platform_key_rotation_rewrap_and_retirement(make_store: Callable[..., Datastore]) -> None:
    store = make_store(key_cache_ttl=0)
    objects = put_after_each_rotation(store, store.rotate_platform_key)
    store.put("ws2", "other", b"second workspace")
    assert sorted(i.platform_key.version for i in store.list_objects("ws1")) == list(range(1, 12))
    assert all(store.read_bytes("ws1", o) == d for o, d in objects.items())
    with pytest.raises(Conflict):
        store.set_platform_min_decryption_version(11)
    store.set_platform_min_decryption_version(11, force=True)
    with pytest.raises(KeyVersionRetired):
        store.read_bytes("ws1", "obj3")
    store.set_platform_min_decryption_version(1)
    report = store.rewrap_platform()
    assert (report.rewrapped, report.unchanged, report.workspaces) == (10, 2, 2)
    store.set_platform_min_decryption_version(11)
    assert all(store.read_bytes("ws1", o) == d for o, d in objects.items())
    assert store.read_bytes("ws2", "other") == b"second workspace"
    assert store.platform_key().min_decryption_version == 11


def test_local_cmk_disable_takes_effect_within_the_cache_ttl(make_store: Callable[..., Datastore]) -> None:
    """The data-key cache runs on an injected clock: the TTL passes without waiting for it."""
    ttl = 60.0
    clock = ManualClock()
    store = make_store(key_cache_ttl=ttl, clock=clock)
    store.put("ws1", "before", b"written under the default key")
    cmk = store.create_local_cmk("ws1")
    info = store.register_cmk("ws1", "local", cmk)
    assert info.cmk and info.key_ref == cmk and info.state is KeyState.ENABLED
    assert store.ledger.read("ws1").objects["before"].inner.key_ref == cmk  # migrated
    store.put("ws1", "after", b"written under the cmk")
    assert store.read_bytes("ws1", "before") == b"written under the default key"
    assert store.read_bytes("ws1", "after") == b"written under the cmk"
    # The customer disables the key at the provider (not through this datastore instance).
    store.workspace_keystore.disable(cmk)
    with pytest.raises(KeyDisabled):
        store.put("ws1", "new", b"x")  # writes fail at once: nothing is cached for them
    clock.advance(ttl - 1)
    assert store.read_bytes("ws1", "after") == b"written under the cmk"  # still the cached data key
    clock.advance(1)
    with pytest.raises(KeyDisabled) as caught:
        store.read_bytes("ws1", "after")
    assert caught.value.status_code == 409 and "disabled" in caught.value.message
    for obj in ("before", "after"):  # every read of the workspace fails, no fallback to another key
        with pytest.raises(KeyDisabled):
            store.read_bytes("ws1", obj)
    store.put("ws2", "other", b"other workspaces are unaffected")
    assert store.read_bytes("ws2", "other") == b"other workspaces are unaffected"
    store.enable_workspace_key("ws1")
    assert store.read_bytes("ws1", "after") == b"written under the cmk"


def test_disable_through_the_datastore_is_immediate(store: Datastore) -> None:
    store.put("ws1", "obj", b"data")
    assert store.read_bytes("ws1", "obj") == b"data"  # now cached for 60 s
    store.disable_workspace_key("ws1")
    with pytest.raises(KeyDisabled):
        store.read_bytes("ws1", "obj")
    store.enable_workspace_key("ws1")
    assert store.read_bytes("ws1", "obj") == b"data"


def test_cmk_rotation_and_unregister(make_store: Callable[..., Datastore]) -> None:
    store = make_store(key_cache_ttl=0)
    store.put("ws1", "obj", b"data")
    cmk = store.create_local_cmk("ws1")
    store.register_cmk("ws1", "local", cmk)
    assert store.rotate_workspace_key("ws1") == 2
    assert store.rewrap_workspace("ws1").rewrapped == 1
    assert store.stat("ws1", "obj").workspace_key.version == 2
    info = store.unregister_cmk("ws1")
    assert not info.cmk and info.key_ref == "ws-ws1"
    assert store.stat("ws1", "obj").workspace_key.key_ref == "ws-ws1"
    assert store.read_bytes("ws1", "obj") == b"data"
    with pytest.raises(Conflict):
        store.unregister_cmk("ws1")


def test_cmk_registration_is_checked(store: Datastore) -> None:
    store.ensure_workspace_key("ws1")
    store.ensure_workspace_key("ws2")
    other = store.create_local_cmk("ws2")
    with pytest.raises(Forbidden):
        store.register_cmk("ws1", "local", other)  # another workspace's key
    with pytest.raises(Forbidden):
        store.register_cmk("ws1", "local", "ws-ws2")  # another workspace's default key
    with pytest.raises(InvalidInput):
        store.register_cmk("ws1", "no-such-provider", "k")
    mine = store.create_local_cmk("ws1")
    store.workspace_keystore.disable(mine)
    with pytest.raises(Conflict):
        store.register_cmk("ws1", "local", mine)
    assert not store.workspace_key("ws1").cmk


def test_aws_kms_cmk_through_the_datastore(make_store: Callable[..., Datastore], kms_endpoint: str) -> None:
    aws = aws_provider_for(kms_endpoint)
    store = make_store(providers=[aws], key_cache_ttl=0)
    data = os.urandom(10_000)
    store.put("ws1", "before", data)
    arn = aws.create_key(labels={"workspace": "ws1"})
    info = store.register_cmk("ws1", "aws", arn)
    assert (info.provider, info.key_ref, info.cmk, info.versioned) == ("aws", arn, True, False)
    store.put("ws1", "after", data[::-1])
    entries = store.ledger.read("ws1").objects
    assert {e.inner.provider for e in entries.values()} == {"aws"}
    assert store.read_bytes("ws1", "before") == data and store.read_bytes("ws1", "after") == data[::-1]
    assert store.rotate_workspace_key("ws1") == 0
    old = {o: e.inner.ciphertext for o, e in entries.items()}
    assert store.rewrap_workspace("ws1").rewrapped == 2  # ReEncrypt: KMS does not expose versions
    assert all(store.ledger.read("ws1").objects[o].inner.ciphertext != c for o, c in old.items())
    assert store.read_bytes("ws1", "before") == data
    # The same data directory opened by a process without the AWS provider configured: 503.
    with pytest.raises(KeyProviderUnavailable):
        make_store().read_bytes("ws1", "before")
