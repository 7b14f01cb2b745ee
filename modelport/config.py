"""Settings: one pydantic-settings class, built by `build_settings()` and passed in.

Nothing reads the environment at import time; tests build their own Settings with their own
home directory and never need monkeypatching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".modelport"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore", frozen=False)

    environment: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=_default_home, description="Data directory (database, blobs, keys).")
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
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelport.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

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
