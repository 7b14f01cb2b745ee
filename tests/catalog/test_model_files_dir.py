"""Model files live in $MODELPORT_HOME/model-files; a home made before that name (files in
$MODELPORT_HOME/blobs, the word the datastore uses for ciphertext) still starts and serves.

The old layout is made by renaming the directory that a real server wrote, which is exactly
what an older release left on disk: `blobs/models/<model id>/...` and `blobs/uploads/`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.server import start_lean
from tests.support.tenants import import_tiny_gguf, ok


def _download(server, name: str) -> bytes:
    with server.client() as admin:
        m = ok(admin.get(f"/api/v1/models/{name}")).json()
        (f,) = m["files"]
        body = ok(admin.get(f"/api/v1/models/{name}/download", params={"file": f["path"]})).content
    assert hashlib.sha256(body).hexdigest() == f["sha256"]
    return body


def test_a_home_with_the_old_blobs_directory_starts_and_serves_its_models(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_lean(home)
    try:
        with server.client() as admin:
            model = import_tiny_gguf(admin, tmp_path / "files", downloadable=True)
        before = _download(server, model["name"])
    finally:
        server.stop()
    assert (home / "model-files" / "models" / model["id"]).is_dir()
    assert not (home / "blobs").exists()
    (home / "model-files").rename(home / "blobs")  # the layout of a home made by an older release

    server = start_lean(home)
    try:
        assert _download(server, model["name"]) == before
        with server.client() as admin:  # new imports land in the new place too
            again = import_tiny_gguf(admin, tmp_path / "files2")
    finally:
        server.stop()
    assert not (home / "blobs").exists()
    assert (home / "model-files" / "models" / model["id"]).is_dir()
    assert (home / "model-files" / "models" / again["id"]).is_dir()


def test_both_directories_present_is_refused_with_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "blobs" / "models").mkdir(parents=True)
    (home / "model-files" / "models").mkdir(parents=True)
    try:
        server = start_lean(home)
    except RuntimeError as exc:
        # the server's error is wrapped to the terminal's width, and a long temporary path can
        # move a line break into a word: read it as one line
        message = str(exc).replace("\n", "")
    else:
        server.stop()
        raise AssertionError("the server started with two model-file directories")
    assert "blobs" in message and "model-files" in message and "Traceback" not in message
