"""Settings: one pydantic-settings class, built by `build_settings()` and passed in.

Nothing reads the environment at import time; tests build their own Settings with their own
home directory and never need monkeypatching.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".modelport"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore", frozen=False)

    environment: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=_default_home,
                       description="Data directory (database, model files, datastore, keys).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite at $MODELPORT_HOME/modelport.db."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_file: Path | None = Field(default=None, description="Also write JSON logs to this file.")

    # Catalog
    max_model_upload_bytes: int = 64 * 1024**3
    upload_ttl_seconds: int = 24 * 3600
    load_bundled_models: bool = True

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
    max_dedicated_instances_per_workspace: int = Field(default=8, ge=0)
    max_open_uploads_per_workspace: int = Field(default=64, ge=0)
    max_active_finetune_jobs_per_workspace: int = Field(default=16, ge=0, description="Queued and running jobs.")
    upload_sweep_seconds: float = Field(default=300.0, gt=0, description="How often expired uploads are removed.")
    scan_concurrency: int = Field(default=2, ge=1, description="Model scans (imports, rescans) run at once.")

    # API keys
    api_key_last_used_flush_seconds: float = 30.0

    # Inference: geographies group regions; each region has worker slots on this installation.
    geographies: dict[str, list[str]] = Field(
        default_factory=lambda: {"local": ["local"]},
        description='JSON, e.g. {"eu": ["eu-west", "eu-central"], "us": ["us-east"]}.',
    )
    region_slots: dict[str, int] = Field(
        default_factory=lambda: {"local": 8}, description="Worker processes each region may run (JSON)."
    )
    worker_threads: int | None = Field(default=None, description="Threads per worker; default: the CPU count.")
    llamacpp_parallel: int = Field(default=4, ge=1, le=256, description=(
        "Sequences one llama.cpp worker decodes together (continuous batching); each holds a KV "
        "cache of the whole context."))
    serverless_idle_seconds: float = Field(default=300.0, description="Stop an idle serverless pool after this.")
    queue_per_deployment: int = Field(default=16, description="Requests waiting per deployment before 429.")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, description="Largest inference request body.")
    drain_seconds: float = Field(default=10.0, description="On SIGTERM, time in-flight requests get to finish.")
    allow_unisolated_workers: bool = Field(
        default=False, description="Development machines only: where no sandbox can be built, run model workers and "
        "trainers without isolation instead of failing them. Refused in production."
    )
    create_default_deployment: bool = Field(
        default=True, description="On first start, a serverless deployment `chat` of the bundled chat model."
    )
    runtime_overrides: dict[str, str] = Field(
        default_factory=dict, description='Serve a model with another runtime, e.g. {"my-model": "echo"} (JSON).'
    )
    content_filter_default: Literal["on", "off"] = Field(
        default="on", description="Content filter of new deployments: on at medium (the default), or off."
    )
    screening_concurrency: int = Field(default=2, ge=1, description="Prompts one workspace screens at once.")
    screening_queue: int = Field(default=16, ge=0, description="Prompts of one workspace waiting for screening "
                                 "before 429.")
    blocklist_budget_ms: int = Field(default=200, ge=1, le=60_000, description="Time all of a deployment's "
                                     "blocklists get per text; past it the request is refused (503).")
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list, description="CIDRs of reverse proxies whose X-Forwarded-For/-Proto headers are "
        "believed (comma-separated); empty: forwarded headers are ignored.")

    # Datastore and keys (see modelport/datastore/settings.py for the master-key rules)
    max_dataset_bytes: int = Field(default=1024**3, description="Largest dataset upload (413 beyond).")

    # Fine-tuning
    finetune_concurrency: int = Field(default=1, ge=0, description="Fine-tuning jobs run at once (0: none).")
    finetune_threads: int | None = Field(default=None, ge=1, description="Torch threads per trainer; default: "
                                         "half the CPUs, so inference workers keep the rest.")
    finetune_poll_seconds: float = Field(default=1.0, gt=0, description="How often the job queue is polled.")
    platform_master_key: SecretStr | None = Field(default=None, description="base64 of 32 bytes (outer layer).")
    workspace_master_key: SecretStr | None = Field(default=None, description="base64 of 32 bytes (inner layer).")
    datastore_chunk_size: int = 1024 * 1024
    datastore_key_cache_ttl: float = Field(default=60.0, description="Seconds an unwrapped data key is cached.")
    kms_aws_region: str | None = Field(default=None, description="Turns the AWS KMS key provider on.")
    kms_aws_endpoint_url: str | None = None

    worker_uid_base: int = Field(default=61000, description="As root, workers and trainers run under uids from "
                                 "base to base+999, from a pool shared by every server on the machine.")

    @field_validator("geographies", "region_slots", "runtime_overrides", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

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
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[override]
        # Only what build_settings() passes in: the environment is read there, explicitly.
        return (init_settings,)

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
        if self.environment == "production" and self.database_url is None:
            # Production must say where its metadata lives; the SQLite default is for one machine.
            raise ValueError("MODELPORT_DATABASE_URL must be set when MODELPORT_ENVIRONMENT=production")
        if self.environment == "production" and self.allow_unisolated_workers:
            raise ValueError("MODELPORT_ALLOW_UNISOLATED_WORKERS=true is refused when MODELPORT_ENVIRONMENT="
                             "production: model workers and trainers always run isolated there")
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
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        key = f"MODELPORT_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update(overrides)
    return Settings(**values)


def datastore_environ(settings: Settings) -> dict[str, str]:
    """The datastore's configuration as the variables its builder reads."""
    env = {
        "MODELPORT_ENVIRONMENT": settings.environment,
        "MODELPORT_DATASTORE_CHUNK_SIZE": str(settings.datastore_chunk_size),
        "MODELPORT_DATASTORE_KEY_CACHE_TTL": str(settings.datastore_key_cache_ttl),
    }
    if settings.platform_master_key is not None:
        env["MODELPORT_PLATFORM_MASTER_KEY"] = settings.platform_master_key.get_secret_value()
    if settings.workspace_master_key is not None:
        env["MODELPORT_WORKSPACE_MASTER_KEY"] = settings.workspace_master_key.get_secret_value()
    if settings.kms_aws_region:
        env["MODELPORT_KMS_AWS_REGION"] = settings.kms_aws_region
    if settings.kms_aws_endpoint_url:
        env["MODELPORT_KMS_AWS_ENDPOINT_URL"] = settings.kms_aws_endpoint_url
    return env
