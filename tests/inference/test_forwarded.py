"""Forwarded headers decide the caller's address only when a trusted proxy sent them (P7).

A deployment that admits only 10.9.9.0/24 is called from loopback. Without
MODELPORT_TRUSTED_PROXIES, an `X-Forwarded-For: 10.9.9.9` header is ignored (it once turned the
403 into a 200); with the loopback proxy trusted, it is honoured, but only when the connection
comes from that proxy and only for the hop the proxy itself added. Callers at another address
bind their source address to 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from modelport.config import build_settings
from tests.support.inference import CHAT_MODEL, create_deployment
from tests.support.server import Server, loopback_client, start_lean

API_VERSION = "2024-05-01-preview"
ALLOWED = "10.9.9.9"


def _serve(factory: pytest.TempPathFactory, **env: str) -> Iterator[tuple[Server, str]]:
    s = start_lean(factory.mktemp("fwd") / "home", {CHAT_MODEL: "echo"}, **env)
    try:
        dep = create_deployment(s, "private", CHAT_MODEL,
                                network={"public_access": False, "allowed_ranges": ["10.9.9.0/24"]})
        yield s, dep["keys"]["primary"]
    finally:
        s.stop()


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    yield from _serve(tmp_path_factory, MODELPORT_TRUSTED_PROXIES="127.0.0.1/32, ::1/128")


def call(server: Server, key: str, api: str, forwarded: str | None, source: str = "127.0.0.1") -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
    with loopback_client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address=source)) as c:
        if api == "openai":
            return c.post("/v1/chat/completions", json={"model": "private", **body},
                          headers={"Authorization": f"Bearer {key}", **headers})
        return c.post("/deployments/private/chat/completions", params={"api-version": API_VERSION}, json=body,
                      headers={"api-key": key, **headers})


@pytest.mark.parametrize("api", ["openai", "azure"])
def test_without_trusted_proxies_a_forwarded_address_is_ignored(untrusting: tuple[Server, str], api: str) -> None:
    server, key = untrusting
    for forwarded in (ALLOWED, f"{ALLOWED}, 127.0.0.1", None):
        r = call(server, key, api, forwarded)
        assert r.status_code == 403, (forwarded, r.text)


@pytest.mark.parametrize("api", ["openai", "azure"])
def test_a_trusted_proxy_forwards_the_callers_address(behind_proxy: tuple[Server, str], api: str) -> None:
    server, key = behind_proxy
    assert call(server, key, api, ALLOWED).status_code == 200
    assert call(server, key, api, f"{ALLOWED}, 127.0.0.1").status_code == 200  # the proxy's own hop is skipped
    assert call(server, key, api, None).status_code == 403  # the proxy's address is not allowed itself


@pytest.mark.parametrize("api", ["openai", "azure"])
def test_forwarded_headers_from_anyone_else_are_ignored(behind_proxy: tuple[Server, str], api: str) -> None:
    server, key = behind_proxy
    # a connection from 127.0.0.2, which is not a trusted proxy
    assert call(server, key, api, ALLOWED, source="127.0.0.2").status_code == 403
    # through the proxy, an address the client wrote in front of the real one is not believed
    assert call(server, key, api, f"{ALLOWED}, 203.0.113.7").status_code == 403


def test_trusted_proxies_are_cidrs() -> None:
    assert build_settings({}).trusted_proxies == []
    parsed = build_settings({"MODELPORT_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7,fd00::/8"}).trusted_proxies
    assert [str(n) for n in parsed] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    for bad in ("proxy.example.org", "10.0.0.1/8", "10.0.0.0/33"):
        with pytest.raises(ValidationError, match="trusted_proxies"):
            build_settings({"MODELPORT_TRUSTED_PROXIES": bad})
