"""What a writer killed mid-write leaves of key state, and who removes it (P12).

Key files and ledgers are replaced through a temp copy (kms/files.py). A process killed with
SIGKILL between writing that copy and renaming it leaves the copy behind: for a key file, the key's
versions sealed under the master key, so a workspace deletion that destroys the key would leave
a copy anyone holding the master key can open. The keystore and the ledger remove such copies
when they are opened and when the key (or ledger) they belong to is destroyed.

The writer here is a real forked process killed with SIGKILL at the rename, not a simulation.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelport.datastore import Datastore
from modelport.errors import NotFound
from modelport.kms.files import FileSystem, is_temp_name


class KilledAtRename(FileSystem):
    """Dies (SIGKILL, nothing cleaned up) instead of renaming a temp file over a path containing `match`."""

    def __init__(self, match: str) -> None:
        self.match = match

    def replace(self, src: Path, dst: Path) -> None:
        if self.match in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
        super().replace(src, dst)


def crash_while(root: Path, keys: tuple[bytes, bytes], match: str, action: Callable[[Datastore], object]) -> None:
    """Run `action` on a datastore in a forked process that is killed at the rename of `match`."""

    def child() -> None:
        store = Datastore.create(root, platform_master_key=keys[0], workspace_master_key=keys[1],
                                 fs=KilledAtRename(match))
        action(store)
        os._exit(0)  # not killed: the test below fails on the exit code

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL


def temps(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_temp_name(p.name))


def openable_versions(directory: Path, master_key: bytes, key_ref: str) -> int:
    """How many versions of `key_ref` any file in `directory` yields to someone holding the master
    key (the attacker of the shredding tests), whatever the file is called."""
    found = 0
    for path in directory.iterdir():
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, OSError):
            continue
        for number, entry in (doc.get("versions") or {}).items() if isinstance(doc, dict) else ():
            sealed = base64.b64decode(entry["material"])
            aad = b"modelport/keystore/material/v1\x00" + key_ref.encode() + b"\x00" + number.encode()
            try:
                AESGCM(master_key).decrypt(sealed[:12], sealed[12:], aad)
                found += 1
            except InvalidTag:
                pass
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "datastore"


def open_store(root: Path, keys: tuple[bytes, bytes]) -> Datastore:
    return Datastore.create(root, platform_master_key=keys[0], workspace_master_key=keys[1])


def test_a_workspace_deletion_leaves_no_crashed_copy_of_its_key(root: Path, master_keys: tuple[bytes, bytes]) -> None:
    store = open_store(root, master_keys)
    store.put("ws1", "doc", b"secret document")
    key_ref = store.workspace_key("ws1").key_ref
    keystore = root / "keys" / "workspace"
    crash_while(root, master_keys, f"{key_ref}.json", lambda s: s.rotate_workspace_key("ws1"))
    assert len(temps(keystore)) == 1  # the kill left the copy
    assert openable_versions(keystore, master_keys[1], key_ref) == 1 + 2  # the key file's version and the copy's two

    store.purge_workspace("ws1")  # the same process, never reopened: the destroy itself removes it

    assert temps(root) == []
    assert openable_versions(keystore, master_keys[1], key_ref) == 0


def test_a_workspace_deletion_leaves_no_crashed_copy_of_its_ledger(root: Path,
                                                                   master_keys: tuple[bytes, bytes]) -> None:
    store = open_store(root, master_keys)
    store.put("ws1", "doc", b"secret document")
    store.put("ws2", "doc", b"another workspace")
    crash_while(root, master_keys, "ws1.ledger.json", lambda s: s.put("ws1", "other", b"x"))
    crashed = temps(root / "ledger")
    assert len(crashed) == 1 and b"ws1" in crashed[0].read_bytes()  # the copy holds ws1's wrapped keys

    store.purge_workspace("ws1")

    assert temps(root) == []
    assert store.read_bytes("ws2", "doc") == b"another workspace"


CRASHES: dict[str, tuple[Callable[[str], str], Callable[[Datastore], object]]] = {
    "workspace key": (lambda ref: f"{ref}.json", lambda s: s.rotate_workspace_key("ws2")),
    "ledger": (lambda ref: "ws1.ledger.json", lambda s: s.put("ws1", "other", b"x")),
    "platform key": (lambda ref: "keys/platform/", lambda s: s.rotate_platform_key()),
}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_opening_the_store_removes_what_a_crashed_writer_left(root: Path, master_keys: tuple[bytes, bytes],
                                                              crash: str) -> None:
    store = open_store(root, master_keys)
    store.put("ws1", "doc", b"secret document")
    store.put("ws2", "doc", b"another workspace")
    match, action = CRASHES[crash]
    crash_while(root, master_keys, match(store.workspace_key("ws2").key_ref), action)
    assert len(temps(root)) == 1

    reopened = open_store(root, master_keys)

    assert temps(root) == []
    # what was committed before the crash is intact; what the crash was writing never happened
    assert reopened.read_bytes("ws1", "doc") == b"secret document"
    assert reopened.read_bytes("ws2", "doc") == b"another workspace"
    assert reopened.workspace_key("ws2").latest_version == 1
    with pytest.raises(NotFound):
        reopened.read_bytes("ws1", "other")
