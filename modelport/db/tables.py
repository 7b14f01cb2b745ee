"""Persistence models. Wire schemas live next to the routes; these are the tables.

Nothing a user sends to a model (prompt, output, training text) has a column here, and no
table holds a plaintext key: API keys are stored as a lookup id plus a SHA-256 digest.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from modelport.db.base import Base, UTCDateTime, utcnow


class DecimalText(TypeDecorator[Decimal]):
    """An exact decimal (prices, budgets) stored as its text on every backend: SQLite has no
    decimal type, and a float would round the figures that charges are computed from."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError("DecimalText takes Decimal values only")
        return format(value, "f")

    def process_result_value(self, value: str | None, dialect: object) -> Decimal | None:
        return None if value is None else Decimal(value)


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # active | deleting: a deletion began and has not finished (its keys are refused; a retry or
    # the next start finishes it, modelport/identity/offboarding.py).
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("workspace_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # key_<lookup id>, also in the secret
    name: Mapped[str] = mapped_column(String(64), default="")
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the whole secret, hex
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Who made the key, and whether it carries platform-admin power: only a key a platform admin
    # made for itself with such a key does (a key never carries more than its maker's power).
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class CatalogModel(Base):
    """A model in the catalog: catalog-wide (owner_workspace_id NULL) or private to a workspace.

    `scope_key` is the owner workspace id, or "" for catalog-wide models, so that one unique
    constraint covers both kinds on every backend (NULLs never collide in SQL).
    """

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("scope_key", "name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(64))
    scope_key: Mapped[str] = mapped_column(String(40), index=True)
    owner_workspace_id: Mapped[str | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=True
    )
    # The publisher as shown; catalog-wide models also reference its record (`publisher_id`),
    # a workspace's own imports and fine-tunes have none (nothing of theirs is sold).
    publisher: Mapped[str] = mapped_column(String(100))
    publisher_id: Mapped[str | None] = mapped_column(
        ForeignKey("publishers.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    license_spdx: Mapped[str] = mapped_column(String(64))
    license_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    license_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    task: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(16))
    card: Mapped[str] = mapped_column(Text, default="")
    model_metadata: Mapped[dict] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    scan_status: Mapped[str] = mapped_column(String(16))  # passed | failed
    scan_report: Mapped[dict] = mapped_column(JSON, default=dict)
    scanned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    curated: Mapped[bool] = mapped_column(Boolean, default=False)
    downloadable: Mapped[bool] = mapped_column(Boolean, default=False)
    finetunable: Mapped[bool] = mapped_column(Boolean, default=False)
    deployment_types: Mapped[list] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(16))  # bundled | imported | finetuned
    deprecated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    files: Mapped[list[ModelFile]] = relationship(
        back_populates="model", cascade="all, delete-orphan", lazy="selectin", order_by="ModelFile.path"
    )


class ModelFile(Base):
    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("model_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(300))  # relative name inside the model
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(Text)  # absolute path (bundled) or blob-relative path (imported)

    model: Mapped[CatalogModel] = relationship(back_populates="files")


class AuditEvent(Base):
    """Who did what to which resource, when, and how it ended. Never a request body."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_ws_at", "workspace_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor_key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    workspace_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))  # success | denied | failed
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Deployment(Base):
    """A named endpoint for one model in one workspace (dedicated or serverless).

    Keys are stored as lookup id + SHA-256 digest, like API keys. `network` holds
    {"public_access": bool, "allowed_ranges": [CIDR, ...]}.
    """

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # dedicated | serverless
    instances: Mapped[int] = mapped_column(Integer, default=1)
    geography: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # creating | succeeded | suspended | failed | deleting
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why it is suspended, {reason: message} (deployments/suspension.py); empty when not suspended.
    suspensions: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")
    egress: Mapped[str] = mapped_column(String(16), default="unknown")  # isolated | not isolated | unknown
    # What its workers' sandboxes isolate: {"network", "files", "processes"} (bools); null before one ran.
    isolation: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    network: Mapped[dict] = mapped_column(JSON, default=dict)
    content_filter: Mapped[dict] = mapped_column(JSON, default=dict)
    # {"requests_per_minute", "tokens_per_minute"} (int or null each): the owner's own limits
    # (`rate_limits`, at most the caps) and the platform admin's caps; null: the platform default.
    rate_limits: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    rate_limit_caps: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    primary_lookup: Mapped[str] = mapped_column(String(16), unique=True)
    primary_digest: Mapped[str] = mapped_column(String(64))
    secondary_lookup: Mapped[str] = mapped_column(String(16), unique=True)
    secondary_digest: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class UsageEvent(Base):
    """One inference request that reached a worker, for metering and billing. Counts, ids and
    the price in force when it ran; never anything of the content (P1, P3).

    `aggregated` is set once the event was added into the hourly meters (`UsageMeter`): by the
    metering writer as it stores the event, or by an aggregation pass."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_dep_at", "deployment_id", "at"),
        # what an aggregation pass has left (the metering writer stores events aggregated)
        Index("ix_usage_events_unaggregated", "id", sqlite_where=text("aggregated = 0"),
              postgresql_where=text("aggregated = false")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    workspace_id: Mapped[str] = mapped_column(String(40))
    deployment_id: Mapped[str] = mapped_column(String(40))
    model_id: Mapped[str] = mapped_column(String(40))
    offer_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    subscription_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    api: Mapped[str] = mapped_column(String(32))  # chat.completions | completions | embeddings | content_filter.judge
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # success | filtered | error | cancelled
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    input_price: Mapped[Decimal | None] = mapped_column(DecimalText, nullable=True)  # per 1,000 tokens
    output_price: Mapped[Decimal | None] = mapped_column(DecimalText, nullable=True)
    aggregated: Mapped[bool] = mapped_column(Boolean, default=False)


class UsageJournalMark(Base):
    """How far a usage journal (metering/journal.py: events appended before an answer's last byte,
    moved here in groups) is in `usage_events`: its byte position, written in the same
    transaction as the events it covers. A journal replayed after a crash adds what follows it."""

    __tablename__ = "usage_journal_marks"

    journal: Mapped[str] = mapped_column(String(64), primary_key=True)  # the file's name
    position: Mapped[int] = mapped_column(BigInteger)


class UsageMeter(Base):
    """Hourly meters, `input_tokens` and `output_tokens`, per workspace, deployment, model, offer,
    subscription and unit price (Azure's input/output token meters). Ids are "" where none."""

    __tablename__ = "usage_meters"
    __table_args__ = (
        UniqueConstraint("hour", "workspace_id", "deployment_id", "model_id", "offer_id", "subscription_id", "meter",
                         "currency", "unit_price", name="uq_usage_meters_key"),
        Index("ix_usage_meters_ws_hour", "workspace_id", "hour"),
        Index("ix_usage_meters_offer_hour", "offer_id", "hour"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime)
    workspace_id: Mapped[str] = mapped_column(String(40))
    deployment_id: Mapped[str] = mapped_column(String(40))
    model_id: Mapped[str] = mapped_column(String(40))
    offer_id: Mapped[str] = mapped_column(String(40))
    subscription_id: Mapped[str] = mapped_column(String(40))
    meter: Mapped[str] = mapped_column(String(16))  # input_tokens | output_tokens
    currency: Mapped[str] = mapped_column(String(3))  # "" for models without an offer
    unit_price: Mapped[Decimal] = mapped_column(DecimalText)  # per 1,000 tokens; 0 without an offer
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)


class Dataset(Base):
    """A workspace's training data. The bytes live only in the encrypted datastore (object id =
    dataset id); this row holds what `show` prints: name, format, size, sha256, rows."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))  # chat | prompt_completion
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FinetuneJob(Base):
    """A fine-tuning job: durable queue entry, progress and outcome. Numbers and ids only: no
    training text, no weights (the adapter lives in the encrypted datastore)."""

    __tablename__ = "finetune_jobs"
    __table_args__ = (Index("ix_finetune_jobs_status", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    base_model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    dataset_id: Mapped[str] = mapped_column(String(40))
    validation_dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | cancelled
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[list] = mapped_column(JSON, default=list)  # [{"step", "train_loss", "validation_loss"}]
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    result_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    isolation: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the trainer's sandbox, as for deployments
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Blocklist(Base):
    """A workspace's custom blocklist (operator configuration: exact terms and regexes)."""

    __tablename__ = "blocklists"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    terms: Mapped[list] = mapped_column(JSON, default=list)
    patterns: Mapped[list] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ContentFilterCount(Base):
    """How many requests a deployment's filter flagged, per direction and category. Counts only."""

    __tablename__ = "content_filter_counts"
    __table_args__ = (UniqueConstraint("deployment_id", "direction", "category", "action"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(16))  # prompt | completion
    category: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))  # filtered | annotated
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class Publisher(Base):
    """An organisation that publishes catalog models and sells offers for them. Its users hold
    publisher API keys, which reach only the publisher's own offers, subscriptions and reports."""

    __tablename__ = "publishers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PublisherMember(Base):
    __tablename__ = "publisher_members"
    __table_args__ = (UniqueConstraint("publisher_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    publisher_id: Mapped[str] = mapped_column(ForeignKey("publishers.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PublisherApiKey(Base):
    """A publisher user's API key (`mpp_...`): no workspace powers at all. Stored like API keys."""

    __tablename__ = "publisher_api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # pkey_<lookup id>
    name: Mapped[str] = mapped_column(String(64), default="")
    digest: Mapped[str] = mapped_column(String(64))
    publisher_id: Mapped[str] = mapped_column(ForeignKey("publishers.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Offer(Base):
    """A catalog model's offer: prices per 1,000 input and output tokens in one currency, the
    deployment types it covers, whether subscribers must consent to share their contact. Its
    terms are versioned (`OfferTerms`). Retired offers take no new subscriptions."""

    __tablename__ = "offers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    publisher_id: Mapped[str] = mapped_column(ForeignKey("publishers.id", ondelete="RESTRICT"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    input_price: Mapped[Decimal] = mapped_column(DecimalText)  # per 1,000 tokens
    output_price: Mapped[Decimal] = mapped_column(DecimalText)
    contact_sharing_required: Mapped[bool] = mapped_column(Boolean, default=True)
    deployment_types: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | retired
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OfferTerms(Base):
    """One version of an offer's terms, identified by the sha256 of its text."""

    __tablename__ = "offer_terms"
    __table_args__ = (UniqueConstraint("offer_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Subscription(Base):
    """A workspace's subscription to an offer: the contact it shares, the terms it accepted, and
    its consent to share that contact with the publisher (time and user). One per workspace and
    offer; unsubscribing cancels it, subscribing again makes it active with new acceptance."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("workspace_id", "offer_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.id", ondelete="RESTRICT"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # active | cancelled
    terms_version: Mapped[str] = mapped_column(String(32))
    terms_sha256: Mapped[str] = mapped_column(String(64))
    contact_name: Mapped[str] = mapped_column(String(200))
    contact_email: Mapped[str] = mapped_column(String(254))
    contact_organization: Mapped[str] = mapped_column(String(200), default="")
    consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    consent_user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    accepted_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Budget(Base):
    """A workspace's monthly budget in one currency; `alerted` records the thresholds (80, 100)
    already reported for `alerted_month` (YYYY-MM), so each is audited once a month."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("workspace_id", "currency"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(DecimalText)
    alerted_month: Mapped[str] = mapped_column(String(7), default="")
    alerted: Mapped[list] = mapped_column(JSON, default=list)
    updated_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Policy(Base):
    """A governance policy: one Cedar `forbid` policy, platform-wide (`workspace_id` NULL, saved by a
    platform admin) or of one workspace (saved by its owners). `scope_key` is the workspace id or ""
    so that one unique constraint covers both scopes on every backend."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("scope_key", "policy_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_id: Mapped[str] = mapped_column(String(64))
    scope_key: Mapped[str] = mapped_column(String(40), index=True)
    workspace_id: Mapped[str | None] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=True)
    cedar: Mapped[str] = mapped_column(Text)
    audit: Mapped[bool] = mapped_column(Boolean, default=False)  # @audit: records violations, allows
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PolicyVersion(Base):
    """Version counters of the policies, kept by database triggers on `policies` (migration 0015)
    in the transaction of every insert, update and delete, whoever makes it (a save, a delete, a
    workspace's cascade): the row `scope_key = "*"` counts every change; each scope's row (its
    workspace id, "" for the platform) holds the count at its latest change. A server compares
    the "*" row with its snapshot's on each governed request, and reloads only the scopes whose
    row moved past it (modelport/policies/engine.py)."""

    __tablename__ = "policy_versions"

    scope_key: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class PortalSession(Base):
    """A signed-in browser of the web portal (modelport/portal/sessions.py). The row is keyed by
    the SHA-256 of the cookie's secret, so the database never holds a usable session id. A session
    made from an API key names that key: revoking the key ends the session."""

    __tablename__ = "portal_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie value
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    # The API key the session acts as (sign-in with a key or a sign-in link); null is left for a
    # later sign-in through an identity provider, which acts as the user's membership.
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True,
                                               index=True)
    method: Mapped[str] = mapped_column(String(16))  # api_key | link
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the absolute expiry


class PortalSigninLink(Base):
    """A one-time sign-in link for the local admin, printed by `modelport serve` on its terminal
    (never logged): keyed by the SHA-256 of its secret, deleted when used or expired."""

    __tablename__ = "portal_signin_links"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
