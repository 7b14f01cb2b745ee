"""Tampering: bit flips, moved objects, truncated and reordered chunks, one layer alone.

Every test works on what is really stored (the blob file, the key-ledger file) and reads back
through the public Datastore API, as an attacker with write access to the data directory and a
reader through the API would.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.datastore import CorruptObject, Datastore
from modelport.datastore.envelope import (
    FRAME_OVERHEAD,
    DataKeys,
    ObjectHeader,
    decrypt_object,
    encrypt_object,
    peel_outer,
    read_header,
)
from modelport.errors import IntegrityError

CHUNK = 64  # tiny chunks: several frames per small object, and 1,000 examples in a few seconds
SIZES = {"empty": 0, "one-byte": 1, "one-chunk": CHUNK, "two-chunks": CHUNK + 1, "four-chunks": 4 * CHUNK - 5}
NONCE_PREFIXES = range(7 + 4 + 8, 7 + 4 + 8 + 14)  # preamble, chunk size, version, then both prefixes


def blob_path(store: Datastore, ws: str, obj: str) -> Path:
    return store.blobs.path(store.ledger.read(ws).objects[obj].blob_key)  # type: ignore[attr-defined]


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Same-length rewrite without truncation (ext4 flushes files truncated and rewritten)."""
    assert len(data) == path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(data)


def read_all(store: Datastore, ws: str, obj: str) -> tuple[bytes, BaseException | None]:
    """What a client would receive: the chunks delivered before an error, and the error."""
    got: list[bytes] = []
    try:
        with store.open(ws, obj) as stream:
            for chunk in stream:
                got.append(chunk)
    except IntegrityError as exc:
        return b"".join(got), exc
    return b"".join(got), None


def regions(store: Datastore, ws: str, obj: str) -> dict[str, list[int]]:
    """Byte offsets of each region of a stored object's blob."""
    path = blob_path(store, ws, obj)
    with open(path, "rb") as fh:
        header, raw = read_header(fh)
    size = path.stat().st_size
    frame = header.chunk_size + FRAME_OVERHEAD
    out: dict[str, list[int]] = {"header": [], "nonce": [], "payload": [], "tag": []}
    for i in range(len(raw)):
        out["nonce" if i in NONCE_PREFIXES else "header"].append(i)
    for start in range(len(raw), size, frame):
        end = min(start + frame, size)
        out["payload"].extend(range(start, end - 16))
        out["tag"].extend(range(end - 16, end))
    return out


@pytest.fixture
def small_store(make_store: Callable[..., Datastore]) -> tuple[Datastore, dict[str, bytes]]:
    store = make_store(chunk_size=CHUNK, key_cache_ttl=0)
    payloads = {name: os.urandom(size) for name, size in SIZES.items()}
    for name, data in payloads.items():
        store.put("ws1", name, data)
    return store, payloads


def test_single_bit_flips_are_all_rejected(small_store: tuple[Datastore, dict[str, bytes]]) -> None:
    """Property: flipping any one bit of header, nonce, wrapped keys, payload or tag is rejected.

    Nothing from the corrupted chunk onward is ever delivered, and for header, nonce and
    wrapped-key flips nothing at all (those are checked before the first chunk is released).
    """
    store, payloads = small_store
    layout = {name: regions(store, "ws1", name) for name in payloads}
    ledger_path = store.ledger.path("ws1")
    tally: Counter[str] = Counter()
    leaked: Counter[str] = Counter()

    @settings(
        max_examples=1000, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        st.sampled_from(sorted(payloads)),
        st.sampled_from(["header", "nonce", "payload", "tag", "wrapped_inner", "wrapped_outer"]),
        st.data(),
    )
    def flip_one_bit(name: str, region: str, data: st.DataObject) -> None:
        plaintext = payloads[name]
        bit = data.draw(st.integers(0, 7))
        if region.startswith("wrapped"):
            target, corrupted_chunk = ledger_path, 0
            original = target.read_bytes()
            layer = "inner" if region == "wrapped_inner" else "outer"
            encoded = json.loads(original)["objects"][name][layer]["ciphertext"].encode()
            ct = bytearray(base64.b64decode(encoded))
            pos = data.draw(st.integers(0, len(ct) - 1))
            ct[pos] ^= 1 << bit
            assert original.count(encoded) == 1
            overwrite_in_place(target, original.replace(encoded, base64.b64encode(bytes(ct))))
        else:
            target = blob_path(store, "ws1", name)
            original = target.read_bytes()
            pos = data.draw(st.sampled_from(layout[name][region]))
            flipped = bytearray(original)
            flipped[pos] ^= 1 << bit
            overwrite_in_place(target, bytes(flipped))
            header_len = len(layout[name]["header"]) + len(layout[name]["nonce"])
            corrupted_chunk = max(0, pos - header_len) // (CHUNK + FRAME_OVERHEAD)
        try:
            delivered, error = read_all(store, "ws1", name)
            with pytest.raises(IntegrityError):
                store.read_bytes("ws1", name)
        finally:
            overwrite_in_place(target, original)
        assert error is not None, f"{region} flip at {pos} bit {bit} of {name} was accepted"
        # Only whole chunks that precede the corrupted one may have been delivered, unchanged.
        assert delivered == plaintext[: corrupted_chunk * CHUNK]
        if region in {"header", "nonce", "wrapped_inner", "wrapped_outer"}:
            assert delivered == b""
        leaked[region] += max(0, len(delivered) - corrupted_chunk * CHUNK)
        tally[region] += 1

    flip_one_bit()
    for name, data in payloads.items():  # everything restored: the store still reads fine
        assert store.read_bytes("ws1", name) == data
    total = sum(tally.values())
    print(
        f"\nsingle-bit flips: {total}/{total} rejected ({', '.join(f'{k} {v}' for k, v in sorted(tally.items()))}); "
        f"plaintext bytes delivered from or after a corrupted chunk: {sum(leaked.values())}"
    )
    assert total >= 1000 and set(tally) == {"header", "nonce", "payload", "tag", "wrapped_inner", "wrapped_outer"}
    assert sum(leaked.values()) == 0


def test_moved_or_rebound_objects_fail_to_open(store: Datastore) -> None:
    """Associated data and wrap context bind each object to its workspace, object id and version."""
    data_a, data_b, data_c = os.urandom(10_000), os.urandom(10_000), os.urandom(10_000)
    store.put("ws1", "a", data_a)
    store.put("ws1", "b", data_b)
    store.put("ws2", "a", data_c)
    ledger1, ledger2 = store.ledger.path("ws1"), store.ledger.path("ws2")
    pristine = {p: p.read_bytes() for p in (ledger1, ledger2)}
    blobs = {(ws, o): blob_path(store, ws, o) for ws, o in (("ws1", "a"), ("ws1", "b"), ("ws2", "a"))}
    blob_bytes = {k: p.read_bytes() for k, p in blobs.items()}
    outcomes: list[bool] = []

    def restore() -> None:
        for p, raw in pristine.items():
            p.write_bytes(raw)
        for k, p in blobs.items():
            p.write_bytes(blob_bytes[k])

    def rejected(ws: str, obj: str) -> None:
        delivered, error = read_all(store, ws, obj)
        outcomes.append(error is not None and delivered == b"")
        restore()

    # 1. a's blob copied over b's blob: same workspace, another object id
    blobs["ws1", "b"].write_bytes(blob_bytes["ws1", "a"])
    rejected("ws1", "b")
    # 2. a's blob copied into the other workspace's object of the same id
    blobs["ws2", "a"].write_bytes(blob_bytes["ws1", "a"])
    rejected("ws2", "a")
    # 3. a's ledger entry (wrapped keys and blob) moved to object id b
    doc = json.loads(pristine[ledger1])
    doc["objects"]["b"] = doc["objects"]["a"]
    ledger1.write_bytes(json.dumps(doc).encode())
    rejected("ws1", "b")
    # 4. ws1/a's ledger entry moved into ws2 as its object a
    doc2 = json.loads(pristine[ledger2])
    doc2["objects"]["a"] = json.loads(pristine[ledger1])["objects"]["a"]
    ledger2.write_bytes(json.dumps(doc2).encode())
    rejected("ws2", "a")
    # 5. the entry claims another version than the blob was made for
    doc = json.loads(pristine[ledger1])
    doc["objects"]["a"]["version"] = 2
    ledger1.write_bytes(json.dumps(doc).encode())
    rejected("ws1", "a")
    print(f"\nmoved or rebound objects: {sum(outcomes)}/{len(outcomes)} rejected, 0 bytes delivered")
    assert outcomes and all(outcomes)
    assert store.read_bytes("ws1", "a") == data_a and store.read_bytes("ws2", "a") == data_c


def test_wrong_or_missing_associated_data_fails() -> None:
    """At the format level: the reader's expected identity, and a header rewritten to match it."""
    keys = DataKeys.generate()
    header = ObjectHeader.new("ws1", "obj-a", 3, 256)
    sink = io.BytesIO()
    plaintext = os.urandom(1000)
    encrypt_object(plaintext, sink.write, header, keys)
    blob = sink.getvalue()

    def attempt(raw: bytes, **expected: object) -> bool:
        try:
            b"".join(decrypt_object(io.BytesIO(raw), len(raw), keys, **expected))  # type: ignore[arg-type]
        except CorruptObject:
            return True
        return False

    good = {"workspace_id": "ws1", "object_id": "obj-a", "version": 3}
    assert not attempt(blob, **good)
    cases = [
        attempt(blob, **{**good, "workspace_id": "ws2"}),
        attempt(blob, **{**good, "object_id": "obj-b"}),
        attempt(blob, **{**good, "version": 4}),
    ]
    # An attacker rewrites the header so the identity check passes: the AEAD catches it.
    _, raw_header = read_header(io.BytesIO(blob))
    for field, new in (("workspace_id", "ws2"), ("object_id", "obj-b"), ("version", 4)):
        forged_header = ObjectHeader(**{**vars(ObjectHeader.decode(raw_header)), field: new}).encode()
        forged = forged_header + blob[len(raw_header) :]
        cases.append(attempt(forged, **{**good, field: new}))
    # Missing associated data: the frames checked with an empty AAD.
    from modelport.datastore.aead import Aead, stream_nonce

    h = ObjectHeader.decode(raw_header)
    frame = blob[len(raw_header) : len(raw_header) + 256 + FRAME_OVERHEAD]
    with pytest.raises(CorruptObject):
        Aead(keys.outer).open(stream_nonce(h.outer_prefix, 0, False), frame, b"")
    cases.append(True)
    print(f"\nwrong or missing associated data: {sum(cases)}/{len(cases)} rejected")
    assert all(cases)


def _frames(raw: bytes) -> tuple[bytes, list[bytes]]:
    header, raw_header = read_header(io.BytesIO(raw))
    size = header.chunk_size + FRAME_OVERHEAD
    body = raw[len(raw_header) :]
    return raw_header, [body[i : i + size] for i in range(0, len(body), size)]


def test_truncated_reordered_and_extended_objects_are_rejected(store: Datastore) -> None:
    chunk = store.chunk_size
    plaintext = os.urandom(5 * chunk + 100)  # six frames
    store.put("ws1", "obj", plaintext)
    path = blob_path(store, "ws1", "obj")
    original = path.read_bytes()
    head, frames = _frames(original)
    assert len(frames) == 6
    variants: dict[str, tuple[bytes, int]] = {}  # name -> (blob, chunks that may be delivered)
    for keep in range(len(frames)):  # cut at every frame boundary
        variants[f"cut after frame {keep}"] = (head + b"".join(frames[:keep]), keep)
    for cut in range(len(head), len(original), 997):  # cut at arbitrary bytes
        variants[f"cut at byte {cut}"] = (original[:cut], (cut - len(head)) // len(frames[0]))
    for i, j in ((0, 1), (1, 4), (2, 5), (4, 5)):
        swapped = list(frames)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        variants[f"swap {i},{j}"] = (head + b"".join(swapped), i)
    variants["drop frame 2"] = (head + b"".join(frames[:2] + frames[3:]), 2)
    variants["duplicate frame 1"] = (head + b"".join(frames[:2] + frames[1:]), 2)
    variants["append a frame"] = (original + frames[0], 5)
    variants["final frame moved first"] = (head + b"".join([frames[-1], *frames[:-1]]), 0)
    outcomes = Counter()
    try:
        for name, (raw, allowed_chunks) in variants.items():
            path.write_bytes(raw)
            delivered, error = read_all(store, "ws1", "obj")
            assert error is not None, name
            assert delivered == plaintext[: len(delivered)] and len(delivered) <= allowed_chunks * chunk, name
            outcomes["rejected"] += 1
    finally:
        path.write_bytes(original)
    print(f"\ntruncated / reordered / extended variants: {outcomes['rejected']}/{len(variants)} rejected")
    assert outcomes["rejected"] == len(variants)
    assert store.read_bytes("ws1", "obj") == plaintext


def test_either_layer_alone_yields_nothing() -> None:
    """P11: the outer key alone turns a blob into inner ciphertext; the inner key alone opens nothing."""
    marker = b"MODELPORT-SECRET-PLAINTEXT-0123456789"
    plaintext = marker * 4000
    keys = DataKeys.generate()
    header = ObjectHeader.new("ws1", "obj", 1, 4096)
    sink = io.BytesIO()
    encrypt_object(plaintext, sink.write, header, keys)
    blob = sink.getvalue()
    assert marker not in blob
    # Outer key alone (the platform key's data key): inner ciphertext, no plaintext.
    peeled = b"".join(peel_outer(io.BytesIO(blob), len(blob), keys.outer))
    assert len(peeled) == len(plaintext) + 16 * len(range(0, len(plaintext), 4096))
    assert marker not in peeled and marker[:16] not in peeled
    # Inner key alone (the workspace key's data key), with or without the outer layer in place.
    with pytest.raises(CorruptObject):
        b"".join(
            decrypt_object(
                io.BytesIO(blob),
                len(blob),
                DataKeys(keys.inner, keys.inner),
                workspace_id="ws1",
                object_id="obj",
                version=1,
            )
        )
    with pytest.raises(CorruptObject):
        b"".join(peel_outer(io.BytesIO(blob), len(blob), keys.inner))
    # Both keys: the plaintext.
    assert (
        b"".join(decrypt_object(io.BytesIO(blob), len(blob), keys, workspace_id="ws1", object_id="obj", version=1))
        == plaintext
    )


def test_platform_keystore_alone_yields_no_plaintext(store: Datastore) -> None:
    """Through the real key hierarchy: the platform key opens the outer layer only."""
    from modelport.datastore.store import wrap_context

    marker = b"WORKSPACE-PRIVATE-DATA-abcdefghijk"
    store.put("ws1", "obj", marker * 2000)
    entry = store.ledger.read("ws1").objects["obj"]
    assert entry.outer.provider == "platform" and entry.inner.provider == "local"
    outer_key = store.platform_keystore.unwrap(entry.outer, wrap_context("ws1", "obj", entry.version, "outer"))
    path = blob_path(store, "ws1", "obj")
    with open(path, "rb") as fh:
        peeled = b"".join(peel_outer(fh, path.stat().st_size, outer_key))
    assert marker not in peeled and marker[:16] not in peeled
    # The platform keystore cannot unwrap the inner key: another master key, another keystore.
    with pytest.raises(IntegrityError):
        store.platform_keystore.unwrap(entry.inner, wrap_context("ws1", "obj", entry.version, "inner"))
