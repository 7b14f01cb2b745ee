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
import unicodedata
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath

from modelport.errors import Conflict, InvalidInput

#: Where homes made before the rename kept model files: `$MODELPORT_HOME/blobs`, a word that
#: means ciphertext everywhere else (the datastore's blobs).
LEGACY_DIR_NAME = "blobs"

#: Unicode categories a file path may not contain: control characters (CR, LF, TAB, NUL, DEL,
#: C1), format characters (zero-width, bidirectional overrides), line and paragraph separators,
#: surrogates. Paths end up in response headers and in operators' terminals.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def safe_relpath(path: str, field: str = "path") -> str:
    """A normalized relative POSIX path with no '..', no absolute part, no hidden tricks."""
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in path):
        raise InvalidInput("File paths must not contain control or format characters (CR, LF, TAB, NUL, "
                           "zero-width or bidirectional marks).", field=field)
    if "\\" in path:
        raise InvalidInput("File paths use '/' and contain no backslash.", field=field)
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise InvalidInput("File paths must be relative and must not contain '.' or '..' parts.", field=field)
    return str(p)


def _readable_by_workers(directory: Path) -> None:
    """The server writes with umask 077, but model workers run under uids of their own and open
    their model by path (llama.cpp reopens /proc/self/fd/N, which checks the file's mode). Model
    files are public artifacts, and they stay out of other users' reach: they lie in the 0700
    MODELPORT_HOME, and a worker's sandbox shows it only its own model."""
    for parent, _dirs, files in os.walk(directory):
        os.chmod(parent, 0o755)  # noqa: S103 - inside the 0700 home; see above
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)


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

    def discard_uploads_of(self, workspace_id: str) -> int:
        """Remove every upload begun in a workspace (it is being deleted); how many there were."""
        removed = 0
        for upload_id, meta in list(self.upload_metas()):
            if meta is not None and meta.get("workspace_id") == workspace_id:
                self.discard_upload(upload_id)
                removed += 1
        return removed

    def upload_metas(self) -> Iterator[tuple[str, dict | None]]:
        """(upload id, its metadata or None when unreadable) of every staged upload."""
        for d in self.uploads.iterdir():
            yield d.name, self.read_upload_meta(d.name)

    def expire_uploads(self, ttl_seconds: float, *, keep: Callable[[str], bool] = lambda _: False) -> int:
        """Remove uploads past their `expires_at` (or, without readable metadata, untouched for
        `ttl_seconds`), except those `keep` names (a file still streaming in)."""
        removed = 0
        now = time.time()
        for upload_id, meta in list(self.upload_metas()):
            if keep(upload_id):
                continue
            try:
                expires = (datetime.fromisoformat(meta["expires_at"]).timestamp() if meta
                           else self.upload_dir(upload_id).stat().st_mtime + ttl_seconds)
            except (OSError, KeyError, TypeError, ValueError):
                expires = 0.0  # metadata without a readable expiry: nothing to keep it for
            if now > expires:
                shutil.rmtree(self.upload_dir(upload_id), ignore_errors=True)
                removed += 1
        return removed

    # committed ----------------------------------------------------------------------------
    def promote(self, upload_id: str, model_id: str) -> Path:
        """Move staged files to their final place in one rename; returns the model dir."""
        dest = self.models / model_id
        os.replace(self.upload_dir(upload_id) / "files", dest)
        self.discard_upload(upload_id)
        _readable_by_workers(dest)
        return dest

    def model_dir(self, model_id: str) -> Path:
        return self.models / model_id

    def remove_model(self, model_id: str) -> None:
        shutil.rmtree(self.models / model_id, ignore_errors=True)
