"""API-key and deployment-key secrets: generation, parsing and hashing.

A secret reads `mpk_<lookup>_<random>`: 256 bits from `secrets`, the lookup id lets the server
find the row without scanning, and only SHA-256(secret) is stored. A salted slow hash (argon2,
bcrypt) protects low-entropy passwords; a 256-bit random secret cannot be guessed, so a single
SHA-256 is the standard choice (GitHub tokens, Stripe keys) and keeps authentication cheap on
the inference hot path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedSecret:
    kind: str
    lookup: str
    secret: str


def generate(kind: str = "mpk") -> tuple[str, str]:
    """Return (lookup id, full secret)."""
    lookup = secrets.token_hex(8)
    body = secrets.token_urlsafe(32)  # 32 random bytes = 256 bits
    return lookup, f"{kind}_{lookup}_{body}"


def parse(secret: str) -> ParsedSecret | None:
    parts = secret.split("_", 2)
    if len(parts) != 3 or len(parts[1]) != 16 or len(parts[2]) < 40:
        return None
    return ParsedSecret(kind=parts[0], lookup=parts[1], secret=secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
