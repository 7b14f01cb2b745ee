"""The CLI's one TLS context per process still verifies certificates and host names."""

from __future__ import annotations

import ssl

from modelport.cli.client import Client, tls_context


def test_the_shared_tls_context_verifies_like_httpx_default() -> None:
    ctx = tls_context()
    assert ctx is tls_context()  # built once per process, not per request
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # a CA bundle is loaded: public certificates verify
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_each_request_uses_the_shared_context() -> None:
    with Client(url="https://modelport.invalid", key=None).http() as c:
        pool = c._transport._pool  # type: ignore[attr-defined]
        assert pool._ssl_context is tls_context()
