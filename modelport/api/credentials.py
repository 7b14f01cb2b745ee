"""The one reader of the key a request sends, for every route of the server.

A key travels as `Authorization: Bearer <key>`; the Azure AI Model Inference routes also take
Azure's `api-key: <key>` header (the official azure-ai-inference client sends both). Which kind
of key it is (API key, deployment key, publisher key) is decided by whoever reads it, from the
key's prefix (identity/secrets.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from modelport.errors import Unauthenticated

BEARER_FORMAT = "Send the key as 'Authorization: Bearer <key>'."


def bearer(authorization: str | None) -> str | None:
    """The key of an `Authorization` header value; None when there is no header. A header that is
    not `Bearer <key>` is refused (401), never read as no key."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(BEARER_FORMAT)
    return token.strip()


def api_key(headers: Mapping[str, str]) -> str | None:
    """Azure's `api-key` header (stripped), when the request sends one; it wins over Authorization."""
    value = headers.get("api-key")
    return value.strip() if value else None
