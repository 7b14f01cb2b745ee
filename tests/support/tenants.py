"""Tenants built on a real server through its own REST API, for the HTTP tests.

`make_tenant` creates a workspace with one user per role and an API key for each, the way an
operator would: the platform admin adds itself to the workspace (an audited self-add), adds the
members, creates their keys (`POST /api/v1/users/{user}/apikeys`, which needs no membership),
then leaves, so the admin is not a member afterwards.
`import_tiny_gguf` registers a small, valid GGUF written by the reference writer, so that tests
that need many private models do not upload the 98 MB bundled file each time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.artifacts import write_gguf
from tests.support.server import Server

ROLES = ("owner", "contributor", "reader")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def ok(r: httpx.Response, status: int | tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text}"
    return r


@dataclass
class Tenant:
    name: str
    id: str
    users: dict[str, str] = field(default_factory=dict)  # role -> user name
    user_ids: dict[str, str] = field(default_factory=dict)  # role -> user id
    keys: dict[str, str] = field(default_factory=dict)  # role -> API key secret
    key_ids: dict[str, str] = field(default_factory=dict)  # role -> API key id


def make_tenant(server: Server, name: str | None = None, roles: tuple[str, ...] = ROLES) -> Tenant:
    assert "owner" in roles
    name = name or unique("ws")
    as_ws = {"X-Modelport-Workspace": name}
    with server.client() as admin:
        users = {}
        for role in roles:
            u = ok(admin.post("/api/v1/users", json={"name": f"{name}-{role}"})).json()
            users[role] = u
        ws = ok(admin.post("/api/v1/workspaces", json={"name": name, "owner": users["owner"]["name"]})).json()
        ok(admin.post(f"/api/v1/workspaces/{name}/members", json={"user": "admin", "role": "owner"}))
        for role in roles:
            if role != "owner":
                ok(admin.post("/api/v1/members", json={"user": users[role]["name"], "role": role}, headers=as_ws))
        t = Tenant(name=name, id=ws["id"])
        for role in roles:
            k = ok(admin.post(f"/api/v1/users/{users[role]['name']}/apikeys",
                              json={"name": f"{role}-key", "workspace": name})).json()
            t.users[role], t.user_ids[role] = users[role]["name"], users[role]["id"]
            t.keys[role], t.key_ids[role] = k["key"], k["id"]
        ok(admin.delete("/api/v1/members/admin", headers=as_ws))
    return t


def add_member(server: Server, tenant: Tenant, role: str = "reader") -> tuple[str, str, str]:
    """A fresh user added to `tenant` by its owner, with a key the platform admin made: (name, id, key)."""
    name = unique(f"{tenant.name}-m")
    with server.client() as admin:
        uid = ok(admin.post("/api/v1/users", json={"name": name})).json()["id"]
    with server.client(tenant.keys["owner"]) as owner:
        ok(owner.post("/api/v1/members", json={"user": name, "role": role}))
    with server.client() as admin:
        key = ok(admin.post(f"/api/v1/users/{name}/apikeys", json={"workspace": tenant.name})).json()
    return name, uid, key["key"]


def tiny_gguf(tmp_dir: Path) -> Path:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / f"tiny-{secrets.token_hex(4)}.gguf"
    return write_gguf(path)


def begin_upload(client: httpx.Client, gguf: Path, name: str, **fields: object) -> dict:
    body = {"name": name, "format": "gguf", "files": [{"path": "model.gguf", "size": gguf.stat().st_size}],
            **fields}
    return ok(client.post("/api/v1/model-uploads", json=body), 201).json()


def put_file(client: httpx.Client, upload_id: str, gguf: Path) -> httpx.Response:
    return client.put(f"/api/v1/model-uploads/{upload_id}/files/model.gguf", content=gguf.read_bytes(),
                      headers={"Content-Type": "application/octet-stream"})


def import_tiny_gguf(client: httpx.Client, tmp_dir: Path, name: str | None = None, **fields: object) -> dict:
    """Begin, upload and commit a small valid GGUF; returns the model as the API shows it."""
    gguf = tiny_gguf(tmp_dir)
    up = begin_upload(client, gguf, name or unique("tiny"), **fields)
    ok(put_file(client, up["id"], gguf))
    return ok(client.post(f"/api/v1/model-uploads/{up['id']}/commit"), 201).json()


def write_routes(spec: dict) -> set[tuple[str, str]]:
    """Every (METHOD, path) of the control plane that changes something, from the OpenAPI document."""
    return {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
            if m.upper() in ("POST", "PUT", "PATCH", "DELETE") and p.startswith("/api/v1")}


def path_param_routes(spec: dict) -> set[tuple[str, str]]:
    """Every (METHOD, path) of the control plane whose path names a resource."""
    return {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
            if "{" in p and p.startswith("/api/v1") and m.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")}
