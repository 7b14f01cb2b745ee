"""Datasets end to end: the CLI and REST against a real server, the real datastore on disk.

What the datastore guarantees at the library level (Wycheproof, tampering, rotation, CMK
state, crypto-shredding) is tested in tests/datastore and tests/kms; here we check that the
product path keeps those promises: uploads are validated and encrypted while they stream,
rejected files leave nothing, another workspace sees 404, and deletion destroys the keys.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from tests.support.server import Server, start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    s = start_server(tmp_path_factory.mktemp("ds") / "home",
                     env_extra={"MODELPORT_MAX_DATASET_BYTES": "200000",
                                "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false"})
    yield s
    s.stop()


def chat_jsonl(canary: str, rows: int = 50) -> bytes:
    line = {"messages": [{"role": "user", "content": f"What is the code word? {canary}"},
                         {"role": "assistant", "content": f"The code word is {canary}."}]}
    return (json.dumps(line) + "\n").encode() * rows


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def grep(root: Path, needle: bytes) -> list[Path]:
    return [p for p in all_files(root) if needle in p.read_bytes()]


def new_workspace_owner(srv: Server, name: str) -> str:
    with srv.client() as c:
        c.post("/api/v1/users", json={"name": f"{name}-owner"}).raise_for_status()
        c.post("/api/v1/workspaces", json={"name": name, "owner": f"{name}-owner"}).raise_for_status()
        r = c.post(f"/api/v1/users/{name}-owner/apikeys", json={"workspace": name, "name": "t"})
        r.raise_for_status()
        return r.json()["key"]


def test_upload_with_the_cli_encrypts_and_never_writes_plaintext(srv: Server, tmp_path: Path) -> None:
    canary = "CANARY" + secrets.token_hex(8)
    src = tmp_path / "train.jsonl"
    src.write_bytes(chat_jsonl(canary))
    r = srv.cli("datasets", "upload", str(src), "--name", "planted", "--json", check=True)
    d = json.loads(r.stdout)
    assert d["rows"] == 50 and d["format"] == "chat" and d["size"] == src.stat().st_size
    assert grep(srv.home, canary.encode()) == []  # not in the DB, the ledger, the blobs, anywhere
    shown = json.loads(srv.cli("datasets", "show", "planted", "--json", check=True).stdout)
    assert shown["sha256"] == d["sha256"]
    listed = srv.cli("datasets", "list", check=True).stdout
    assert "planted" in listed and "chat" in listed


def test_invalid_file_is_rejected_with_line_and_field_and_nothing_is_stored(srv: Server) -> None:
    canary = "CANARY" + secrets.token_hex(8)
    before = set(all_files(srv.home / "datastore"))
    body = (json.dumps({"messages": [{"role": "user", "content": canary},
                                     {"role": "assistant", "content": canary}]}) + "\n"
            + json.dumps({"messages": [{"role": "wizard", "content": canary}]}) + "\n"
            + canary + "\n").encode()
    with srv.client() as c:
        r = c.post("/api/v1/datasets", params={"name": "bad"}, content=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert "line 2: messages[0].role" in err["message"] and "line 3" in err["message"]
    assert canary not in r.text
    assert set(all_files(srv.home / "datastore")) == before
    assert canary.encode() not in srv.logs().encode()
    with srv.client() as c:
        assert c.get("/api/v1/datasets/bad").status_code == 404


def test_too_large_is_413_and_nothing_is_stored(srv: Server) -> None:
    before = set(all_files(srv.home / "datastore"))
    big = chat_jsonl("x" * 20, rows=3000)
    assert len(big) > 200000
    with srv.client() as c:
        r = c.post("/api/v1/datasets", params={"name": "big"}, content=big)
        assert r.status_code == 413, r.text

        def chunked():  # no Content-Length: the limit holds while streaming
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]

        r = c.post("/api/v1/datasets", params={"name": "big"}, content=chunked())
        assert r.status_code == 413, r.text
        assert c.get("/api/v1/datasets/big").status_code == 404
    assert set(all_files(srv.home / "datastore")) == before


def test_other_workspace_gets_404(srv: Server, tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_bytes(b'{"prompt": "p", "completion": "c"}\n')
    d = json.loads(srv.cli("datasets", "upload", str(src), "--name", "mine", "--json", check=True).stdout)
    other = new_workspace_owner(srv, "other-ds")
    with srv.client(other) as c:
        for ref in ("mine", d["id"]):
            assert c.get(f"/api/v1/datasets/{ref}").status_code == 404
            assert c.delete(f"/api/v1/datasets/{ref}").status_code == 404
        assert c.get("/api/v1/datasets").json() == []


def test_delete_needs_confirmation_then_destroys_the_keys(srv: Server, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_bytes(chat_jsonl("shred-me", rows=20))
    d = json.loads(srv.cli("datasets", "upload", str(src), "--name", "shred", "--json", check=True).stdout)
    with srv.client() as c:
        ws = c.get("/api/v1/me").json()["workspace_id"]
    ledger = json.loads((srv.home / "datastore" / "ledger" / f"{ws}.ledger.json").read_text())
    entry = ledger["objects"][d["id"]]
    wrapped = [base64.b64decode(entry[layer]["ciphertext"]) for layer in ("inner", "outer")]
    blob = srv.home / "datastore" / "blobs" / (entry["blob_key"] + ".blob")
    assert blob.is_file()

    r = srv.cli("datasets", "delete", "shred", input="n\n")
    assert r.returncode != 0 and "Aborted" in (r.stdout + r.stderr)
    with srv.client() as c:
        assert c.get("/api/v1/datasets/shred").status_code == 200

    srv.cli("datasets", "delete", "shred", input="y\n", check=True)
    with srv.client() as c:
        assert c.get("/api/v1/datasets/shred").status_code == 404
    assert not blob.exists()
    for key in wrapped:
        assert grep(srv.home, key) == [], "a wrapped data key survived the deletion"
