"""The catalog through the real server and the real CLI: bundled models, imports, search,
downloads, deprecation and deletion, and private names.

The bundled models are the real package files; imports stream real files through
`modelport models import`; downloads are verified against hashlib here, independently of the
CLI's own check. (The artifact scanner itself is tested in test_scanning.py.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.artifacts import (
    gadget_pickle,
    gadgets,
    real_gguf,
    real_minilm_files,
    truncated_copy,
    valid_safetensors,
)
from tests.support.cli import assert_clean_error, cli_json
from tests.support.marketplace import publisher_record
from tests.support.server import Server, lean_server
from tests.support.tenants import Tenant, import_tiny_gguf, make_tenant, ok, unique

SMOL = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture(scope="module")
def team(server: Server) -> Tenant:
    return make_tenant(server, "catalog-team")


@pytest.fixture(scope="module")
def real_hashes() -> dict[str, dict[str, str]]:
    return {SMOL: {real_gguf().name: sha256(real_gguf())},
            MINILM: {rel: sha256(p) for rel, p in real_minilm_files().items() if rel != ".gitattributes"}}


def leftovers(server: Server) -> tuple[list[Path], set[str]]:
    """(anything under the model files' uploads/, model ids with a directory under their models/)."""
    blobs = server.model_files
    return list((blobs / "uploads").iterdir()), {p.name for p in (blobs / "models").iterdir()}


def imported_ids(server: Server, key: str | None = None) -> set[str]:
    with server.client() as admin:
        ids = {m["id"] for m in admin.get("/api/v1/models", params={"limit": 200}).json()["data"]
               if m["source"] == "imported"}
    if key:
        with server.client(key) as c:
            page = c.get("/api/v1/models", params={"owner": "workspace", "limit": 200}).json()
            ids |= {m["id"] for m in page["data"]}
    return ids


def test_bundled_models_are_the_real_files(server: Server, real_hashes: dict) -> None:
    page = cli_json(server, "models", "list", "--owner", "platform")
    by_name = {m["name"]: m for m in page["data"]}
    assert {SMOL, MINILM} <= set(by_name)
    for name, files in real_hashes.items():
        m = by_name[name]
        assert {f["path"]: f["sha256"] for f in m["files"]} == files
        assert m["scan"]["status"] == "passed" and m["scan"]["findings"] == []
        assert (m["source"], m["owner"], m["curated"], m["downloadable"]) == ("bundled", "platform", True, True)
        assert m["license"]["spdx"] == "Apache-2.0"
    assert (by_name[SMOL]["task"], by_name[SMOL]["format"]) == ("chat-completion", "gguf")
    assert (by_name[MINILM]["task"], by_name[MINILM]["format"]) == ("embeddings", "safetensors")
    assert by_name[SMOL]["size_bytes"] == real_gguf().stat().st_size
    # The table is readable: headers and values in columns.
    table = server.cli("models", "list", check=True).stdout
    assert "NAME" in table and "LICENSE" in table and SMOL in table and "Apache-2.0" in table
    show = server.cli("models", "show", SMOL, check=True).stdout
    assert real_hashes[SMOL][real_gguf().name] in show and "HuggingFaceTB" in show


def test_import_a_copy_of_the_bundled_gguf(server: Server, team: Tenant, tmp_path: Path,
                                           real_hashes: dict) -> None:
    src = tmp_path / "my-smol.gguf"
    src.symlink_to(real_gguf())  # a new name for the same bytes; the CLI streams the file
    m = cli_json(server, "models", "import", str(src), "--name", "my-smol", "--license", "Apache-2.0",
                 key=team.keys["contributor"])
    assert (m["name"], m["version"], m["owner"], m["source"]) == ("my-smol", "1", "workspace", "imported")
    assert (m["format"], m["task"], m["curated"], m["downloadable"]) == ("gguf", "chat-completion", False, False)
    assert m["files"] == [{"path": "my-smol.gguf", "size": real_gguf().stat().st_size,
                           "sha256": real_hashes[SMOL][real_gguf().name]}]
    assert m["scan"]["status"] == "passed"
    meta = m["metadata"]  # read from the file itself
    assert (meta["architecture"], meta["context_length"], meta["quantization"]) == ("llama", 8192, "Q4_1")
    stored = server.model_files / "models" / m["id"] / "my-smol.gguf"
    assert sha256(stored) == m["files"][0]["sha256"]
    uploads, _ = leftovers(server)
    assert uploads == []
    # Only its workspace sees it; the catalog-wide list does not.
    with server.client() as admin:
        assert admin.get("/api/v1/models/my-smol").status_code == 404


def _no_weights_dir(tmp: Path) -> Path:
    d = tmp / "no-weights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return d


BAD_IMPORTS = {
    "missing path": (lambda tmp: tmp / "nothing-here.gguf", [], None, "does not exist"),
    "truncated gguf": (lambda tmp: truncated_copy(real_gguf(), tmp / "cut.gguf", 1_000_000), [], 422,
                       "not a valid gguf model"),
    "directory without weights": (_no_weights_dir, ["--format", "safetensors"], 422, "no .safetensors"),
    "invalid name": (lambda tmp: truncated_copy(real_gguf(), tmp / "x.gguf", 10), ["--version", "bad version"],
                     422, "version"),
    "unknown format": (lambda tmp: truncated_copy(real_gguf(), tmp / "y.gguf", 10), ["--format", "onnx"], 422,
                       "format"),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_bad_imports_fail_cleanly_and_leave_nothing(server: Server, team: Tenant, tmp_path: Path,
                                                    case: str) -> None:
    make, extra, status, text = BAD_IMPORTS[case]
    path = make(tmp_path)
    before = imported_ids(server, team.keys["owner"])
    _, dirs_before = leftovers(server)
    name = unique("bad")
    r = server.cli("models", "import", str(path), "--name", name, *extra, key=team.keys["contributor"])
    assert_clean_error(r, status, text)
    with server.client(team.keys["owner"]) as owner:
        assert owner.get(f"/api/v1/models/{name}").status_code == 404
    assert imported_ids(server, team.keys["owner"]) == before
    uploads, dirs = leftovers(server)
    assert uploads == [] and dirs == dirs_before


def test_duplicate_name_and_version_is_refused(server: Server, team: Tenant, tmp_path: Path) -> None:
    with server.client(team.keys["contributor"]) as c:
        first = import_tiny_gguf(c, tmp_path, unique("dup"))
    before = imported_ids(server, team.keys["owner"])
    _, dirs_before = leftovers(server)
    src = tmp_path / "again.gguf"
    src.write_bytes((server.model_files / "models" / first["id"] / "model.gguf").read_bytes())
    r = server.cli("models", "import", str(src), "--name", first["name"], key=team.keys["contributor"])
    assert_clean_error(r, 409, "already exists")
    # A catalog-wide name cannot be hidden by a private one either.
    r = server.cli("models", "import", str(src), "--name", SMOL, key=team.keys["contributor"])
    assert_clean_error(r, 409, "catalog-wide")
    assert imported_ids(server, team.keys["owner"]) == before
    assert leftovers(server) == ([], dirs_before)
    # Another version of the same name is a different model.
    m = cli_json(server, "models", "import", str(src), "--name", first["name"], "--version", "2",
                 key=team.keys["contributor"])
    assert (m["name"], m["version"]) == (first["name"], "2")


def test_malicious_pickle_is_registered_as_failed_and_blocked(server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    d = tmp_path / "evil-model"
    d.mkdir()
    valid_safetensors(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 4}))
    (d / "pytorch_model.bin").write_bytes(gadget_pickle(gadgets(marker)["os.system"]))
    name = unique("evil")
    with server.client() as admin:
        publisher_record(admin, "mallory")
    r = server.cli("models", "import", str(d), "--name", name, "--catalog", "--publisher", "mallory",
                   "--downloadable", "--license", "MIT", check=True)
    assert "scan failed" in r.stdout
    assert "pytorch_model.bin" in r.stderr  # the finding is shown
    with server.client() as admin:
        m = ok(admin.get(f"/api/v1/models/{name}")).json()
        assert m["scan"]["status"] == "failed" and not m["curated"]
        findings = m["scan"]["findings"]
        assert any(f["file"] == "pytorch_model.bin" and f["kind"] == "security" for f in findings)
        assert not marker.exists()  # scanning never ran the payload
        # It cannot be curated, downloaded or deployed.
        assert_clean_error(server.cli("models", "update", name, "--curated"), 409, "failed its artifact scan")
        out = tmp_path / "dl"
        out.mkdir()
        assert_clean_error(server.cli("models", "download", name, "-o", str(out)), 409, "artifact scan")
        assert list(out.rglob("*")) == []
        r = admin.get(f"/api/v1/models/{name}/download", params={"file": "pytorch_model.bin"})
        assert r.status_code == 409 and r.headers["content-type"].startswith("application/json")
        dep = admin.post("/api/v1/deployments", json={"name": unique("d"), "model": name})
        assert dep.status_code == 409, dep.text
        assert ok(admin.get(f"/api/v1/models/{name}")).json()["curated"] is False
        # A rescan finds the same; the platform admin can delete it, files and all.
        assert ok(admin.post(f"/api/v1/models/{name}/scan")).json()["scan"]["status"] == "failed"
        assert (server.model_files / "models" / m["id"]).is_dir()
        ok(admin.delete(f"/api/v1/models/{name}"), 204)
        assert not (server.model_files / "models" / m["id"]).exists()
    assert not marker.exists()


def test_search_filters_and_pagination(server: Server, team: Tenant, tmp_path: Path) -> None:
    with server.client(team.keys["contributor"]) as c:
        import_tiny_gguf(c, tmp_path, unique("mit"), license="MIT", publisher="acme")
        import_tiny_gguf(c, tmp_path, unique("dl"), downloadable=True)
    key = team.keys["reader"]
    everything = cli_json(server, "models", "list", "--limit", "200", key=key)["data"]
    assert len(everything) >= 4 and everything == sorted(everything, key=lambda m: (m["name"], m["id"]))

    def names(**params: object) -> list[str]:
        with server.client(key) as c:
            return [m["name"] for m in ok(c.get("/api/v1/models", params={"limit": 200, **params})).json()["data"]]

    checks = [
        ({"task": "embeddings"}, lambda m: m["task"] == "embeddings"),
        ({"task": "chat-completion"}, lambda m: m["task"] == "chat-completion"),
        ({"publisher": "HuggingFaceTB"}, lambda m: m["publisher"] == "HuggingFaceTB"),
        ({"publisher": "acme"}, lambda m: m["publisher"] == "acme"),
        ({"license": "MIT"}, lambda m: m["license"]["spdx"] == "MIT"),
        ({"format": "safetensors"}, lambda m: m["format"] == "safetensors"),
        ({"curated": True}, lambda m: m["curated"]),
        ({"curated": False}, lambda m: not m["curated"]),
        ({"owner": "workspace"}, lambda m: m["owner"] == "workspace"),
        ({"owner": "platform"}, lambda m: m["owner"] == "platform"),
        ({"q": "minilm"}, lambda m: "minilm" in m["name"].lower()),
        ({"task": "chat-completion", "owner": "workspace", "license": "MIT"},
         lambda m: m["task"] == "chat-completion" and m["owner"] == "workspace" and m["license"]["spdx"] == "MIT"),
    ]
    for params, pred in checks:
        expected = [m["name"] for m in everything if pred(m)]
        assert expected, f"the filter {params} should match something here"
        assert names(**params) == expected, params
    # The CLI passes its options through: the same answers as the API.
    cli = cli_json(server, "models", "list", "--not-curated", "--owner", "workspace", "--license", "MIT",
                   "--task", "chat-completion", "--format", "gguf", "--publisher", "acme", "-q", "mit", key=key)
    assert [m["name"] for m in cli["data"]] == names(curated=False, owner="workspace", license="MIT",
                                                     task="chat-completion", format="gguf", publisher="acme",
                                                     q="mit") != []
    # Pagination: one model a page, following next_cursor, gives the same list exactly once.
    seen, cursor = [], None
    while True:
        if len(seen) == 1:  # one page through the CLI's --cursor, the rest over HTTP
            page = cli_json(server, "models", "list", "--limit", "1", "--cursor", cursor, key=key)
        else:
            with server.client(key) as c:
                page = c.get("/api/v1/models", params={"limit": 1, "cursor": cursor}).json()
        assert len(page["data"]) == 1
        seen += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [m["id"] for m in everything]
    with server.client(key) as c:
        assert c.get("/api/v1/models", params={"cursor": "!!not-a-cursor"}).json()["error"]["field"] == "cursor"
        # `owner` is an enum in the schema: the schema refuses it (422) and names the query parameter
        bad_owner = c.get("/api/v1/models", params={"owner": "someone"})
        assert bad_owner.status_code == 422 and bad_owner.json()["error"]["field"] == "query.owner"


def test_download_the_bundled_gguf_and_verify(server: Server, team: Tenant, tmp_path: Path,
                                              real_hashes: dict) -> None:
    out = tmp_path / "smol.gguf"
    r = cli_json(server, "models", "download", SMOL, "-o", str(out), key=team.keys["reader"])
    assert r["files"][0]["verified"] is True
    assert sha256(out) == real_hashes[SMOL][real_gguf().name] == r["files"][0]["sha256"]
    # One file of a multi-file model over HTTP, with its recorded hash in a header.
    with server.client(team.keys["reader"]) as c:
        resp = c.get(f"/api/v1/models/{MINILM}/download", params={"file": "config.json"})
        assert resp.status_code == 200
        assert hashlib.sha256(resp.content).hexdigest() == resp.headers["x-modelport-sha256"] \
            == real_hashes[MINILM]["config.json"]
        assert c.get(f"/api/v1/models/{MINILM}/download").json()["error"]["field"] == "file"


def test_a_model_that_is_not_downloadable_gives_403(server: Server, team: Tenant, tmp_path: Path) -> None:
    with server.client(team.keys["contributor"]) as c:
        m = import_tiny_gguf(c, tmp_path)  # private models are not downloadable by default
        assert c.get(f"/api/v1/models/{m['name']}/download").status_code == 403
    out = tmp_path / "nope.gguf"
    assert_clean_error(server.cli("models", "download", m["name"], "-o", str(out), key=team.keys["owner"]), 403,
                       "not downloadable")
    assert not out.exists() and not out.with_name("nope.gguf.part").exists()


def test_deprecate_and_delete(server: Server, team: Tenant, tmp_path: Path) -> None:
    owner = team.keys["owner"]
    # Catalog-wide models: platform admins only; a bundled one can be deprecated, not deleted.
    assert_clean_error(server.cli("models", "deprecate", MINILM, key=owner), 403, "platform admin")
    with server.client(owner) as c:
        assert c.delete(f"/api/v1/models/{MINILM}").status_code == 403
    try:
        assert cli_json(server, "models", "deprecate", MINILM)["deprecated"] is True
        with server.client(owner) as c:
            active = c.get("/api/v1/models", params={"include_deprecated": False, "limit": 200}).json()["data"]
            assert MINILM not in {m["name"] for m in active}
            assert c.get(f"/api/v1/models/{MINILM}").json()["deprecated"] is True
        assert_clean_error(server.cli("models", "delete", MINILM, "--yes"), 409, "Bundled models")
    finally:
        with server.client() as admin:
            ok(admin.patch(f"/api/v1/models/{MINILM}", json={"deprecated": False}))
    # Private models: owners deprecate and delete; contributors may not.
    with server.client(team.keys["contributor"]) as c:
        m = import_tiny_gguf(c, tmp_path)
    blob = server.model_files / "models" / m["id"]
    assert blob.is_dir()
    assert_clean_error(server.cli("models", "delete", m["name"], "--yes", key=team.keys["contributor"]), 403,
                       "does not allow")
    with server.client(owner) as c:
        assert ok(c.post(f"/api/v1/models/{m['name']}/deprecate")).json()["deprecated"] is True
    r = server.cli("models", "delete", m["name"], "--yes", key=owner, check=True)
    assert f"Deleted {m['name']}" in r.stdout
    assert not blob.exists()
    # A catalog-wide import is deleted by the admin, files and all.
    with server.client() as admin:
        assert admin.get(f"/api/v1/models/{m['name']}").status_code == 404
        publisher_record(admin, "tests")
        cat = import_tiny_gguf(admin, tmp_path, scope="catalog", publisher="tests")
        ok(admin.delete(f"/api/v1/models/{cat['name']}"), 204)
        assert admin.get(f"/api/v1/models/{cat['name']}").status_code == 404
    assert not (server.model_files / "models" / cat["id"]).exists()


def test_private_names_are_per_workspace(server: Server, team: Tenant, tmp_path: Path) -> None:
    other = make_tenant(server, unique("other"))
    with server.client(team.keys["contributor"]) as c:
        mine = import_tiny_gguf(c, tmp_path, unique("shared-name"), card="team's card")
    name = mine["name"]
    assert_clean_error(server.cli("models", "show", name, key=other.keys["owner"]), 404, "not found")
    with server.client(other.keys["owner"]) as c:
        assert name not in {m["name"] for m in c.get("/api/v1/models", params={"q": "shared"}).json()["data"]}
    src = tmp_path / "theirs.gguf"
    src.write_bytes((server.model_files / "models" / mine["id"] / "model.gguf").read_bytes())
    theirs = cli_json(server, "models", "import", str(src), "--name", name, key=other.keys["contributor"])
    assert theirs["name"] == name and theirs["id"] != mine["id"]
    with server.client(team.keys["reader"]) as a, server.client(other.keys["reader"]) as b:
        assert a.get(f"/api/v1/models/{name}").json()["id"] == mine["id"]
        assert b.get(f"/api/v1/models/{name}").json()["id"] == theirs["id"]
        assert a.get(f"/api/v1/models/{name}").json()["card"] == "team's card"
