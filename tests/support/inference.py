"""Helpers for the inference tests: deployments over the REST API, and the worker processes
seen from outside the server (their run directory, health over their socket, /proc).

Nothing here reaches into the server process: workers are found where the supervisor puts
them (`Settings.run_dir/workers/<id>/worker.sock`) and asked for their health over the same
protocol the gateway uses, which tells their pid and their request and token counters.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelport.config import Settings
from modelport.errors import ModelportError
from modelport.workers.client import WorkerClient
from modelport.workers.protocol import Health
from tests.support.server import Server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBED_MODEL = "all-MiniLM-L6-v2"


@dataclass
class ModelServer:
    """A server with the real bundled models deployed (the `models` fixture of tests/inference)."""

    server: Server
    chat_key: str  # primary key of the default serverless deployment `chat` (SmolLM2)
    embed_key: str  # primary key of `embed` (all-MiniLM-L6-v2)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def admin_key(self) -> str:
        return self.server.admin_key


# -- deployments ---------------------------------------------------------------------------


def create_deployment(server: Server, name: str, model: str = CHAT_MODEL, *, key: str | None = None,
                      wait: bool = True, **fields: Any) -> dict:
    """POST a deployment (keys included in the answer) and wait until it left `creating`."""
    with server.client(key) as c:
        created = ok(c.post("/api/v1/deployments", json={"name": name, "model": model, **fields}), 201).json()
    assert created["state"] == "creating"
    if wait:
        final = wait_state(server, name, key=key)
        assert final["state"] == "succeeded", final
        created.update(final)
    return created


def wait_state(server: Server, name: str, *, key: str | None = None, timeout: float = 240) -> dict:
    with server.client(key) as c:
        def done() -> dict | None:
            d = ok(c.get(f"/api/v1/deployments/{name}")).json()
            return d if d["state"] != "creating" else None
        return wait_until(done, timeout, 0.2, f"deployment {name} to leave 'creating'")


def chat_body(text: str = "hello world", **kw: Any) -> dict:
    return {"messages": [{"role": "user", "content": text}], **kw}


def chat(server: Server, key: str, model: str | None, text: str = "hello world", **kw: Any) -> httpx.Response:
    body = chat_body(text, **kw)
    if model is not None:
        body["model"] = model
    with server.client(key) as c:
        return c.post("/v1/chat/completions", json=body)


# -- workers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    id: str
    socket: Path
    health: Health


def run_dir(server: Server) -> Path:
    return Settings(home=server.home).run_dir


async def _health(sock: Path) -> Health:
    async with WorkerClient(sock) as client:
        return await client.health(timeout=10)


def worker_health(sock: Path) -> Health:
    return asyncio.run(_health(sock))


def workers(server: Server) -> dict[str, Worker]:
    """The server's live workers by id (a worker between death and restart is left out)."""
    root = run_dir(server) / "workers"
    found = {}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        sock = d / "worker.sock"
        if not sock.exists():
            continue
        try:
            found[d.name] = Worker(d.name, sock, worker_health(sock))
        except ModelportError:
            continue
    return found


def worker_pids_on_proc() -> set[int]:
    """Every worker process on this machine, found by command line in /proc (no psutil)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"modelport.workers.main" in cmdline:
            pids.add(int(entry))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
