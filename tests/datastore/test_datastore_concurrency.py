"""Concurrency: writers, readers, deleters and key rotation together for about three seconds."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from modelport.datastore import Datastore
from modelport.errors import NotFound


def test_concurrent_encrypt_decrypt_rotate_rewrap(make_store: Callable[..., Datastore]) -> None:
    store = make_store(chunk_size=4096, key_cache_ttl=0.05)  # short TTL: many real unwraps
    workspaces = ("ws1", "ws2")
    for ws in workspaces:
        for i in range(4):
            store.put(ws, f"w{i}", b"seed")
    counts: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 3.0

    def record(kind: str) -> None:
        with lock:
            counts[kind] += 1

    def guarded(fn: Callable[[random.Random], None], seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                try:
                    fn(rng)
                except Exception as exc:  # anything unexpected is a failure of the test
                    problems.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
                    return

        return run

    def writer(rng: random.Random) -> None:
        ws, obj = rng.choice(workspaces), f"w{rng.randrange(4)}"
        # Each writer thread owns its object ids, so no two puts race on one object.
        data = f"{ws}/{obj}:".encode() + os.urandom(rng.randrange(0, 5 * 4096))
        info = store.put(ws, f"{obj}-{threading.get_ident()}", data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        record("put")

    def reader(rng: random.Random) -> None:
        ws = rng.choice(workspaces)
        objects = store.list_objects(ws)
        if not objects:
            return
        obj = rng.choice(objects).object_id
        try:
            with store.open(ws, obj) as stream:
                data = b"".join(stream)
                info = stream.info
        except NotFound:  # deleted between listing and reading
            record("read-of-deleted")
            return
        if hashlib.sha256(data).hexdigest() != info.sha256 or len(data) != info.size:
            problems.append(f"wrong plaintext for {ws}/{obj} v{info.version}")
        record("read")

    def deleter(rng: random.Random) -> None:
        ws = rng.choice(workspaces)
        obj = f"tmp{rng.randrange(3)}"
        store.put(ws, obj, os.urandom(6000))
        record("put")
        try:
            store.delete(ws, obj)
            record("delete")
        except NotFound:
            record("delete-race")

    def rotator(rng: random.Random) -> None:
        ws = rng.choice(workspaces)
        action = rng.randrange(4)
        if action == 0:
            store.rotate_workspace_key(ws)
        elif action == 1:
            store.rewrap_workspace(ws)
        elif action == 2:
            store.rotate_platform_key()
        else:
            store.rewrap_platform()
        record(["rotate-ws", "rewrap-ws", "rotate-platform", "rewrap-platform"][action])
        time.sleep(0.02)

    threads = [
        threading.Thread(target=guarded(f, seed))
        for seed, f in enumerate([writer, writer, reader, reader, reader, deleter, rotator])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    print(f"\nconcurrency, 3 s, 7 threads: {dict(sorted(counts.items()))}; problems: {len(problems)}")
    assert problems == []
    assert counts["put"] > 10 and counts["read"] > 10 and counts["delete"] > 0
    assert counts["rotate-ws"] + counts["rotate-platform"] > 0
    # Everything still reads back after the storm, and rewrap leaves all on the newest versions.
    for ws in workspaces:
        store.rewrap_workspace(ws)
    store.rewrap_platform()
    latest_platform = store.platform_key().latest_version
    for ws in workspaces:
        latest_ws = store.workspace_key(ws).latest_version
        for info in store.list_objects(ws):
            with store.open(ws, info.object_id) as stream:
                assert hashlib.sha256(b"".join(stream)).hexdigest() == info.sha256
            assert (info.workspace_key.version, info.platform_key.version) == (latest_ws, latest_platform)
