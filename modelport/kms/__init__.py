"""Key providers: the local keystore (default) and AWS KMS, behind one small interface."""

from modelport.kms.base import (
    KeyAccessDenied,
    KeyDestroyed,
    KeyDisabled,
    KeyInfo,
    KeyNotFound,
    KeyProvider,
    KeyProviderError,
    KeyProviderRegistry,
    KeyProviderUnavailable,
    KeyState,
    KeyVersionRetired,
    UnsupportedOperation,
    UnwrapFailed,
    WrappedKey,
)
from modelport.kms.local import LocalKeystore

__all__ = [
    "KeyAccessDenied",
    "KeyDestroyed",
    "KeyDisabled",
    "KeyInfo",
    "KeyNotFound",
    "KeyProvider",
    "KeyProviderError",
    "KeyProviderRegistry",
    "KeyProviderUnavailable",
    "KeyState",
    "KeyVersionRetired",
    "LocalKeystore",
    "UnsupportedOperation",
    "UnwrapFailed",
    "WrappedKey",
]
