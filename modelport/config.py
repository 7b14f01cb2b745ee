"""Settings: one pydantic-settings class, built by `build_settings()` and passed in.

Nothing reads the environment at import time; tests build their own Settings with their own
home directory and never need monkeypatching. `build_settings(environ)` hands the mapping to
pydantic-settings' own environment source (`MappingSource`: prefix `MODELPORT_`, case-insensitive
names, JSON for structured values), so there is one reader of configuration. Every field's
description is the README's configuration table (tools/config_table.py writes it; a test fails
when the two drift).
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MODELPORT_"
# The mapping build_settings() reads (a context variable: concurrent builds never see each other's).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("modelport_environ", default=None)


class MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over the mapping given to build_settings()."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in (_ENVIRON.get() or {}).items()}


def _readme(default: str) -> dict[str, Any]:
    """How the README's table shows a default that is not a plain value."""
    return {"readme_default": default}


def _default_home() -> Path:
    return Path.home() / ".modelport"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "modelport"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=False)

    environment: Literal["development", "production"] = Field(
        default="development", description="`production` refuses embedded defaults: it needs "
        "MODELPORT_DATABASE_URL and both master keys, and refuses MODELPORT_ALLOW_UNISOLATED_WORKERS.")
    home: Path = Field(default_factory=_default_home, json_schema_extra=_readme("`~/.modelport`"),
                       description="Data directory (database, model files, datastore, keys).")
    database_url: str | None = Field(
        default=None, json_schema_extra=_readme("SQLite in `MODELPORT_HOME`"),
        description="SQLAlchemy URL, e.g. `postgresql://user@host/db` (required in production); default SQLite at "
        "$MODELPORT_HOME/modelport.db."
    )
    host: str = Field(default="127.0.0.1", description="Address the server listens on (plain HTTP: keep it on "
                      "loopback behind a TLS proxy).")
    port: int = Field(default=8000, description="Port the server listens on.")
    log_level: str = Field(default="INFO", description="Log level of the JSON logs on stderr.")
    log_file: Path | None = Field(default=None, description="Also write JSON logs to this file.")

    # Catalog
    max_model_upload_bytes: int = Field(default=64 * 1024**3, json_schema_extra=_readme("64 GiB"),
                                        description="Largest model import (413 beyond).")
    upload_ttl_seconds: int = Field(default=24 * 3600, description="An unfinished model upload expires after "
                                    "this (and what a crash left of a dataset upload).")
    load_bundled_models: bool = Field(default=True, description="Register the bundled models (SmolLM2, "
                                      "all-MiniLM-L6-v2) in the catalog on start.")

    # Limits: one caller must not stall the others (HTTP server, pools, per-workspace caps)
    max_control_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="Largest control-plane "
                                           "request body (413 beyond); uploads keep their own limits.")
    max_header_bytes: int = Field(default=32 * 1024, gt=0, description="Largest request line and headers (431).")
    header_timeout_seconds: float = Field(default=15.0, gt=0, description="Time a client has to send a request's "
                                          "headers (408).")
    body_timeout_seconds: float = Field(default=30.0, gt=0, description="Longest pause in a request body (408).")
    send_timeout_seconds: float = Field(default=30.0, gt=0, description="Longest a client may take in nothing of "
                                        "its answer before the connection is closed (a stream stops, its slot frees).")
    max_connections: int = Field(default=512, gt=0, description="Open client connections; more are refused (503).")
    max_dedicated_instances_per_workspace: int = Field(default=8, ge=0, description="Dedicated worker instances "
                                                       "one workspace may hold (409 beyond).")
    max_open_uploads_per_workspace: int = Field(default=64, ge=0, description="Model uploads begun and not yet "
                                                "committed or aborted, per workspace (409 beyond).")
    max_active_finetune_jobs_per_workspace: int = Field(default=16, ge=0, description="Queued and running "
                                                        "fine-tuning jobs per workspace (409 beyond).")
    upload_sweep_seconds: float = Field(default=300.0, gt=0, description="How often expired uploads are removed.")
    scan_concurrency: int = Field(default=2, ge=1, description="Model scans (imports, rescans) run at once.")

    # API keys
    api_key_last_used_flush_seconds: float = Field(default=30.0, description="How often API keys' last-used "
                                                   "times are written to the database.")

    # Metering: how often usage events are added into the hourly meters (and budgets reloaded)
    meter_aggregate_seconds: float = Field(default=30.0, gt=0, description="Usage events into the hourly meters, "
                                           "and budgets' spending reloaded from them, this often.")

    # Inference: geographies group regions; each region has worker slots on this installation.
    geographies: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=lambda: {"local": ["local"]},
        description='JSON, e.g. {"eu": ["eu-west", "eu-central"], "us": ["us-east"]}.',
    )
    region_slots: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"local": 8}, description="Worker processes each region may run (JSON)."
    )
    worker_threads: int | None = Field(default=None, json_schema_extra=_readme("CPU count"),
                                       description="Threads per worker; default: the CPU count.")
    llamacpp_parallel: int = Field(default=4, ge=1, le=256, description=(
        "Requests one llama.cpp worker decodes together (continuous batching) and so takes at once; each "
        "holds the KV cache of a whole context."))
    serverless_idle_seconds: float = Field(default=300.0, description="Stop an idle serverless pool after this.")
    queue_per_deployment: int = Field(default=16, ge=0, description="Requests waiting per deployment before 429.")
    pool_requests_per_workspace: int = Field(default=128, ge=1, description="Requests one workspace may have "
                                             "in one pool at once, running and waiting, before 429.")
    pool_workspace_share: float = Field(default=0.75, gt=0, le=1, description="Most of a shared serverless "
                                        "pool's slots one workspace holds at once (at least one): the rest stays "
                                        "free for other workspaces' next requests.")
    pool_max_instances: int = Field(default=4, ge=1, description="Most instances a serverless pool grows to "
                                    "(within its geography's region slots, which all pools share).")
    pool_scale_up_queue: int = Field(default=4, ge=1, description="Requests waiting in a serverless pool's queue "
                                     "that make it start one more instance.")
    pool_scale_up_first_token_seconds: float = Field(default=2.0, gt=0, description="Median recent first token "
                                                     "(queue included) that makes a busy serverless pool grow.")
    pool_scale_down_seconds: float = Field(default=30.0, gt=0, description="A serverless pool retires one instance "
                                           "once the others carried its load this long (streams run to their end).")
    pool_scale_interval_seconds: float = Field(default=0.5, gt=0, description="How often pool sizes are reviewed.")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, description="Largest inference request body (413 beyond).")
    drain_seconds: float = Field(default=10.0, description="On SIGTERM, time in-flight requests get to finish.")
    allow_unisolated_workers: bool = Field(
        default=False, description="Development machines only: where no sandbox can be built, run model workers and "
        "trainers without isolation instead of failing them. Refused in production."
    )
    create_default_deployment: bool = Field(
        default=True, description="On first start, a serverless deployment `chat` of the bundled chat model."
    )
    runtime_overrides: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='Serve a model with another runtime, e.g. {"my-model": "echo"} (JSON).'
    )
    worker_slots: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, description='Requests one worker of a runtime takes at once, by runtime name or '
        'override, e.g. {"transformers": 2} (JSON); default: transformers 1 (32 for embeddings), echo 64, '
        'others 1; llama.cpp workers take MODELPORT_LLAMACPP_PARALLEL.'
    )
    content_filter_default: Literal["on", "off"] = Field(
        default="on", description="Content filter of new deployments: on at medium (the default), or off."
    )
    screening_concurrency: int = Field(default=2, ge=1, description="Prompts one workspace screens at once.")
    screening_queue: int = Field(default=16, ge=0, description="Prompts of one workspace waiting for screening "
                                 "before 429.")
    screening_cache_entries: int = Field(default=8192, ge=0, le=1_000_000, description="Analyses of texts "
                                         "already screened kept per safety backend (by keyed hash, never the "
                                         "text); 0 turns the cache off.")
    screening_cascade: bool = Field(default=True, description="Screen each new text first with a cheap n-gram "
                                    "model and send only texts it is not sure are safe to the MiniLM classifier "
                                    "(the minilm backend; calibrated to lose about 1% of what MiniLM alone "
                                    "catches at medium); false: MiniLM screens every text.")
    cache_dir: Path = Field(default_factory=_default_cache_dir, json_schema_extra=_readme("`~/.cache/modelport`"),
                            description="Files derived from shipped models, kept between processes and servers: the "
                            "safety classifier's int8 ONNX graph (`safety/`). Model weights only, never a screened "
                            "text.")
    blocklist_budget_ms: int = Field(default=200, ge=1, le=60_000, description="Time all of a deployment's "
                                     "blocklists get per text; past it the request is refused (503).")
    trusted_proxies: Annotated[list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode] = Field(
        default_factory=list, description="CIDRs of reverse proxies whose X-Forwarded-For/-Proto headers are "
        "believed (comma-separated); empty: forwarded headers are ignored.")

    # Quotas: per-deployment rate limits (platform defaults = the caps until an admin changes a deployment's)
    serverless_requests_per_minute: int = Field(default=1000, ge=1, le=10_000_000, description="Default cap of "
                                                "a serverless deployment's requests per minute (Azure's default).")
    serverless_tokens_per_minute: int = Field(default=200_000, ge=1, le=10_000_000_000, description="Default cap "
                                              "of a serverless deployment's tokens per minute (Azure's default).")
    dedicated_requests_per_minute: int = Field(default=1000, ge=1, le=10_000_000,
                                               description="Default cap of a dedicated deployment's requests per "
                                               "minute.")
    dedicated_tokens_per_minute: int = Field(default=200_000, ge=1, le=10_000_000_000,
                                             description="Default cap of a dedicated deployment's tokens per minute.")
    redis_url: str | None = Field(default=None, description="redis://host:port/db (or rediss://, redis+unix://): "
                                  "rate-limit counts shared by every server using it; default: this process's memory.")
    # Web portal (modelport/portal): server-side sessions
    portal_session_idle_minutes: int = Field(default=30, ge=1, description="A portal session unused this long "
                                             "ends (sign in again).")
    portal_session_absolute_hours: int = Field(default=12, ge=1, description="A portal session ends this long after "
                                               "sign-in, used or not.")
    portal_signin_link_minutes: int = Field(default=10, ge=1, le=1440, description="Validity of the one-time sign-in "
                                            "link that `modelport serve` prints on its terminal for the local admin.")

    # Datastore and keys (see modelport/datastore/settings.py for the master-key rules)
    max_dataset_bytes: int = Field(default=1024**3, json_schema_extra=_readme("1 GiB"),
                                   description="Largest dataset upload (413 beyond).")

    # Fine-tuning
    finetune_concurrency: int = Field(default=1, ge=0, description="Fine-tuning jobs run at once (0: none).")
    finetune_threads: int | None = Field(default=None, ge=1, json_schema_extra=_readme("half the CPUs"),
                                         description="Torch threads per trainer; default: "
                                         "half the CPUs, so inference workers keep the rest.")
    finetune_poll_seconds: float = Field(default=1.0, gt=0, description="How often the job queue is polled.")
    platform_master_key: SecretStr | None = Field(
        default=None, json_schema_extra=_readme("a generated file in development"),
        description="base64 of 32 bytes: the platform keystore's master key (outer layer); in development "
        "$MODELPORT_HOME/keys/platform-master.key is generated (0600).")
    workspace_master_key: SecretStr | None = Field(
        default=None, json_schema_extra=_readme("a generated file in development"),
        description="base64 of 32 bytes: the workspace keystore's master key (inner layer); in development "
        "$MODELPORT_HOME/keys/workspace-master.key is generated (0600).")
    datastore_chunk_size: int = Field(default=1024 * 1024, description="Bytes per encrypted chunk of a "
                                      "datastore object.")
    datastore_key_cache_ttl: float = Field(default=60.0, description="Seconds an unwrapped data key is "
                                           "cached: a disabled customer-managed key takes effect within this.")
    kms_aws_region: str | None = Field(default=None, description="Turns the AWS KMS key provider on.")
    kms_aws_endpoint_url: str | None = Field(default=None, description="AWS KMS endpoint (a KMS-compatible "
                                             "service or a test stand-in); default: the region's.")

    worker_uid_base: int = Field(default=61000, description="As root, workers and trainers run under uids from "
                                 "base to base+999, from a pool shared by every server on the machine.")

    @field_validator("geographies", "region_slots", "runtime_overrides", "worker_slots", mode="before")
    @classmethod
    def _json(cls, value: object, info: Any) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_PREFIX}{info.field_name.upper()} must be JSON ({exc.msg} at character "
                             f"{exc.pos})") from None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError("MODELPORT_REDIS_URL takes a redis://host:port/db, rediss:// or redis+unix:// URL")
        return value.strip()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _cidrs(cls, value: object) -> object:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        try:  # strict: "10.0.0.1/8" is a typo for a host or a network, not something to guess
            return [ipaddress.ip_network(v, strict=True) if isinstance(v, str) else v for v in items]
        except ValueError as exc:
            raise ValueError(f"MODELPORT_TRUSTED_PROXIES takes comma-separated CIDRs such as 10.0.0.0/8 "
                             f"({exc})") from exc

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   *args: PydanticBaseSettingsSource,
                                   **kwargs: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit overrides, then the mapping build_settings() was given; never os.environ directly.
        return (init_settings, MappingSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, values: object) -> object:
        if isinstance(values, dict):
            for key, replacement in REMOVED.items():
                if key.removeprefix("MODELPORT_").lower() in values:
                    raise ValueError(f"{key} was removed: {replacement}")
        return values

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.home = self.home.expanduser()
        self.cache_dir = self.cache_dir.expanduser()
        if self.environment == "production" and self.database_url is None:
            # Production must say where its metadata lives; the SQLite default is for one machine.
            raise ValueError("MODELPORT_DATABASE_URL must be set when MODELPORT_ENVIRONMENT=production")
        if self.environment == "production" and self.allow_unisolated_workers:
            raise ValueError("MODELPORT_ALLOW_UNISOLATED_WORKERS=true is refused when MODELPORT_ENVIRONMENT="
                             "production: model workers and trainers always run isolated there")
        bad = [k for k, v in self.worker_slots.items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"MODELPORT_WORKER_SLOTS takes counts of at least 1, not for {bad}")
        if "llamacpp" in self.worker_slots:
            raise ValueError("MODELPORT_WORKER_SLOTS does not size llama.cpp workers: MODELPORT_LLAMACPP_PARALLEL "
                             "sets both the sequences one worker batches and the requests it takes")
        for geo, regions in self.geographies.items():
            if not regions:
                raise ValueError(f"geography {geo!r} has no regions")
            unknown = [r for r in regions if r not in self.region_slots]
            if unknown:
                raise ValueError(f"geography {geo!r} names regions without worker slots: {unknown}")
        return self

    def regions_of(self, geography: str) -> list[str]:
        return list(self.geographies.get(geography, []))

    @property
    def run_dir(self) -> Path:
        """Worker sockets and sandbox directories, where only this server's user can create them:
        /run/modelport/<hash of the home> as root, $MODELPORT_HOME/run otherwise (mode 0700)."""
        from modelport.workers.sandbox import run_dir_for

        return run_dir_for(self.home)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelport.db'}"

    @property
    def model_files_dir(self) -> Path:
        """Catalog model files, stored as they are (plaintext public artifacts, not blobs)."""
        return self.home / "model-files"

    @property
    def admin_key_file(self) -> Path:
        return self.home / "admin.key"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


# Settings that were removed, and what replaced them: setting one is a start-up error, not a no-op.
REMOVED = {
    "MODELPORT_REQUIRE_EGRESS_ISOLATION": "model workers and trainers are now always isolated (network, files, "
    "processes) and fail when they cannot be; MODELPORT_ALLOW_UNISOLATED_WORKERS=true is the escape hatch for "
    "development machines",
}


def build_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from `environ` (default: os.environ) plus explicit overrides."""
    env = dict(os.environ if environ is None else environ)
    for key, replacement in REMOVED.items():
        if key in env:
            raise ValueError(f"{key} was removed: {replacement}; unset it")
    token = _ENVIRON.set(env)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # (pydantic-settings types init kwargs loosely)
    finally:
        _ENVIRON.reset(token)
