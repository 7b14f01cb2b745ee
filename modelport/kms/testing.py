"""A KMS-compatible server on loopback for tests and local trials: moto in server mode.

Shipped in the package (as httpx ships MockTransport) so every suite that needs an external
KMS, the datastore's and later the REST and CLI tests, starts the same real HTTP server and
talks to it with the real boto3 client. Needs the test extra (`moto[server]`).

Known differences from AWS KMS (moto 5.2.5), which tests must not rely on: a disabled key
still encrypts and decrypts, and key deletion honours the 7-day minimum window. Key-state
semantics are therefore tested on the local keystore.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class KmsTestServer:
    endpoint_url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        # The server keeps nothing worth a graceful shutdown (which takes werkzeug ~1.5 s).
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_server_executable() -> str:
    """The `moto_server` script next to this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise FileNotFoundError("moto_server not found; install the test extra (moto[server])")
    return found


def start_kms_server(*, timeout: float = 30.0) -> KmsTestServer:
    """Start moto_server on a free loopback port and wait until it answers HTTP."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [moto_server_executable(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = KmsTestServer(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(server.endpoint_url + "/moto-api/", timeout=1):  # noqa: S310
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    server.stop()
    raise TimeoutError("moto_server did not answer in time")


@contextlib.contextmanager
def kms_server(*, timeout: float = 30.0) -> Iterator[KmsTestServer]:
    server = start_kms_server(timeout=timeout)
    try:
        yield server
    finally:
        server.stop()
