"""The catalog: bundled and imported models, their scans, visibility, updates and downloads.

Visibility: a caller sees catalog-wide models and the private models of its own workspace. A
private model shadows a catalog-wide one of the same name inside its workspace; another
workspace's private models are never found (404) and their names never collide with yours.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from modelport.audit import service as audit
from modelport.catalog import bundled as bundled_models
from modelport.catalog.downloads import DownloadFile
from modelport.catalog.scanning import ScanReport, read_gguf_metadata, read_safetensors_metadata, scan_model
from modelport.catalog.schemas import (
    MODEL_NAME_PATTERN,
    SPDX_PATTERN,
    VERSION_PATTERN,
    ModelUpdate,
    UploadCreate,
)
from modelport.catalog.storage import LocalModelStore, safe_relpath
from modelport.db.base import new_id, utcnow
from modelport.db.engine import Database
from modelport.db.tables import CatalogModel, ModelFile, Publisher
from modelport.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
)
from modelport.identity.principal import Principal
from modelport.marketplace.publishers import ensure_publisher, publisher_by_ref
from modelport.offload import run_blocking
from modelport.policies.engine import PolicyEngine
from modelport.policies.facts import ModelFacts

if TYPE_CHECKING:
    from hashlib import _Hash

MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
VERSION_RE = re.compile(VERSION_PATTERN)
SPDX_RE = re.compile(SPDX_PATTERN)
GLOBAL_SCOPE = ""


@dataclass(frozen=True)
class Filters:
    task: str | None = None
    publisher: str | None = None
    license: str | None = None
    format: str | None = None
    curated: bool | None = None
    owner: str | None = None  # "platform" | "workspace"
    include_deprecated: bool = True
    q: str | None = None


class CatalogService:
    def __init__(self, db: Database, store: LocalModelStore, *, max_upload_bytes: int,
                 upload_ttl_seconds: int, max_open_uploads: int = 64, policies: PolicyEngine | None = None) -> None:
        self.db = db
        self.policies = policies or PolicyEngine(db)  # governance: imports and downloads
        self.store = store
        self.max_upload_bytes = max_upload_bytes
        self.upload_ttl = upload_ttl_seconds
        self.max_open_uploads = max_open_uploads
        self._uploads_lock = threading.Lock()  # counting a workspace's uploads and adding one: atomic
        self._streaming: Counter[str] = Counter()  # uploads with a file streaming in: never expired

    # -- bundled models -------------------------------------------------------------------

    def register_bundled(self) -> list[str]:
        """Hash, verify and scan every bundled model and upsert it; returns problems found."""
        models, problems = bundled_models.discover()
        for bm in models:
            try:
                self._register_bundled_one(bm)
            except (IntegrityError, Unprocessable) as exc:
                problems.append(f"{bm.name}: {exc.message}")
        return problems

    def _register_bundled_one(self, bm: bundled_models.BundledModel) -> None:
        # mypy is told to ignore the next line: a bundled model's format is one the scanner knows
        report = scan_model(bm.files, bm.format)  # type: ignore[arg-type]
        if report.structural_errors:
            raise Unprocessable("; ".join(f.message for f in report.structural_errors))
        for rel, expected in bm.record_hashes.items():
            got = report.files.get(rel, {}).get("sha256")
            if got is not None and got != expected:
                raise IntegrityError(f"file {rel} does not match the sha256 in its package's RECORD")
        metadata = self._read_metadata(bm.format, bm.files)
        with self.db.session() as s:
            row = s.scalar(select(CatalogModel).where(CatalogModel.scope_key == GLOBAL_SCOPE,
                                                      CatalogModel.name == bm.name,
                                                      CatalogModel.version == bm.version))
            # The record the model already names stays (an admin may have renamed it); a new model
            # names its package's publisher, made on first start.
            known = s.get(Publisher, row.publisher_id) if row is not None and row.publisher_id else None
            publisher = known or ensure_publisher(s, bm.publisher)  # flushed before the model row refers to it
            publisher_id = publisher.id
            if row is None:
                row = CatalogModel(id=new_id("mdl"), name=bm.name, version=bm.version, scope_key=GLOBAL_SCOPE,
                                   source="bundled", curated=bm.curated, downloadable=bm.downloadable,
                                   finetunable=bm.finetunable, deployment_types=list(bm.deployment_types))
                s.add(row)
            row.publisher = publisher.name
            row.publisher_id = publisher_id
            row.license_spdx = bm.license_spdx
            row.license_url = bm.license_url
            row.task = bm.task
            row.format = bm.format
            row.card = bm.card
            row.model_metadata = metadata
            self._apply_report(row, report)
            if row.scan_status != "passed":
                row.curated = False
            # Update in place: replacing the collection would insert the new rows before the
            # old ones are deleted and trip the (model_id, path) unique constraint on restart.
            existing = {f.path: f for f in row.files}
            for rel, path in sorted(bm.files.items()):
                f = existing.pop(rel, None)
                if f is None:
                    f = ModelFile(path=rel)
                    row.files.append(f)
                f.size, f.sha256, f.location = report.files[rel]["size"], report.files[rel]["sha256"], str(path)
            for gone in existing.values():
                row.files.remove(gone)
            row.size_bytes = sum(f.size for f in row.files)

    @staticmethod
    def _apply_report(row: CatalogModel, report: ScanReport) -> None:
        row.scan_status = "passed" if report.passed else "failed"
        row.scan_report = report.to_dict()
        row.scanned_at = utcnow()

    @staticmethod
    def _read_metadata(fmt: str, files: dict[str, Path]) -> dict:
        if fmt == "gguf":
            gguf = next(p for rel, p in files.items() if rel.endswith(".gguf"))
            meta = read_gguf_metadata(gguf)
            meta.pop("chat_template", None)  # kept in the file; the card need not repeat it
            return meta
        return read_safetensors_metadata(files)

    # -- queries --------------------------------------------------------------------------

    def _visible(self, actor: Principal):
        return or_(CatalogModel.scope_key == GLOBAL_SCOPE, CatalogModel.scope_key == actor.workspace_id)

    def list(self, actor: Principal, filters: Filters, *, limit: int = 50,
             cursor: str | None = None) -> tuple[Sequence[CatalogModel], str | None]:
        actor.require("models.read")
        if not 1 <= limit <= 200:
            raise InvalidInput("limit must be between 1 and 200.", field="limit")
        stmt = select(CatalogModel).where(self._visible(actor))
        if filters.task:
            stmt = stmt.where(CatalogModel.task == filters.task)
        if filters.publisher:
            stmt = stmt.where(CatalogModel.publisher == filters.publisher)
        if filters.license:
            stmt = stmt.where(CatalogModel.license_spdx == filters.license)
        if filters.format:
            stmt = stmt.where(CatalogModel.format == filters.format)
        if filters.curated is not None:
            stmt = stmt.where(CatalogModel.curated.is_(filters.curated))
        if filters.owner == "platform":
            stmt = stmt.where(CatalogModel.scope_key == GLOBAL_SCOPE)
        elif filters.owner == "workspace":
            stmt = stmt.where(CatalogModel.scope_key == actor.workspace_id)
        elif filters.owner is not None:
            raise InvalidInput("owner must be 'platform' or 'workspace'.", field="owner")
        if not filters.include_deprecated:
            stmt = stmt.where(CatalogModel.deprecated.is_(False))
        if filters.q:
            like = "%" + filters.q.replace("%", r"\%").replace("_", r"\_") + "%"
            stmt = stmt.where(CatalogModel.name.ilike(like, escape="\\"))
        if cursor:
            name, mid = _decode_cursor(cursor)
            stmt = stmt.where(or_(CatalogModel.name > name, (CatalogModel.name == name) & (CatalogModel.id > mid)))
        stmt = stmt.order_by(CatalogModel.name, CatalogModel.id).limit(limit + 1)
        with self.db.session() as s:
            rows = list(s.scalars(stmt))
        next_cursor = _encode_cursor(rows[limit - 1].name, rows[limit - 1].id) if len(rows) > limit else None
        return rows[:limit], next_cursor

    def resolve(self, s: Session, actor: Principal, name: str, version: str | None = None) -> CatalogModel:
        """The model `name` as the caller sees it (a private one shadows a catalog-wide one)."""
        stmt = select(CatalogModel).where(self._visible(actor), CatalogModel.name == name)
        if version:
            stmt = stmt.where(CatalogModel.version == version)
        rows = list(s.scalars(stmt))
        if not rows:
            raise NotFound(f"Model '{name}'{f' version {version!r}' if version else ''} not found.")
        private = [r for r in rows if r.scope_key != GLOBAL_SCOPE]
        pool = private or rows
        return max(pool, key=lambda r: (r.created_at, r.id))

    def get(self, actor: Principal, name: str, version: str | None = None) -> CatalogModel:
        actor.require("models.read")
        with self.db.session() as s:
            return self.resolve(s, actor, name, version)

    # -- changes --------------------------------------------------------------------------

    def _require_manage(self, actor: Principal, row: CatalogModel) -> None:
        if row.scope_key == GLOBAL_SCOPE:
            actor.require("platform.models")
        else:
            actor.require("models.manage")

    def update(self, actor: Principal, name: str, version: str | None, change: ModelUpdate) -> CatalogModel:
        with self.db.session() as s:
            row = self.resolve(s, actor, name, version)
            self._require_manage(actor, row)
            fields = change.model_dump(exclude_none=True)
            if change.curated:
                if row.scope_key != GLOBAL_SCOPE:
                    raise Conflict("Only catalog-wide models are curated; this model is private.", field="curated")
                if row.scan_status != "passed":
                    raise Conflict("A model that failed its artifact scan cannot be curated.", field="curated")
            if change.downloadable and row.source == "finetuned":
                raise Forbidden("Fine-tuned models can never be downloadable.")
            if change.deployment_types is not None and not change.deployment_types:
                raise InvalidInput("deployment_types needs at least one type.", field="deployment_types")
            for key, value in fields.items():
                setattr(row, key, value)
            audit.record(s, actor, "model.update", resource_type="model", resource_id=row.id,
                         workspace_id=row.owner_workspace_id or actor.workspace_id,
                         detail={"fields": sorted(fields)})
            return row

    def delete(self, actor: Principal, name: str, version: str | None) -> None:
        with self.db.session() as s:
            row = self.resolve(s, actor, name, version)
            self._require_manage(actor, row)
            if row.source == "finetuned":  # its weights are in the datastore: see finetuning/service.py
                raise Conflict(f"'{row.name}' is a fine-tuned model: delete it with 'modelport finetune delete-model "
                               "NAME --yes' (DELETE /api/v1/finetuning/models/NAME?confirm=true), which stops its "
                               "deployments and destroys its weights.")
            if row.source == "bundled":
                raise Conflict(
                    "Bundled models come from installed packages: deprecate it, or uninstall its package "
                    "and restart to remove it."
                )
            model_id, source = row.id, row.source
            s.delete(row)
            audit.record(s, actor, "model.delete", resource_type="model", resource_id=model_id,
                         workspace_id=row.owner_workspace_id or actor.workspace_id)
        if source == "imported":
            self.store.remove_model(model_id)

    def rescan(self, actor: Principal, name: str, version: str | None) -> CatalogModel:
        with self.db.session() as s:
            row = self.resolve(s, actor, name, version)
            self._require_manage(actor, row)
            report = self.scan_stored(row)
            self._apply_report(row, report)
            if not report.passed:
                row.curated = False
            audit.record(s, actor, "model.scan", resource_type="model", resource_id=row.id,
                         workspace_id=row.owner_workspace_id or actor.workspace_id,
                         detail={"status": row.scan_status})
            return row

    def file_paths(self, row: CatalogModel) -> dict[str, Path]:
        return {f.path: self._location(row, f) for f in row.files}

    def _location(self, row: CatalogModel, f: ModelFile) -> Path:
        return Path(f.location) if row.source == "bundled" else self.store.model_dir(row.id) / f.location

    def scan_stored(self, row: CatalogModel) -> ScanReport:
        """Scan again (before a deployment loads it) and check every file's recorded sha256."""
        paths = self.file_paths(row)
        missing = [rel for rel, p in paths.items() if not p.is_file()]
        if missing:
            raise IntegrityError(f"Model '{row.name}' is missing files on disk: {', '.join(missing)}.")
        # mypy is told to ignore the next line: a stored model's format was checked at import
        report = scan_model(paths, row.format)  # type: ignore[arg-type]
        for f in row.files:
            if report.files.get(f.path, {}).get("sha256") != f.sha256:
                raise IntegrityError(
                    f"File {f.path} of model '{row.name}' no longer matches the sha256 recorded at import."
                )
        return report

    # -- download (P13) -------------------------------------------------------------------

    def download_file(self, actor: Principal, name: str, version: str | None, file: str | None) -> DownloadFile:
        actor.require("models.read")
        with self.db.session() as s:
            row = self.resolve(s, actor, name, version)
            if not row.downloadable or row.source == "finetuned":
                raise Forbidden(
                    f"Model '{row.name}' is not downloadable: its licence or owner does not allow it."
                )
            if row.scan_status != "passed":
                raise Conflict(f"Model '{row.name}' failed its artifact scan and cannot be downloaded; "
                               "see its scan report.")
            if file is None:
                if len(row.files) != 1:
                    raise InvalidInput(
                        f"Model '{row.name}' has {len(row.files)} files: name one with ?file=PATH "
                        "(GET the model to list them).", field="file")
                f = row.files[0]
            else:
                named = next((x for x in row.files if x.path == file), None)
                if named is None:
                    raise NotFound(f"Model '{row.name}' has no file '{file}'.", field="file")
                f = named
            self.policies.enforce(actor, "download_model", ModelFacts.seen_by(row, actor))
            audit.record(s, actor, "model.download", resource_type="model", resource_id=row.id,
                         detail={"file": f.path})
            return DownloadFile(path=self._location(row, f), name=f.path, size=f.size, sha256=f.sha256,
                                model_id=row.id)

    @staticmethod
    def _publisher_id(s: Session, scope_key: str, publisher: str | None) -> str | None:
        """Catalog-wide models reference their publisher's record; a workspace's own have none."""
        if scope_key != GLOBAL_SCOPE:
            return None
        pub = publisher_by_ref(s, publisher or "")
        if pub is None:
            raise InvalidInput("The upload's publisher no longer exists; create it again or start a new upload.",
                               field="publisher")
        return pub.id

    # -- import through uploads -----------------------------------------------------------

    def begin_upload(self, actor: Principal, req: UploadCreate) -> dict:
        if req.scope == "catalog":
            actor.require("platform.models")
        else:
            actor.require("models.import")
        if not MODEL_NAME_RE.fullmatch(req.name):
            raise InvalidInput("name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                               "or digit.", field="name")
        if not VERSION_RE.fullmatch(req.version):
            raise InvalidInput("version must be 1-64 letters, digits, '.', '_', '+' or '-'.", field="version")
        if not SPDX_RE.fullmatch(req.license):
            raise InvalidInput("license must be an SPDX identifier such as Apache-2.0 or MIT.", field="license")
        if req.scope == "catalog" and not req.publisher:
            raise InvalidInput("publisher is required for catalog-wide models.", field="publisher")
        if req.scope == "catalog":
            with self.db.session() as s:
                if publisher_by_ref(s, req.publisher or "") is None:
                    raise InvalidInput("A catalog-wide model names a publisher record, and none has that name; a "
                                       "platform admin creates it first (modelport publishers create NAME).",
                                       field="publisher")
        seen: set[str] = set()
        for i, f in enumerate(req.files):
            rel = safe_relpath(f.path, field=f"files[{i}].path")
            if rel in seen:
                raise InvalidInput("Each file may be listed once.", field=f"files[{i}].path")
            seen.add(rel)
        total = sum(f.size for f in req.files)
        if total > self.max_upload_bytes:
            raise PayloadTooLarge(f"The model is {total} bytes; this server accepts at most "
                                  f"{self.max_upload_bytes} bytes per model.")
        scope_key = GLOBAL_SCOPE if req.scope == "catalog" else actor.workspace_id
        with self.db.session() as s:
            self._check_name_free(s, actor, scope_key, req.name, req.version)
        upload_id = new_id("upl")
        meta = {
            "id": upload_id,
            "workspace_id": actor.workspace_id,
            "user_id": actor.user_id,
            "scope_key": scope_key,
            "request": req.model_dump(),
            "files": {safe_relpath(f.path): f.size for f in req.files},
            "received": {},
            "expires_at": (utcnow() + timedelta(seconds=self.upload_ttl)).isoformat(),
        }
        with self._uploads_lock:
            open_now = sum(1 for _, m in self.store.upload_metas() if m and m["workspace_id"] == actor.workspace_id)
            if open_now >= self.max_open_uploads:
                raise Conflict(
                    f"This workspace has {open_now} open model uploads, the most this server allows "
                    f"(MODELPORT_MAX_OPEN_UPLOADS_PER_WORKSPACE={self.max_open_uploads}); commit or abort one "
                    "(DELETE /api/v1/model-uploads/ID), or wait until one expires.",
                    details={"limit": "max_open_uploads_per_workspace", "current": open_now,
                             "max": self.max_open_uploads})
            self.store.write_upload_meta(upload_id, meta)
        return meta

    def _check_name_free(self, s: Session, actor: Principal, scope_key: str, name: str, version: str) -> None:
        clash = s.scalar(select(CatalogModel.id).where(CatalogModel.scope_key == scope_key,
                                                       CatalogModel.name == name,
                                                       CatalogModel.version == version))
        if clash:
            raise Conflict(f"Model '{name}' version '{version}' already exists.", field="name")
        if scope_key != GLOBAL_SCOPE:
            # A private name may not hide a catalog-wide one (this reveals only public names).
            public = s.scalar(select(CatalogModel.id).where(CatalogModel.scope_key == GLOBAL_SCOPE,
                                                            CatalogModel.name == name))
            if public:
                raise Conflict(f"'{name}' is the name of a catalog-wide model; choose another.", field="name")

    def _upload_meta(self, actor: Principal, upload_id: str, *, write: bool = True) -> dict:
        """The upload as `actor` may see it; `write` also checks the role that began it needs.

        Every step of an upload (files, commit, abort) needs the same right as beginning it, so
        a reader cannot finish a colleague's upload and a workspace member cannot commit the
        catalog-wide upload that a platform admin began in that workspace.
        """
        meta = self.store.read_upload_meta(upload_id) if re.fullmatch(r"upl_[0-9a-f]{16}", upload_id) else None
        if meta is None or meta["workspace_id"] != actor.workspace_id:
            raise NotFound(f"Upload '{upload_id}' not found (it may have expired).")
        if write:
            actor.require("platform.models" if meta["scope_key"] == GLOBAL_SCOPE else "models.import")
        return meta

    def get_upload(self, actor: Principal, upload_id: str) -> dict:
        actor.require("models.read")
        return self._upload_meta(actor, upload_id, write=False)

    async def put_upload_file(self, actor: Principal, upload_id: str, path: str,
                              chunks: AsyncIterator[bytes]) -> dict:
        self._streaming[upload_id] += 1  # the expiry sweep leaves it alone while a file streams in
        try:
            size, digest, rel = await self._receive_file(actor, upload_id, path, chunks)
            meta = self._upload_meta(actor, upload_id)
            meta["received"][rel] = {"size": size, "sha256": digest}
            self.store.write_upload_meta(upload_id, meta)
            return meta
        finally:
            self._streaming[upload_id] -= 1
            if not self._streaming[upload_id]:
                del self._streaming[upload_id]

    async def _receive_file(self, actor: Principal, upload_id: str, path: str,
                            chunks: AsyncIterator[bytes]) -> tuple[int, str, str]:
        meta = self._upload_meta(actor, upload_id)
        rel = safe_relpath(path)
        if rel not in meta["files"]:
            raise NotFound(f"'{rel}' is not one of the files declared for this upload.", field="path")
        expected = meta["files"][rel]
        dest = self.store.upload_file_path(upload_id, rel)
        part = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            # Below the upload's own files/ directory only: an upload aborted meanwhile stays gone.
            files_root = self.store.upload_file_path(upload_id, ".")
            for d in reversed([p for p in dest.parents if p != files_root and files_root in p.parents]):
                d.mkdir(exist_ok=True)
            with open(part, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > expected:
                        raise PayloadTooLarge(f"'{rel}' is larger than the {expected} bytes declared.")
                    # Hashing and writing a chunk (up to a megabyte) block: on a worker thread.
                    await run_blocking(_absorb, digest, fh, chunk)
            if size != expected:
                raise InvalidInput(f"'{rel}' has {size} bytes but {expected} were declared; upload it again.",
                                   field="size")
            os.replace(part, dest)
        except FileNotFoundError as exc:  # the upload was aborted while this file streamed in
            raise NotFound(f"Upload '{upload_id}' not found (it may have expired).") from exc
        finally:
            part.unlink(missing_ok=True)
        return size, digest.hexdigest(), rel

    def abort_upload(self, actor: Principal, upload_id: str) -> None:
        self._upload_meta(actor, upload_id)
        self.store.discard_upload(upload_id)

    def commit_upload(self, actor: Principal, upload_id: str) -> CatalogModel:
        """Scan and register: either the whole model appears, or nothing does."""
        meta = self._upload_meta(actor, upload_id)
        req = UploadCreate.model_validate(meta["request"])
        missing = sorted(set(meta["files"]) - set(meta["received"]))
        if missing:
            raise Conflict(f"Files not uploaded yet: {', '.join(missing)}.")
        files = {rel: self.store.upload_file_path(upload_id, rel) for rel in meta["files"]}
        try:
            report = scan_model(files, req.format)
            if report.structural_errors:
                raise Unprocessable(
                    "The files are not a valid " + req.format + " model: "
                    + "; ".join(f"{f.file}: {f.message}" for f in report.structural_errors[:5]),
                    details={"findings": [f.to_dict() for f in report.structural_errors[:20]]},
                )
            metadata = self._read_metadata(req.format, files)
            task = req.task or _infer_task(req.format, metadata)
        except BaseException:
            self.store.discard_upload(upload_id)
            raise
        model_id = new_id("mdl")
        with self.db.session() as s:
            self._check_name_free(s, actor, meta["scope_key"], req.name, req.version)
            row = CatalogModel(
                id=model_id, name=req.name, version=req.version, scope_key=meta["scope_key"],
                owner_workspace_id=meta["scope_key"] or None,
                publisher=req.publisher or actor.workspace_name, license_spdx=req.license,
                publisher_id=self._publisher_id(s, meta["scope_key"], req.publisher),
                license_url=req.license_url, task=task, format=req.format, card=req.card,
                model_metadata=metadata, curated=False, downloadable=req.downloadable,
                finetunable=req.finetunable, deployment_types=list(req.deployment_types), source="imported",
                created_by=actor.user_id,
                files=[ModelFile(path=rel, size=report.files[rel]["size"], sha256=report.files[rel]["sha256"],
                                 location=rel) for rel in sorted(files)],
            )
            row.size_bytes = sum(f.size for f in row.files)
            self._apply_report(row, report)
            self.policies.enforce(actor, "import_model", ModelFacts.of(
                row, "platform" if meta["scope_key"] == GLOBAL_SCOPE else actor.workspace_name))
            s.add(row)
            try:
                s.flush()
            except SAIntegrityError as exc:
                raise Conflict(f"Model '{req.name}' version '{req.version}' already exists.", field="name") from exc
            self.store.promote(upload_id, model_id)
            try:
                audit.record(s, actor, "model.import", resource_type="model", resource_id=model_id,
                             workspace_id=row.owner_workspace_id or actor.workspace_id,
                             detail={"scan": row.scan_status, "scope": req.scope})
                s.flush()
            except BaseException:
                self.store.remove_model(model_id)
                raise
        return row

    def expire_uploads(self) -> int:
        """Remove staged uploads past their expiry (not those with a file streaming in now)."""
        with self._uploads_lock:
            return self.store.expire_uploads(self.upload_ttl, keep=lambda upload_id: upload_id in self._streaming)


def _infer_task(fmt: str, metadata: dict) -> str:
    if fmt == "gguf":
        return "chat-completion"
    archs = " ".join(metadata.get("architectures") or [])
    if "CausalLM" in archs:
        return "chat-completion"
    if metadata.get("sentence_transformers") or "BertModel" in archs or "Bert" in archs:
        return "embeddings"
    raise InvalidInput("Could not tell the task from config.json: set task to chat-completion or embeddings.",
                       field="task")


def _encode_cursor(name: str, mid: str) -> str:
    return base64.urlsafe_b64encode(f"{name}\x00{mid}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        name, mid = raw.split("\x00", 1)
        return name, mid
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid; use next_cursor from the previous page.", field="cursor") from exc


def _absorb(digest: _Hash, fh: BinaryIO, chunk: bytes) -> None:
    """One received chunk into the running sha256 and the file (hashlib releases the GIL)."""
    digest.update(chunk)
    fh.write(chunk)
