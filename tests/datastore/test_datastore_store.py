"""Datastore basics: round trips from every kind of source, versions, listing, ids, memory, setup."""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import os
import stat
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelport.datastore import Datastore, from_settings, load_master_key
from modelport.errors import InvalidInput, NotFound
from tests.support.kms import temp_files
from tests.support.settings import settings_at


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_round_trip_sizes(store: Datastore, size: int) -> None:
    data = os.urandom(size)
    info = store.put("ws1", "obj", data)
    assert (info.size, info.sha256, info.version) == (size, hashlib.sha256(data).hexdigest(), 1)
    assert info.key_versions == {"workspace": 1, "platform": 1}
    assert store.read_bytes("ws1", "obj") == data
    with store.open("ws1", "obj") as stream:
        chunks = list(stream)
    assert all(len(c) == store.chunk_size for c in chunks[:-1]) and b"".join(chunks) == data


def test_sources_file_iterable_and_bytes(store: Datastore, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    with open(src, "rb") as fh:
        assert store.put("ws1", "from-file", fh).size == len(data)
    pieces = [data[i : i + 333] for i in range(0, len(data), 333)]
    store.put("ws1", "from-iter", iter(pieces))
    store.put("ws1", "from-bytesio", io.BytesIO(data))
    store.put("ws1", "from-memoryview", memoryview(data))
    for obj in ("from-file", "from-iter", "from-bytesio", "from-memoryview"):
        assert store.read_bytes("ws1", obj) == data


def test_overwrite_makes_a_new_version_and_removes_the_old(store: Datastore) -> None:
    store.put("ws1", "obj", b"one" * 5000)
    old_blob = store.ledger.read("ws1").objects["obj"].blob_key
    info = store.put("ws1", "obj", b"two" * 5000)
    assert info.version == 2 and store.read_bytes("ws1", "obj") == b"two" * 5000
    assert not store.blobs.exists(old_blob)
    assert list(store.blobs.keys("ws1")) == [store.ledger.read("ws1").objects["obj"].blob_key]


def test_stat_list_and_not_found(store: Datastore) -> None:
    store.put("ws1", "a", b"x")
    store.put("ws1", "b", b"yy")
    store.put("ws2", "a", b"zzz")
    assert [(i.object_id, i.size) for i in store.list_objects("ws1")] == [("a", 1), ("b", 2)]
    assert store.stat("ws2", "a").size == 3
    assert store.list_objects("ws3") == []
    with pytest.raises(NotFound):
        store.open("ws2", "b")  # raised when open is called, before any iteration
    with pytest.raises(NotFound):
        store.stat("ws3", "a")
    with pytest.raises(NotFound):
        store.delete("ws1", "c")


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "a b", "x" * 129, "é"])
def test_ids_are_validated(store: Datastore, bad: str) -> None:
    with pytest.raises(InvalidInput):
        store.put(bad, "obj", b"x")
    with pytest.raises(InvalidInput):
        store.put("ws1", bad, b"x")


def test_abandoned_stream_closes_its_file(store: Datastore) -> None:
    store.put("ws1", "obj", os.urandom(5 * store.chunk_size))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        stream = store.open("ws1", "obj")
        next(stream)
        del stream
        gc.collect()
        with store.open("ws1", "obj") as stream:
            next(stream)
        assert next(stream, None) is None  # closed: no more chunks


def test_memory_is_bounded_by_the_chunk_size(make_store: Callable[..., Datastore]) -> None:
    """A 64 MiB object through put and open never holds more than a few chunks in memory."""
    store = make_store(chunk_size=1 << 20)
    block = os.urandom(1 << 20)

    def source() -> Iterator[bytes]:
        for _ in range(64):
            yield block

    tracemalloc.start()
    try:
        store.put("ws1", "big", source())
        put_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        total = 0
        with store.open("ws1", "big") as stream:
            for chunk in stream:
                total += len(chunk)
        open_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(
        f"\n64 MiB object, 1 MiB chunks: peak Python memory put {put_peak / 2**20:.1f} MiB, "
        f"open {open_peak / 2**20:.1f} MiB"
    )
    assert total == 64 << 20
    assert put_peak < 8 << 20 and open_peak < 8 << 20


def test_collect_garbage_removes_orphans_and_stale_temp_files(store: Datastore) -> None:
    store.put("ws1", "live", b"keep me")
    with store.blobs.writer("ws1/crashed/v1-deadbeef") as w:  # a put that died before its commit
        w.write(b"ciphertext")
    stale = store.root / "blobs" / "ws1" / ".v9-x.blob.tmp-0123456789abcdef"
    stale.write_bytes(b"ciphertext")
    assert store.collect_garbage().blobs_removed == 0  # too young: might be a put in flight
    old = time.time() - 7200
    os.utime(store.blobs.path("ws1/crashed/v1-deadbeef"), (old, old))  # type: ignore[attr-defined]
    os.utime(stale, (old, old))
    report = store.collect_garbage()
    assert (report.blobs_removed, report.temp_files_removed) == (1, 1)
    assert temp_files(store.root) == [] and store.read_bytes("ws1", "live") == b"keep me"


def test_from_settings_generates_development_master_keys(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = from_settings(settings_at(home))
    store.put("ws1", "obj", b"hello")
    files = [home / "keys" / "platform-master.key", home / "keys" / "workspace-master.key"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert len(base64.b64decode(f.read_text())) == 32
    assert files[0].read_bytes() != files[1].read_bytes()
    again = from_settings(settings_at(home))  # the same keys are read back
    assert again.read_bytes("ws1", "obj") == b"hello"
    assert again.root == home / "datastore"


def test_from_settings_takes_base64_master_keys_from_the_environment(tmp_path: Path) -> None:
    env = {
        "MODELPORT_PLATFORM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "MODELPORT_WORKSPACE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "MODELPORT_ENVIRONMENT": "production",
        "MODELPORT_DATASTORE_CHUNK_SIZE": "65536",
        "MODELPORT_DATASTORE_KEY_CACHE_TTL": "5",
    }
    store = from_settings(settings_at(tmp_path, env))
    assert store.chunk_size == 65536
    store.put("ws1", "obj", b"x")
    assert not (tmp_path / "keys").exists()  # nothing generated, nothing written beside the data
    assert from_settings(settings_at(tmp_path, env)).read_bytes("ws1", "obj") == b"x"


def test_master_key_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        from_settings(settings_at(tmp_path, {"MODELPORT_ENVIRONMENT": "production"}))
    assert info.value.field == "MODELPORT_PLATFORM_MASTER_KEY"
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(InvalidInput) as info:
            from_settings(settings_at(tmp_path, {"MODELPORT_PLATFORM_MASTER_KEY": bad}))
        assert bad not in info.value.message  # the value is never echoed
    same = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(InvalidInput):
        from_settings(settings_at(tmp_path, {"MODELPORT_PLATFORM_MASTER_KEY": same,
                                                "MODELPORT_WORKSPACE_MASTER_KEY": same}))
    loose = tmp_path / "loose.key"
    loose.write_text(base64.b64encode(os.urandom(32)).decode())
    loose.chmod(0o644)
    with pytest.raises(InvalidInput):
        load_master_key(None, loose, name="MODELPORT_PLATFORM_MASTER_KEY", generate=False)
