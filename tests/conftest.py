"""Fixtures shared by the whole suite: real databases, a real server on loopback, the CLI.

Every test gets its own MODELPORT_HOME and an environment without MODELPORT_* variables
(except the test-only ones), so nothing leaks between tests or from the developer's shell.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import pg

ROOT = Path(__file__).resolve().parent.parent
KEEP_ENV = {"MODELPORT_TEST_DATABASE_URL"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("MODELPORT_") and key not in KEEP_ENV:
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELPORT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


# -- databases -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str | None]:
    with pg.server_url() as (url, how):
        if url is None:
            print(f"\nPostgreSQL store tests will be SKIPPED: {how}.")
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The metadata store on each backend: SQLite in a temp dir, PostgreSQL in a fresh database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    admin = request.getfixturevalue("postgres_admin_url")
    if admin is None:
        pytest.skip("PostgreSQL not available: set MODELPORT_TEST_DATABASE_URL or install the server binaries")
    url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, url)


# -- a real server on loopback ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A `modelport serve` process on loopback, with its home, admin key and captured output."""

    url: str
    home: Path
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str]
    admin_key: str = ""
    extra: dict = field(default_factory=dict)

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        k = self.admin_key if key is None else key
        headers = {"Authorization": f"Bearer {k}"} if k else {}
        headers.update(kw.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def cli(self, *args: str, key: str | None = None, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        env = dict(self.env, MODELPORT_URL=self.url, COLUMNS="200")
        if key is not None:
            env["MODELPORT_API_KEY"] = key
        r = subprocess.run([sys.executable, "-m", "modelport", *args], env=env, capture_output=True, text=True,
                           input=input, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"modelport {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT, as Ctrl-C
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(home: Path, *, env_extra: dict[str, str] | None = None, timeout: float = 120) -> Server:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_") or k in KEEP_ENV}
    env.update({"MODELPORT_HOME": str(home), "MODELPORT_PORT": str(port), "MODELPORT_HOST": "127.0.0.1",
                "MODELPORT_LOG_FILE": str(home / "logs" / "server.log"), "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                # Test servers start deployments with the content filter off, so that plumbing tests do
                # not depend on the classifier; tests/safety turn it on (the product default is on).
                "MODELPORT_CONTENT_FILTER_DEFAULT": "off"})
    env.update(env_extra or {})
    log_path = home.parent / f"server-{port}.out"
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve"], env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, cwd=str(ROOT))
    server = Server(url=f"http://127.0.0.1:{port}", home=home, proc=proc, log_path=log_path, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"server did not become ready:\n{server.logs()}")
    server.admin_key = (home / "admin.key").read_text().strip()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per test module (starting one costs a few seconds)."""
    s = start_server(tmp_path_factory.mktemp("srv") / "home")
    try:
        yield s
    finally:
        s.stop()
