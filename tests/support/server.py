"""A real `modelport serve` process on loopback, with its home, admin key and captured output.

`start_server` starts one with the environment of the test (never the developer's MODELPORT_*
variables); `lean_server` and `start_lean` start one without the default `chat` deployment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelport.cli.client import tls_context
from modelport.config import Settings
from tests.support.cli import CliResult, run_cli, run_installed_cli
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
#: Environment variables that tests keep from the developer's shell.
KEEP_ENV = {"MODELPORT_TEST_DATABASE_URL", "MODELPORT_TEST_REDIS_URL", "MODELPORT_CACHE_DIR"}

#: Deployments of a model with this name run on the echo runtime (a real worker process that
#: answers without loading weights): enough for the control-plane tests, which never call it.
ECHO_MODEL = "echo-tiny"


def loopback_client(**kw) -> httpx.Client:  # type: ignore[no-untyped-def]
    """An httpx.Client that shares the process's one TLS context (the CLI's): httpx builds a new
    one for every client otherwise, about 20 ms of CPU each (loading the CA bundle), which the
    suite paid thousands of times for clients of plain-HTTP servers on loopback."""
    kw.setdefault("verify", tls_context())
    return httpx.Client(**kw)


def loopback_get(url: str, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    """`httpx.get` with the shared TLS context (see `loopback_client`)."""
    with loopback_client() as c:
        return c.get(url, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_url() -> str:
    """The URL of a port that nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


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
        kw.setdefault("timeout", 300)  # a deadline for a loaded machine, not a timing assertion
        return loopback_client(base_url=self.url, headers=headers, **kw)

    def cli(self, *args: str, key: str | None = None, input: str | None = None, check: bool = False) -> CliResult:
        """Run `modelport ARGS` against this server, in this process (the admin key unless `key`)."""
        r = run_cli(self.url, self.home, *args, key=key, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"modelport {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def installed_cli(self, *args: str, key: str | None = None, input: str | None = None) -> CliResult:
        """Run the installed `modelport` entry point against this server, in a subprocess."""
        return run_installed_cli(self.url, self.home, *args, key=key, input=input, env=self.env)

    @property
    def model_files(self) -> Path:
        """Where this server keeps catalog model files (`models/<id>/`, `uploads/<id>/`)."""
        return Settings(home=self.home).model_files_dir

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


def server_env(home: Path, port: int, env_extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_") or k in KEEP_ENV}
    env.update({"MODELPORT_HOME": str(home), "MODELPORT_PORT": str(port), "MODELPORT_HOST": "127.0.0.1",
                "MODELPORT_LOG_FILE": str(home / "logs" / "server.log"), "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                # Test servers start deployments with the content filter off, so that plumbing tests do
                # not depend on the classifier; tests/safety turn it on (the product default is on).
                "MODELPORT_CONTENT_FILTER_DEFAULT": "off"})
    env.update(env_extra or {})
    return env


def start_server(home: Path, *, env_extra: dict[str, str] | None = None, timeout: float = 120) -> Server:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = server_env(home, port, env_extra)
    log_path = home.parent / f"server-{port}.out"
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "modelport", "serve"], env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, cwd=str(ROOT))
    server = Server(url=f"http://127.0.0.1:{port}", home=home, proc=proc, log_path=log_path, env=env)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
        try:
            return loopback_get(f"{server.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout, 0.2, "the server to become ready")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not become ready:\n{server.logs()}") from None
    server.admin_key = (home / "admin.key").read_text().strip()
    return server


def lean_env(overrides: dict[str, str] | None = None, **env: str) -> dict[str, str]:
    """Environment of a server without the default `chat` deployment, models on `overrides` runtimes."""
    return {"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
            "MODELPORT_RUNTIME_OVERRIDES": json.dumps(overrides or {}), **env}


def start_lean(home: Path, overrides: dict[str, str] | None = None, **env: str) -> Server:
    return start_server(home, env_extra=lean_env(overrides, **env))


def lean_server(factory: pytest.TempPathFactory, **env: str) -> Iterator[Server]:
    """A real server without the default `chat` deployment, whose SmolLM2 worker these tests never
    call and which would take a core while it loads, and whose fine-tuning jobs stay queued (the
    control-plane tests create and cancel jobs; they never train)."""
    s = start_server(factory.mktemp("srv") / "home",
                     env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_FINETUNE_CONCURRENCY": "0",
                                "MODELPORT_RUNTIME_OVERRIDES": json.dumps({ECHO_MODEL: "echo"}), **env})
    try:
        yield s
    finally:
        s.stop()
