"""Failures: storage errors injected at the OS edge, a key provider going away, broken sources.

Storage failures come from a FileSystem subclass whose rename or unlink raises EIO (the code
under test is unchanged). The unavailable provider is the real boto3 client talking to a moto
KMS server that the test kills.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from modelport.datastore import Datastore, StorageUnavailable
from modelport.errors import NotFound, ServiceUnavailable
from modelport.kms import KeyProviderUnavailable
from modelport.kms.testing import kms_server
from tests.support.kms import FlakyFileSystem, aws_provider_for, snapshot, temp_files
from tests.support.waiting import wait_until


@pytest.fixture
def filled(store: Datastore) -> tuple[Datastore, dict[tuple[str, str], bytes]]:
    objects = {}
    for ws in ("ws1", "ws2"):
        for obj in ("a", "b", "c"):
            data = os.urandom(2 * store.chunk_size + 7)
            store.put(ws, obj, data)
            objects[ws, obj] = data
    return store, objects


def all_readable(store: Datastore, objects: dict[tuple[str, str], bytes]) -> bool:
    return all(store.read_bytes(ws, obj) == data for (ws, obj), data in objects.items())


@pytest.mark.parametrize(
    ("operation", "match", "error"),
    [
        ("rotate_workspace_key", "keys/workspace", KeyProviderUnavailable),
        ("rotate_platform_key", "keys/platform", KeyProviderUnavailable),
        ("rewrap_workspace", "ledger", StorageUnavailable),
        ("rewrap_platform", "ledger", StorageUnavailable),
        ("delete", "ledger", StorageUnavailable),
        ("set_min_version", "keys/workspace", KeyProviderUnavailable),
        ("register_cmk", "ledger", StorageUnavailable),
    ],
)
def test_storage_failure_leaves_key_state_unchanged_and_retry_succeeds(
    filled: tuple[Datastore, dict[tuple[str, str], bytes]],
    flaky_fs: FlakyFileSystem,
    operation: str,
    match: str,
    error: type[Exception],
) -> None:
    store, objects = filled
    store.rotate_workspace_key("ws1")
    store.rotate_platform_key()  # so that rewraps have work to do
    if operation == "set_min_version":
        store.rewrap_workspace("ws1")  # so that retiring version 1 keeps everything readable
    cmk = store.create_local_cmk("ws1")
    actions: dict[str, Callable[[], object]] = {
        "rotate_workspace_key": lambda: store.rotate_workspace_key("ws1"),
        "rotate_platform_key": store.rotate_platform_key,
        "rewrap_workspace": lambda: store.rewrap_workspace("ws1"),
        "rewrap_platform": store.rewrap_platform,
        "delete": lambda: store.delete("ws1", "a"),
        "set_min_version": lambda: store.set_workspace_min_decryption_version("ws1", 2),
        "register_cmk": lambda: store.register_cmk("ws1", "local", cmk),
    }
    before = snapshot(store.root)
    flaky_fs.fail_next_replace(match=match)
    with pytest.raises(error) as info:
        actions[operation]()
    assert flaky_fs.failed == 1 and info.value.status_code == 503
    assert snapshot(store.root) == before, "a failed operation changed the stored state"
    assert temp_files(store.root) == []
    assert all_readable(store, objects)
    actions[operation]()  # the retry succeeds
    assert snapshot(store.root) != before
    if operation == "delete":
        with pytest.raises(NotFound):
            store.read_bytes("ws1", "a")
        del objects["ws1", "a"]
    assert all_readable(store, objects)


def test_failed_blob_removal_after_shredding_is_finished_by_a_retry(
    store: Datastore, flaky_fs: FlakyFileSystem
) -> None:
    store.put("ws1", "obj", os.urandom(10_000))
    blob = store.ledger.read("ws1").objects["obj"].blob_key
    flaky_fs.fail_next_unlink(match=".blob")
    with pytest.raises(StorageUnavailable):
        store.delete("ws1", "obj")
    with pytest.raises(NotFound):  # the keys are already gone: the object no longer exists
        store.read_bytes("ws1", "obj")
    assert store.blobs.exists(blob)
    store.delete("ws1", "obj")  # the retry removes the leftover blob
    assert not store.blobs.exists(blob)
    with pytest.raises(NotFound):
        store.delete("ws1", "obj")


@pytest.mark.parametrize("match", [".blob", "ledger"])
def test_failed_put_leaves_no_visible_object_and_no_temp_file(
    store: Datastore, flaky_fs: FlakyFileSystem, match: str
) -> None:
    store.put("ws1", "obj", b"version one" * 1000)
    before = snapshot(store.root)
    flaky_fs.fail_next_replace(match=match)
    with pytest.raises(StorageUnavailable):
        store.put("ws1", "obj", os.urandom(30_000))
    assert snapshot(store.root) == before and temp_files(store.root) == []
    assert store.read_bytes("ws1", "obj") == b"version one" * 1000
    assert store.stat("ws1", "obj").version == 1
    assert store.put("ws1", "obj", b"retry").version == 2


def test_source_failing_mid_stream_leaves_nothing(store: Datastore) -> None:
    store.put("ws1", "obj", b"old")
    before = snapshot(store.root)

    def broken() -> Iterator[bytes]:
        yield os.urandom(3 * store.chunk_size)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put("ws1", "obj", broken())
    with pytest.raises(ConnectionResetError):
        store.put("ws1", "new-obj", broken())
    assert snapshot(store.root) == before and temp_files(store.root) == []
    assert store.read_bytes("ws1", "obj") == b"old"
    with pytest.raises(NotFound):
        store.stat("ws1", "new-obj")


def test_key_provider_unavailable_is_503_and_nothing_is_written(make_store: Callable[..., Datastore]) -> None:
    with kms_server() as server:
        aws = aws_provider_for(server.endpoint_url)
        store = make_store(providers=[aws], key_cache_ttl=0)
        store.register_cmk("ws1", "aws", aws.create_key())
        store.put("ws1", "obj", b"stored while KMS was up")
        before = snapshot(store.root)
    # The server is gone: connection refused on every call.
    with pytest.raises(ServiceUnavailable) as info:
        store.put("ws1", "obj2", b"must not be stored in any form" * 100)
    assert info.value.status_code == 503 and "retry" in info.value.message
    assert snapshot(store.root) == before and temp_files(store.root) == []
    with pytest.raises(ServiceUnavailable):
        store.read_bytes("ws1", "obj")
    with pytest.raises(ServiceUnavailable):
        store.rewrap_workspace("ws1")
    assert snapshot(store.root) == before


def test_no_plaintext_touches_disk_during_a_slow_write(make_store: Callable[..., Datastore]) -> None:
    """Pause the upload mid-stream, scan every file under the data directory, then finish it."""
    store = make_store(chunk_size=4096)
    marker = b"PLAINTEXT-MARKER"
    paused, resume = threading.Event(), threading.Event()

    def slow_upload() -> Iterator[bytes]:
        for _ in range(4):
            yield marker * 1024  # 16 KiB each: several chunks are sealed and written
        paused.set()
        assert resume.wait(10)
        yield marker * 1024

    errors: list[BaseException] = []

    def run() -> None:
        try:
            store.put("ws1", "obj", slow_upload())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert paused.wait(10)
        in_flight = wait_until(lambda: [p for p in temp_files(store.root) if p.stat().st_size > 0], 30, 0.01,
                               "ciphertext of the upload in a temporary file")
        files = [p for p in store.root.rglob("*") if p.is_file()]
        hits = [p for p in files if marker in p.read_bytes()]
        print(
            f"\nmid-upload scan: {len(files)} files ({len(in_flight)} temp file, "
            f"{in_flight[0].stat().st_size} bytes of ciphertext so far), {len(hits)} plaintext hits"
        )
    finally:
        resume.set()
        worker.join(10)
    assert not errors
    assert in_flight and hits == []
    assert store.read_bytes("ws1", "obj") == marker * 1024 * 5
    assert not [p for p in store.root.rglob("*") if p.is_file() and marker in p.read_bytes()]
