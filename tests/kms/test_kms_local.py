"""LocalKeystore: the reference key provider. Versions, rotation, rewrap, retirement, states.

Disable, rotate and destroy semantics are tested here and not against the KMS stand-in, because
moto does not enforce key state (a disabled key still decrypts there) and keeps deleted keys for
its 7-day minimum window.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from modelport.errors import Conflict, InvalidInput
from modelport.kms import (
    KeyDestroyed,
    KeyDisabled,
    KeyNotFound,
    KeyProvider,
    KeyProviderUnavailable,
    KeyState,
    KeyVersionRetired,
    LocalKeystore,
    UnwrapFailed,
    WrappedKey,
)
from tests.support.kms import FlakyFileSystem, kek_materials, snapshot, temp_files

CTX = {"modelport:workspace": "ws1", "modelport:object": "obj1"}


def test_is_a_key_provider(keystore: LocalKeystore) -> None:
    assert isinstance(keystore, KeyProvider)


def test_wrap_unwrap_round_trip_records_version(keystore: LocalKeystore) -> None:
    ref = keystore.create_key("k1", labels={"workspace": "ws1"})
    data_key = os.urandom(32)
    wrapped = keystore.wrap(ref, data_key, CTX)
    assert (wrapped.provider, wrapped.key_ref, wrapped.key_version) == ("local", "k1", 1)
    assert data_key not in wrapped.ciphertext
    assert keystore.unwrap(wrapped, CTX) == data_key
    info = keystore.describe(ref)
    assert (info.state, info.latest_version, info.min_decryption_version) == (KeyState.ENABLED, 1, 1)
    assert info.labels == {"workspace": "ws1"}


def test_context_binds_the_wrapped_key(keystore: LocalKeystore) -> None:
    ref = keystore.create_key("k1")
    wrapped = keystore.wrap(ref, os.urandom(32), CTX)
    for other in ({**CTX, "modelport:object": "obj2"}, {**CTX, "modelport:workspace": "ws2"}, {}):
        with pytest.raises(UnwrapFailed):
            keystore.unwrap(wrapped, other)


def test_every_single_bit_flip_of_a_wrapped_key_is_rejected(keystore: LocalKeystore) -> None:
    ref = keystore.create_key("k1")
    wrapped = keystore.wrap(ref, os.urandom(32), CTX)
    rejected = 0
    for bit in range(len(wrapped.ciphertext) * 8):
        flipped = bytearray(wrapped.ciphertext)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((UnwrapFailed, KeyVersionRetired)):
            keystore.unwrap(WrappedKey("local", "k1", 1, bytes(flipped)), CTX)
        rejected += 1
    print(f"\nwrapped-key bit flips rejected: {rejected}/{len(wrapped.ciphertext) * 8}")
    assert rejected == len(wrapped.ciphertext) * 8


def test_ten_rotations_rewrap_and_minimum_decryption_version(keystore: LocalKeystore) -> None:
    ref = keystore.create_key("k1")
    keys, wrapped = [], []
    for expected_version in range(1, 12):
        dk = os.urandom(32)
        w = keystore.wrap(ref, dk, CTX)
        assert w.key_version == expected_version
        keys.append(dk)
        wrapped.append(w)
        if expected_version < 11:
            assert keystore.rotate(ref) == expected_version + 1
    # every version still decrypts
    assert [keystore.unwrap(w, CTX) for w in wrapped] == keys
    # rewrap moves each to the newest version without changing the data key
    rewrapped = [keystore.rewrap(w, CTX) for w in wrapped]
    assert {w.key_version for w in rewrapped} == {11}
    assert [keystore.unwrap(w, CTX) for w in rewrapped] == keys
    # the minimum decryption version retires the rest
    keystore.set_min_decryption_version(ref, 11)
    for w in wrapped[:-1]:
        with pytest.raises(KeyVersionRetired):
            keystore.unwrap(w, CTX)
    assert keystore.unwrap(wrapped[-1], CTX) == keys[-1]
    assert [keystore.unwrap(w, CTX) for w in rewrapped] == keys
    for bad in (0, 12):
        with pytest.raises(InvalidInput):
            keystore.set_min_decryption_version(ref, bad)


def test_disable_blocks_wrap_and_unwrap_until_enabled(keystore: LocalKeystore) -> None:
    ref = keystore.create_key("k1")
    dk = os.urandom(32)
    wrapped = keystore.wrap(ref, dk, CTX)
    keystore.disable(ref)
    assert keystore.describe(ref).state is KeyState.DISABLED
    with pytest.raises(KeyDisabled):
        keystore.unwrap(wrapped, CTX)
    with pytest.raises(KeyDisabled):
        keystore.wrap(ref, dk, CTX)
    with pytest.raises(KeyDisabled):
        keystore.rotate(ref)
    keystore.enable(ref)
    assert keystore.unwrap(wrapped, CTX) == dk


def test_a_disable_by_another_process_is_seen_at_once(keystore_factory: Callable[..., LocalKeystore]) -> None:
    gateway, cli = keystore_factory(), keystore_factory()  # two instances on one directory
    ref = gateway.create_key("k1")
    wrapped = gateway.wrap(ref, os.urandom(32), CTX)
    cli.disable(ref)
    with pytest.raises(KeyDisabled):
        gateway.unwrap(wrapped, CTX)
    cli.enable(ref)
    assert len(gateway.unwrap(wrapped, CTX)) == 32


def test_destroy_needs_disable_first_and_is_final(keystore: LocalKeystore, master_key: bytes) -> None:
    ref = keystore.create_key("k1")
    wrapped = keystore.wrap(ref, os.urandom(32), CTX)
    materials = kek_materials(keystore.root, master_key, ref)
    with pytest.raises(Conflict):
        keystore.destroy(ref)
    keystore.disable(ref)
    keystore.destroy(ref)
    assert keystore.describe(ref).state is KeyState.DESTROYED
    with pytest.raises(KeyDestroyed):
        keystore.unwrap(wrapped, CTX)
    with pytest.raises(KeyDestroyed):
        keystore.enable(ref)
    with pytest.raises(Conflict):
        keystore.create_key(ref)
    disk = b"".join(snapshot(keystore.root).values())
    assert b"material" not in disk
    for material in materials.values():
        assert material not in disk and base64.b64encode(material) not in disk


def test_key_material_never_on_disk_in_plaintext(keystore: LocalKeystore, master_key: bytes) -> None:
    ref = keystore.create_key("k1")
    for _ in range(3):
        keystore.rotate(ref)
    disk = b"".join(snapshot(keystore.root).values())
    materials = kek_materials(keystore.root, master_key, ref)
    assert len(materials) == 4
    for material in materials.values():
        for form in (material, base64.b64encode(material), material.hex().encode()):
            assert form not in disk


def test_wrong_master_key_opens_nothing(keystore_factory: Callable[..., LocalKeystore], tmp_path: Path) -> None:
    ref = keystore_factory().create_key("k1")
    intruder = keystore_factory(key=os.urandom(32))
    with pytest.raises(UnwrapFailed):
        intruder.wrap(ref, os.urandom(32), CTX)


def test_unknown_key_and_invalid_refs(keystore: LocalKeystore) -> None:
    with pytest.raises(KeyNotFound):
        keystore.describe("nope")
    for bad in ("", "../etc", ".hidden", "a/b", "x" * 200):
        with pytest.raises(InvalidInput):
            keystore.create_key(bad)


def test_storage_failure_during_rotate_leaves_key_unchanged(keystore: LocalKeystore, flaky_fs: FlakyFileSystem) -> None:
    ref = keystore.create_key("k1")
    wrapped = keystore.wrap(ref, b"k" * 32, CTX)
    before = snapshot(keystore.root)
    flaky_fs.fail_next_replace()
    with pytest.raises(KeyProviderUnavailable):
        keystore.rotate(ref)
    assert flaky_fs.failed == 1
    assert snapshot(keystore.root) == before and temp_files(keystore.root) == []
    assert keystore.describe(ref).latest_version == 1
    assert keystore.rotate(ref) == 2  # the retry succeeds
    assert keystore.unwrap(wrapped, CTX) == b"k" * 32


@pytest.mark.parametrize("operation", ["disable", "set_min", "destroy"])
def test_storage_failure_during_state_changes_leaves_key_unchanged(
    keystore: LocalKeystore, flaky_fs: FlakyFileSystem, operation: str
) -> None:
    ref = keystore.create_key("k1")
    keystore.rotate(ref)
    if operation == "destroy":
        keystore.disable(ref)
    actions = {
        "disable": lambda: keystore.disable(ref),
        "set_min": lambda: keystore.set_min_decryption_version(ref, 2),
        "destroy": lambda: keystore.destroy(ref),
    }
    before = snapshot(keystore.root)
    flaky_fs.fail_next_replace()
    with pytest.raises(KeyProviderUnavailable):
        actions[operation]()
    assert snapshot(keystore.root) == before and temp_files(keystore.root) == []
    actions[operation]()
    assert snapshot(keystore.root) != before
