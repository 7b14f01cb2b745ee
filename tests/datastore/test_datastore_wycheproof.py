"""The AEAD layer against Project Wycheproof's AES-GCM vectors (tests/data/wycheproof, Apache-2.0).

The layer supports AES-256 with 96-bit nonces and 128-bit tags, nothing else. Every vector of
those sizes runs through both entry points the datastore uses (seal/open and the *_into variants
the chunk loop calls): valid ones must reproduce ciphertext and tag exactly and decrypt back,
invalid ones must be rejected. Vectors of other sizes are skipped, with the reason counted, and
for each of them the layer must refuse the parameters outright.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from modelport.datastore.aead import KEY_SIZE, NONCE_SIZE, TAG_SIZE, Aead
from modelport.datastore.errors import CorruptObject

VECTORS = Path(__file__).resolve().parents[1] / "data" / "wycheproof" / "aes_gcm_test.json"


def load_groups() -> list[dict]:
    if not VECTORS.is_file():
        pytest.fail(f"Wycheproof vectors not found at {VECTORS}: they ship with the repository")
    return json.loads(VECTORS.read_text())["testGroups"]


def skip_reason(group: dict) -> str | None:
    if group["keySize"] != KEY_SIZE * 8:
        return f"{group['keySize']}-bit keys (AES-256 only)"
    if group["ivSize"] != NONCE_SIZE * 8:
        return "nonce sizes other than 96 bits"
    if group["tagSize"] != TAG_SIZE * 8:
        return f"tag size {group['tagSize']} bits (128 only)"
    return None


def run_valid(t: dict) -> None:
    key, iv, aad, msg = (bytes.fromhex(t[k]) for k in ("key", "iv", "aad", "msg"))
    expected = bytes.fromhex(t["ct"]) + bytes.fromhex(t["tag"])
    aead = Aead(key)
    assert aead.seal(iv, msg, aad) == expected, t["tcId"]
    assert aead.open(iv, expected, aad) == msg, t["tcId"]
    out = bytearray(len(msg) + TAG_SIZE)
    aead.seal_into(iv, msg, aad, out)
    assert bytes(out) == expected, t["tcId"]
    back = bytearray(len(msg))
    aead.open_into(iv, expected, aad, back)
    assert bytes(back) == msg, t["tcId"]


def run_invalid(t: dict) -> None:
    key, iv, aad = (bytes.fromhex(t[k]) for k in ("key", "iv", "aad"))
    ct = bytes.fromhex(t["ct"]) + bytes.fromhex(t["tag"])
    aead = Aead(key)
    with pytest.raises(CorruptObject):
        aead.open(iv, ct, aad)
    with pytest.raises(CorruptObject):
        aead.open_into(iv, ct, aad, bytearray(max(len(ct) - TAG_SIZE, 0)))


def refuses_parameters(t: dict) -> bool:
    key, iv = bytes.fromhex(t["key"]), bytes.fromhex(t["iv"])
    if len(key) != KEY_SIZE:
        with pytest.raises(ValueError):
            Aead(key)
        return True
    with pytest.raises(ValueError):
        Aead(key).seal(iv, b"", b"")
    with pytest.raises(ValueError):
        Aead(key).open(iv, bytes(TAG_SIZE), b"")
    return True


def test_wycheproof_aes_gcm_vectors() -> None:
    ran: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for group in load_groups():
        reason = skip_reason(group)
        for t in group["tests"]:
            if reason is not None:
                assert refuses_parameters(t)
                skipped[reason] += 1
            elif t["result"] == "valid":
                run_valid(t)
                ran["valid, reproduced"] += 1
            elif t["result"] == "invalid":
                run_invalid(t)
                ran["invalid, rejected"] += 1
            else:  # "acceptable": none for AES-GCM today; count them if a new release adds any
                skipped[f"result {t['result']!r}"] += 1
    total_ran, total_skipped = sum(ran.values()), sum(skipped.values())
    print(
        f"\nWycheproof AES-GCM: {total_ran} vectors ran ({', '.join(f'{n} {k}' for k, n in ran.items())}); "
        f"{total_skipped} skipped, parameters refused by the layer: "
        + "; ".join(f"{n} for {k}" for k, n in sorted(skipped.items()))
    )
    assert ran["valid, reproduced"] > 0 and ran["invalid, rejected"] > 0
    assert total_skipped > 0
