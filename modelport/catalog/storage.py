"""Where imported catalog files live: a local directory by default (S3 drops in behind this).

Catalog model files are public artifacts, not user data: they are stored as they are, under
`<root>/models/<model id>/<relative path>`. Uploads are staged under `<root>/uploads/<id>/`
and become visible only when the upload commits, by a directory rename.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path, PurePosixPath

from modelport.errors import Conflict, InvalidInput

#: Where homes made before the rename kept model files: `$MODELPORT_HOME/blobs`, a word that
#: means ciphertext everywhere else (the datastore's blobs).
LEGACY_DIR_NAME = "blobs"


def safe_relpath(path: str, field: str = "path") -> str:
    """A normalized relative POSIX path with no '..', no absolute part, no hidden tricks."""
    if "\\" in path or "\x00" in path:
        raise InvalidInput("File paths use '/' and contain no NUL or backslash.", field=field)
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise InvalidInput("File paths must be relative and must not contain '.' or '..' parts.", field=field)
    return str(p)


def move_legacy_dir(home: Path, root: Path) -> bool:
    """Move an older home's `blobs/` directory to `root` (one rename); True if it moved.

    Stored locations are relative to the model's directory, so nothing else changes. Both
    directories present means something wrote the new one beside the old: refuse to guess.
    """
    legacy = home / LEGACY_DIR_NAME
    if not legacy.is_dir():
        return False
    if root.exists():
        raise Conflict(f"Both {legacy} (model files of an older release) and {root} exist. Keep one: move the "
                       f"contents of {legacy} into {root}, or remove whichever holds no models, then start again.")
    os.rename(legacy, root)
    return True


class LocalModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.uploads = root / "uploads"
        self.models.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    # staging ------------------------------------------------------------------------------
    def upload_dir(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    def write_upload_meta(self, upload_id: str, meta: dict) -> None:
        d = self.upload_dir(upload_id)
        (d / "files").mkdir(parents=True, exist_ok=True)
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, d / "meta.json")

    def read_upload_meta(self, upload_id: str) -> dict | None:
        try:
            return json.loads((self.upload_dir(upload_id) / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None

    def upload_file_path(self, upload_id: str, rel: str) -> Path:
        return self.upload_dir(upload_id) / "files" / rel

    def discard_upload(self, upload_id: str) -> None:
        shutil.rmtree(self.upload_dir(upload_id), ignore_errors=True)

    def expire_uploads(self, ttl_seconds: float) -> int:
        removed = 0
        now = time.time()
        for d in self.uploads.iterdir():
            if now - d.stat().st_mtime > ttl_seconds:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    # committed ----------------------------------------------------------------------------
    def promote(self, upload_id: str, model_id: str) -> Path:
        """Move staged files to their final place in one rename; returns the model dir."""
        dest = self.models / model_id
        os.replace(self.upload_dir(upload_id) / "files", dest)
        self.discard_upload(upload_id)
        return dest

    def model_dir(self, model_id: str) -> Path:
        return self.models / model_id

    def remove_model(self, model_id: str) -> None:
        shutil.rmtree(self.models / model_id, ignore_errors=True)
