"""Redis for the rate-limit tests: the server named by MODELPORT_TEST_REDIS_URL, or one on
127.0.0.1:6379 (database 15), or None: the tests that need it are then skipped with a reason.
Tests keep apart by their keys (every deployment id is new), never by flushing the database.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

DEFAULT = "redis://127.0.0.1:6379/15"


def redis_url() -> str | None:
    url = os.environ.get("MODELPORT_TEST_REDIS_URL") or DEFAULT
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                return None
    except OSError:
        return None
    return url


def require_redis() -> str:
    url = redis_url()
    if url is None:
        pytest.skip("no Redis server answers at MODELPORT_TEST_REDIS_URL or 127.0.0.1:6379")
    return url
