"""Build a Datastore from the installation's settings: master keys, providers, tuning.

Master keys (32 bytes each, base64 in the settings or in a file):
  MODELPORT_PLATFORM_MASTER_KEY    protects the platform keystore (outer layer)
  MODELPORT_WORKSPACE_MASTER_KEY   protects the workspace keystore (inner layer)
Without them, `$home/keys/{platform,workspace}-master.key` are used, generated (0600) on first
use in development. In production (MODELPORT_ENVIRONMENT=production) nothing is generated: a
missing key is a configuration error, and a key file readable by others is refused.

Tuning: Settings.datastore_chunk_size, datastore_key_cache_ttl. Extra key providers come from the
`modelport.key_providers` entry points, each built from the same Settings (AWS KMS when
MODELPORT_KMS_AWS_REGION is set).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from modelport.config import Settings
from modelport.datastore.store import Datastore
from modelport.errors import InvalidInput
from modelport.kms.base import KeyProvider, load_provider_factories
from modelport.kms.local import MASTER_KEY_SIZE

PLATFORM_ENV = "MODELPORT_PLATFORM_MASTER_KEY"
WORKSPACE_ENV = "MODELPORT_WORKSPACE_MASTER_KEY"


def load_master_key(env_value: str | None, path: Path, *, name: str, generate: bool) -> bytes:
    """The master key from the environment, else from `path` (created when `generate`)."""
    if env_value:
        return _decode(env_value, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if not generate:
            raise InvalidInput(f"{name} is not set and {path.name} does not exist", field=name) from None
        return _generate(path, name)
    with os.fdopen(fd, "rb") as fh:
        if not generate and os.fstat(fh.fileno()).st_mode & 0o077:
            raise InvalidInput(f"{path.name} must be readable by its owner only (chmod 600)", field=name)
        return _decode(fh.read().decode("ascii", "replace"), name)


def _decode(value: str, name: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != MASTER_KEY_SIZE:
        raise InvalidInput(f"{name} must be the base64 encoding of 32 random bytes", field=name)
    return key


def _generate(path: Path, name: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = os.urandom(MASTER_KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process generated it first: use theirs
        return load_master_key(None, path, name=name, generate=True)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(key) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


def from_settings(settings: Settings, **overrides: Any) -> Datastore:
    """The datastore of an installation: `$MODELPORT_HOME/datastore`, keys as described above."""
    home = settings.home
    development = settings.environment != "production"
    keys_dir = home / "keys"
    platform = load_master_key(_secret(settings.platform_master_key), keys_dir / "platform-master.key",
                               name=PLATFORM_ENV, generate=development)
    workspace = load_master_key(_secret(settings.workspace_master_key), keys_dir / "workspace-master.key",
                                name=WORKSPACE_ENV, generate=development)
    providers: list[KeyProvider] = []
    for factory in load_provider_factories().values():
        provider = factory(settings)
        if provider is not None:
            providers.append(provider)
    options: dict[str, Any] = {
        "chunk_size": settings.datastore_chunk_size,
        "key_cache_ttl": settings.datastore_key_cache_ttl,
        "providers": providers,
    }
    options.update(overrides)
    return Datastore.create(home / "datastore", platform_master_key=platform, workspace_master_key=workspace, **options)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
