"""Settings for a home directory, built the way the server builds them (build_settings)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from modelport.config import Settings, build_settings


def settings_at(home: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings of an installation at `home`, plus `environ`. Production needs a database URL to
    build its settings at all; tests of the datastore alone get a SQLite one they never open."""
    env = {"MODELPORT_HOME": str(home), **(environ or {})}
    if env.get("MODELPORT_ENVIRONMENT") == "production":
        env.setdefault("MODELPORT_DATABASE_URL", f"sqlite:///{Path(home) / 'unused.db'}")
    return build_settings(env)
