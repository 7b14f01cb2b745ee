"""Redis for the rate-limit tests: the server named by MODELPORT_TEST_REDIS_URL, or one on
127.0.0.1:6379 (database 15), or None: the tests that need it are then skipped with a reason.
Tests keep apart by their keys (every deployment id is new), never by flushing the database.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

from tests.support.waiting import wait_until

DEFAULT = "redis://127.0.0.1:6379/15"


def answers_ping(host: str, port: int) -> bool:
    """Whether a Redis server at host:port answers PING (a raw socket: no client library)."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_for_private_redis(port: int) -> None:
    """Wait until a redis-server a test started on 127.0.0.1:port answers (fails after 20 s)."""
    wait_until(lambda: answers_ping("127.0.0.1", port), 20, 0.05, "the private redis-server to start")


def redis_url() -> str | None:
    url = os.environ.get("MODELPORT_TEST_REDIS_URL") or DEFAULT
    parsed = urlparse(url)
    return url if answers_ping(parsed.hostname or "127.0.0.1", parsed.port or 6379) else None


def require_redis() -> str:
    url = redis_url()
    if url is None:
        pytest.skip("no Redis server answers at MODELPORT_TEST_REDIS_URL or 127.0.0.1:6379")
    return url
