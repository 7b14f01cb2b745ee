"""What the CLI spends on its HTTP client per request: `python benchmarks/bench_cli_client.py`.

The CLI opens an httpx.Client for each request it makes (modelport/cli/client.py). httpx builds a
new TLS context for every client unless it is given one, loading its CA bundle each time, even for
a plain-HTTP URL. This builds and closes `--clients` clients both ways, in this process, and prints
the CPU (user + system) per client: httpx's default (the reference, what the CLI did before
2026-12-06) and the CLI's one context per process (`tls_context()`), and their ratio. Nothing is
sent: building the client is what is measured.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import httpx

from modelport.cli.client import Client, tls_context


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def per_client_ms(build: Callable[[], httpx.Client], n: int) -> float:
    build().close()  # warm: imports, and the shared context once
    start = _cpu()
    for _ in range(n):
        build().close()
    return 1000 * (_cpu() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    c = Client(url="http://127.0.0.1:8000", key="mp-not-a-real-key")
    default = per_client_ms(lambda: httpx.Client(base_url=c.url, headers=c._headers(), timeout=c.timeout), args.clients)
    with c.http() as probe:  # the CLI's own construction, with the context it shares
        assert probe._transport._pool._ssl_context is tls_context()  # type: ignore[attr-defined]
    shared = per_client_ms(lambda: httpx.Client(base_url=c.url, headers=c._headers(), timeout=c.timeout,
                                                verify=tls_context()), args.clients)
    print(f"CPU per client, {args.clients} clients: httpx default {default:.2f} ms, "
          f"shared context (the CLI) {shared:.2f} ms, ratio {default / shared:.0f}x")


if __name__ == "__main__":
    main()
