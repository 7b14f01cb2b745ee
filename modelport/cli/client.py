"""The CLI's HTTP client: the CLI is a client of the REST API like any other."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """A failure to show the user as one clean line (and exit non-zero)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's own certificate verification (its CA bundle, SSL_CERT_FILE and SSL_CERT_DIR
    honoured), built once per process: building it costs about 20 ms of CPU (loading the CA
    bundle), and a command opens a client for each request it makes."""
    return httpx.create_ssl_context()


def default_home() -> Path:
    return Path(os.environ.get("MODELPORT_HOME", Path.home() / ".modelport")).expanduser()


def resolve_key(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("MODELPORT_API_KEY"):
        return os.environ["MODELPORT_API_KEY"]
    key_file = default_home() / "admin.key"
    try:
        return key_file.read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


@dataclass
class Client:
    url: str
    key: str | None
    workspace: str | None = None
    timeout: float = 60.0

    def _headers(self) -> dict[str, str]:
        h = {"User-Agent": "modelport-cli"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        if self.workspace:
            h["X-Modelport-Workspace"] = self.workspace
        return h

    @contextmanager
    def http(self) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=self.url, headers=self._headers(), timeout=self.timeout,
                          verify=tls_context()) as c:
            yield c

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            with self.http() as c:
                r = c.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise CliError(f"Cannot reach modelport at {self.url}: is the server running ('modelport serve')?") from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"modelport at {self.url} did not answer in time.") from exc
        return self.check(r)

    @staticmethod
    def check(r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise error_from(r)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()


def error_from(r: httpx.Response) -> CliError:
    try:
        err = r.json().get("error", {})
        message = err.get("message") or r.reason_phrase
        fields = err.get("details", {}).get("fields")
        if fields and len(fields) > 1:
            message += " (" + "; ".join(f"{f['field']}: {f['message']}" for f in fields[1:5]) + ")"
        code = err.get("code")
    except (ValueError, AttributeError):
        message, code = f"HTTP {r.status_code} {r.reason_phrase}", None
    return CliError(message, status=r.status_code, code=code)
