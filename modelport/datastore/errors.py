"""Datastore errors, placed in modelport's one hierarchy (see modelport/errors.py)."""

from __future__ import annotations

from modelport.errors import IntegrityError, ServiceUnavailable


class CorruptObject(IntegrityError):
    """Stored bytes failed authentication: tampered, truncated, reordered, or bound elsewhere.

    The message never says which byte or which check failed beyond the broad reason, and never
    carries any plaintext.
    """

    code = "corrupt_object"


class StorageUnavailable(ServiceUnavailable):
    """The disk (or object store) refused a write or a read; nothing was half-done."""

    code = "storage_unavailable"
