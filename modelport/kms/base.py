"""The key-provider interface, its value types, its errors and a registry.

A key provider holds key-encryption keys (KEKs) and never lets them out: callers hand it a data
key to wrap and get back a `WrappedKey`, which names the provider, the key and the key version
that made it (the shape of Vault transit's `vault:v3:...` ciphertexts). The datastore keeps the
wrapped data keys; the provider keeps the KEKs.

Every wrap takes a `context` (string to string), bound into the ciphertext as associated data
(AWS KMS calls it EncryptionContext): a wrapped key copied to another workspace or object
fails to unwrap.

Built-in providers: `LocalKeystore` (modelport.kms.local, the default and the reference) and
`AwsKmsProvider` (modelport.kms.aws). Providers other than the local keystore publish a
factory `(Settings) -> KeyProvider | None` in the `modelport.key_providers` entry-point group, as
`aws` does in modelport's own pyproject.toml (modelport/plugins.py).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from modelport import plugins
from modelport.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InternalError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)

KEY_REF_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,159}$")
ENTRY_POINT_GROUP = "modelport.key_providers"

if TYPE_CHECKING:
    from modelport.config import Settings


# ---------------------------------------------------------------------------------------- errors
class KeyNotFound(NotFound):
    code = "key_not_found"


class KeyDisabled(Conflict):
    """The key exists but is disabled: nothing wraps or unwraps under it until it is enabled."""

    code = "key_disabled"


class KeyDestroyed(NotFound):
    """The key was destroyed: everything wrapped under it is gone for good."""

    code = "key_destroyed"


class KeyVersionRetired(Conflict):
    """The ciphertext was made by a key version below the key's minimum decryption version."""

    code = "key_version_retired"


class KeyAccessDenied(Forbidden):
    code = "key_access_denied"


class UnwrapFailed(IntegrityError):
    """A wrapped key did not authenticate: tampered, or bound to another workspace/object."""

    code = "unwrap_failed"


class KeyProviderError(InternalError):
    """The provider refused a request for a reason we do not map; a bug or a misconfiguration."""

    code = "key_provider_error"


class KeyProviderUnavailable(ServiceUnavailable):
    code = "key_provider_unavailable"


class UnsupportedOperation(Conflict):
    code = "unsupported_key_operation"


# ----------------------------------------------------------------------------------- value types
class KeyState(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under one version of a provider's key.

    `key_version` is 0 where the provider does not expose versions (AWS KMS keeps its backing
    keys inside the ciphertext blob).
    """

    provider: str
    key_ref: str
    key_version: int
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyInfo:
    provider: str
    key_ref: str
    state: KeyState
    latest_version: int
    min_decryption_version: int
    versioned: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- interface
@runtime_checkable
class KeyProvider(Protocol):
    """Holds key-encryption keys; wraps and unwraps data keys under them.

    The six operations of the issue (wrap, unwrap, rotate, disable, enable, destroy) plus the
    three a versioned keyring needs (rewrap, describe, set_min_decryption_version) and
    create_key. A provider that cannot do one raises UnsupportedOperation.
    """

    name: str

    def create_key(self, key_ref: str | None = None, *, labels: Mapping[str, str] | None = None) -> str:
        """Create a key and return the reference to store (a name, an ARN)."""
        ...

    def describe(self, key_ref: str) -> KeyInfo: ...

    def wrap(self, key_ref: str, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Encrypt a data key under the key's newest version."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes: ...

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """Re-encrypt under the newest version; the data key never leaves the provider."""
        ...

    def rotate(self, key_ref: str) -> int:
        """Add a new key version; return its number (0 where versions are not exposed)."""
        ...

    def set_min_decryption_version(self, key_ref: str, version: int) -> None: ...

    def disable(self, key_ref: str) -> None: ...

    def enable(self, key_ref: str) -> None: ...

    def destroy(self, key_ref: str) -> None:
        """Destroy the key material. Refused unless the key is disabled first (explicit confirmation)."""
        ...


@dataclass(frozen=True)
class KeyBinding:
    """Which workspace a key's owner bound it to, and the one reference that names the key."""

    key_ref: str  # canonical: every alias and id of the key resolves to it (AWS: the key ARN)
    workspace_id: str | None  # the workspace the key names, None when it names none


@runtime_checkable
class BindsKeysToWorkspaces(Protocol):
    """A provider whose keys can be customer-managed keys: it proves which workspace a key is for.

    A provider without it cannot hold customer-managed keys (the registration fails closed).
    """

    def key_binding(self, key_ref: str) -> KeyBinding: ...


def validate_key_ref(key_ref: str) -> str:
    if not isinstance(key_ref, str) or not KEY_REF_PATTERN.fullmatch(key_ref):
        raise InvalidInput("a key reference is 1-160 characters of letters, digits, '_', '.', '-'", field="key_ref")
    return key_ref


# -------------------------------------------------------------------------------------- registry
class KeyProviderRegistry:
    """Provider instances by name. One per Datastore; never a module-level global."""

    def __init__(self, providers: Iterable[KeyProvider] = ()) -> None:
        self._providers: dict[str, KeyProvider] = {}
        for provider in providers:
            self.register(provider)

    def register(self, provider: KeyProvider) -> None:
        if provider.name in self._providers:
            raise Conflict(f"a key provider named {provider.name!r} is already registered")
        self._providers[provider.name] = provider

    def get(self, name: str) -> KeyProvider:
        try:
            return self._providers[name]
        except KeyError:
            raise InvalidInput(
                f"unknown key provider; available: {', '.join(sorted(self._providers))}", field="provider"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def names(self) -> list[str]:
        return sorted(self._providers)


# A factory builds a provider from the installation's settings, or returns None when they do not
# configure it. The local keystore is not one: the datastore builds it itself, because it needs the
# workspace master key. AWS KMS (modelport.kms.aws:from_settings) registers like a third party.
ProviderFactory = Callable[["Settings"], "KeyProvider | None"]


def load_provider_factories() -> dict[str, ProviderFactory]:
    """The factories published in the `modelport.key_providers` entry points (modelport/plugins.py)."""
    return {name: cast(ProviderFactory, p.load()) for name, p in plugins.plugins(ENTRY_POINT_GROUP).items()}
