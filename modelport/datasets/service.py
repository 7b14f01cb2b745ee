"""Datasets: upload (validated while it streams, encrypted twice), list, show, delete.

The bytes never touch disk in plaintext: the upload stream is validated line by line and
encrypted chunk by chunk straight into the datastore. A file that fails validation or the
size limit is rejected and nothing of it is kept (the datastore commits an object only when
its source ended cleanly). Deletion stops the fine-tuning jobs that read the dataset, then
crypto-shreds: the datastore destroys the data keys before the blob is removed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from modelport.audit import service as audit
from modelport.datasets.validation import Validator, validating
from modelport.datastore.store import Datastore
from modelport.db.base import new_id
from modelport.db.engine import Database
from modelport.db.tables import Dataset
from modelport.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from modelport.finetuning.cancel import cancel_jobs_reading
from modelport.identity.activity import WorkspaceActivity
from modelport.identity.principal import Principal
from modelport.identity.service import check_name

FORMATS = ("chat", "prompt_completion")


def limited(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The dataset is larger than the {limit} bytes this server accepts "
                                  "(MODELPORT_MAX_DATASET_BYTES); nothing was stored.")
        yield chunk


class DatasetService:
    def __init__(self, db: Database, datastore: Datastore, max_bytes: int,
                 activity: WorkspaceActivity | None = None) -> None:
        self.db = db
        self.datastore = datastore
        self.max_bytes = max_bytes
        # Stops an upload at its next chunk when its workspace is being deleted.
        self.activity = activity or WorkspaceActivity()

    def check_upload(self, actor: Principal, name: str, fmt: str | None, declared_size: int | None) -> None:
        """Everything that can be refused before a byte of the body is read."""
        actor.require("datasets.write")
        check_name(name, "name")
        if fmt is not None and fmt not in FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(FORMATS)} (or omitted to detect it).",
                               field="format")
        if declared_size is not None and declared_size > self.max_bytes:
            raise PayloadTooLarge(f"The dataset is larger than the {self.max_bytes} bytes this server accepts "
                                  "(MODELPORT_MAX_DATASET_BYTES).")
        with self.db.session() as s:
            if s.scalar(select(Dataset.id).where(Dataset.workspace_id == actor.workspace_id, Dataset.name == name)):
                raise Conflict(f"A dataset named '{name}' already exists in this workspace.", field="name")

    def upload(self, actor: Principal, name: str, fmt: str | None, chunks: Iterator[bytes]) -> Dataset:
        self.check_upload(actor, name, fmt, None)
        validator = Validator(format=fmt)  # type: ignore[arg-type]  # check_upload checked the format
        ds_id = new_id("ds")
        source = self.activity.guard(actor.workspace_id, limited(chunks, self.max_bytes))
        info = self.datastore.put(actor.workspace_id, ds_id, validating(source, validator))
        try:
            with self.db.session() as s:
                row = Dataset(id=ds_id, workspace_id=actor.workspace_id, name=name, format=validator.format or "chat",
                              size=info.size, sha256=info.sha256, rows=validator.rows, created_by=actor.user_id)
                s.add(row)
                try:
                    s.flush()
                except SAIntegrityError as exc:
                    raise Conflict(f"A dataset named '{name}' already exists in this workspace.",
                                   field="name") from exc
                audit.record(s, actor, "dataset.create", resource_type="dataset", resource_id=ds_id,
                             detail={"size": info.size, "rows": validator.rows})
                return row
        except BaseException:
            self.datastore.delete(actor.workspace_id, ds_id)  # no object without its row
            raise

    def collect_stale_uploads(self, older_than_seconds: float) -> int:
        """Remove what interrupted uploads left in the datastore (a crash mid-upload leaves a temp
        file or a blob no object points to) once older than `older_than_seconds`; how many."""
        report = self.datastore.collect_garbage(min_age_s=older_than_seconds)
        return report.blobs_removed + report.temp_files_removed

    def list(self, actor: Principal) -> Sequence[Dataset]:
        actor.require("datasets.read")
        with self.db.session() as s:
            return s.scalars(select(Dataset).where(Dataset.workspace_id == actor.workspace_id)
                             .order_by(Dataset.name)).all()

    def get(self, actor: Principal, ref: str) -> Dataset:
        actor.require("datasets.read")
        with self.db.session() as s:
            row = s.scalar(select(Dataset).where(Dataset.workspace_id == actor.workspace_id,
                                                 (Dataset.id == ref) | (Dataset.name == ref)))
            if row is None:
                raise NotFound(f"Dataset '{ref}' not found.")
            return row

    def delete(self, actor: Principal, ref: str) -> None:
        actor.require("datasets.write")
        row = self.get(actor, ref)
        # The jobs that read it stop first (queued: cancelled; running: the trainer is killed and
        # no model is registered), then the keys go (crypto-shredding), then the row: a failure in
        # between leaves a row whose data is already unreadable, and deleting again finishes.
        with self.db.session() as s:
            cancel_jobs_reading(s, actor, actor.workspace_id, row.id)
        try:
            self.datastore.delete(actor.workspace_id, row.id)
        except NotFound:
            pass  # shredded by an earlier attempt that failed before removing the row
        with self.db.session() as s:
            current = s.get(Dataset, row.id)
            if current is not None:
                s.delete(current)
            audit.record(s, actor, "dataset.delete", resource_type="dataset", resource_id=row.id)
