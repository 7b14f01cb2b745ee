"""Settings: one pydantic-settings class, built by `build_settings()` and passed in.

Nothing reads the environment at import time; tests build their own Settings with their own
home directory and never need monkeypatching.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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
    serverless_idle_seconds: float = Field(default=300.0, description="Stop an idle serverless pool after this.")
    queue_per_deployment: int = Field(default=16, description="Requests waiting per deployment before 429.")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, description="Largest inference request body.")
    drain_seconds: float = Field(default=10.0, description="On SIGTERM, time in-flight requests get to finish.")
    require_egress_isolation: bool = Field(
        default=False, description="Fail deployments whose workers cannot be put in their own network namespace."
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

    worker_uid_base: int = Field(default=61000, description="Workers run as uid base+slot when started as root.")

    @field_validator("geographies", "region_slots", "runtime_overrides", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[override]
        # Only what build_settings() passes in: the environment is read there, explicitly.
        return (init_settings,)

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.home = self.home.expanduser()
        if self.environment == "production" and self.database_url is None:
            # Production must say where its metadata lives; the SQLite default is for one machine.
            raise ValueError("MODELPORT_DATABASE_URL must be set when MODELPORT_ENVIRONMENT=production")
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
        """Worker sockets. Outside MODELPORT_HOME, which is hidden from workers entirely."""
        tag = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"modelport-{os.getuid()}-{tag}"

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


def build_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from `environ` (default: os.environ) plus explicit overrides."""
    env = dict(os.environ if environ is None else environ)
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
