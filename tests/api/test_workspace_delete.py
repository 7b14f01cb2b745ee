"""Deleting a workspace offboards it completely, on a real server (SEC-M8, SEC-M9).

One workspace gets everything a team builds: a customer-managed key (local keystore), a dataset
with a plaintext canary, a fine-tuned model (one real LoRA step), a private imported model whose
file and metadata hold canaries, a dedicated deployment of the fine-tune (llama.cpp worker with
the decrypted adapter) and a serverless deployment of the private model (echo worker), both
called once, a model upload begun but not committed, and a second fine-tuning job still running.
Its owner deletes it. Right after the DELETE answers:

- both deployment keys and the workspace's API keys get 401, on both inference APIs;
- the deployments' worker processes and the running trainer are gone;
- a byte scan of the whole home and of the run directory finds none of the plaintext canaries,
  no window of any ciphertext blob of the workspace, no wrapped data key, and no key material of
  its workspace key or customer-managed key (raw, base64 or hex; the material is read before the
  deletion with the workspace master key, as an attacker holding it would);
- the usage records and the audit log (counts and ids) are still there for chargeback;
- copies of the workspace's datastore files taken before the deletion (a backup) and put back
  afterwards do not decrypt: the workspace key that wrapped their data keys is destroyed.

A second test creates a deployment and deletes its workspace while the worker is still loading:
no worker may survive the deletion.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter

from modelport.config import Settings
from modelport.datastore.settings import from_settings
from modelport.errors import ModelportError
from tests.support.artifacts import SMALL_TEMPLATE
from tests.support.inference import alive, wait_state, workers
from tests.support.kms import kek_materials
from tests.support.marketplace import publisher_record
from tests.support.processes import trainers_of
from tests.support.runtimes import SLOW_LOAD
from tests.support.server import Server, loopback_client, start_server
from tests.support.settings import settings_at
from tests.support.tenants import Tenant, begin_upload, make_tenant, ok, put_file, unique
from tests.support.waiting import wait_until

BASE = "SmolLM2-135M-Instruct"
PRIVATE = "private-tiny"
SLOW = "slow-private"
SHARED = "shared-tiny"  # catalog-wide: one serverless pool serves every workspace


def forms(secret: bytes) -> list[bytes]:
    return [secret, base64.b64encode(secret), secret.hex().encode()]


def scan(roots: list[Path], needles: dict[str, bytes]) -> list[str]:
    """'file: what' for every needle (in raw, base64 and hex form) found in any file under roots."""
    hits = []
    for root in roots:
        for p in root.rglob("*") if root.is_dir() else []:
            try:
                if not p.is_file() or p.is_symlink():
                    continue
                data = p.read_bytes()
            except OSError:
                continue
            hits += [f"{p}: {what}" for what, needle in needles.items() if any(f in data for f in forms(needle))]
    return hits


def private_gguf(path: Path, name: str, tensor: np.ndarray) -> Path:
    """A small valid GGUF whose general.name (kept in the catalog's metadata) and tensor bytes are canaries."""
    w = GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_file_type(0)
    w.add_token_list(["<unk>", "<s>", "</s>", "hello"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(SMALL_TEMPLATE)
    w.add_tensor("token_embd.weight", tensor.reshape(4, 8))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def jsonl(canary: str, rows: int) -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "user", "content": f"What is code {i}?"},
                                             {"role": "assistant", "content": f"Code {i} is {canary}."}]})
                    .encode() + b"\n" for i in range(rows))


@dataclass
class World:
    server: Server
    victim: Tenant
    keys: dict[str, str] = field(default_factory=dict)  # deployment name -> primary key
    needles: dict[str, bytes] = field(default_factory=dict)  # what must not survive -> bytes
    backup: dict[Path, bytes] = field(default_factory=dict)  # datastore files copied before the delete
    dataset_id: str = ""
    worker_pids: list[int] = field(default_factory=list)
    trainer_pids: list[int] = field(default_factory=list)
    delete_status: int = 0
    delete_seconds: float = 0.0
    after: dict[str, int] = field(default_factory=dict)  # call -> status, right after the DELETE
    alive_after: list[int] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("offboard") / "home",
                     env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_FINETUNE_THREADS": "2",
                                "MODELPORT_RUNTIME_OVERRIDES": json.dumps({PRIVATE: "echo", SLOW: SLOW_LOAD,
                                                                           SHARED: "echo"})})
    try:
        yield s
    finally:
        s.stop()


def _job(c: httpx.Client, job_id: str) -> dict:
    return ok(c.get(f"/api/v1/finetuning/jobs/{job_id}")).json()


def _call(server: Server, key: str, name: str, azure: bool = False) -> int:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    with loopback_client(base_url=server.url, timeout=120) as c:
        if azure:
            return c.post(f"/deployments/{name}/chat/completions", params={"api-version": "2024-05-01-preview"},
                          json=body, headers={"api-key": key}).status_code
        return c.post("/v1/chat/completions", json={**body, "model": name},
                      headers={"Authorization": f"Bearer {key}"}).status_code


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("victim")
    w = World(server=server, victim=make_tenant(server, roles=("owner", "reader")))
    w.roots = [server.home, Settings(home=server.home).run_dir]
    ds_canary = "DSCANARY" + secrets.token_hex(8)
    meta_canary = "METACANARY" + secrets.token_hex(8)
    tensor = np.random.default_rng().random(32, dtype=np.float32)
    upload_tensor = np.random.default_rng().random(32, dtype=np.float32)
    w.needles = {"dataset text": ds_canary.encode(), "model name in the catalog": meta_canary.encode(),
                 "private model file": tensor.tobytes(), "staged upload file": upload_tensor.tobytes()}
    before = set(workers(server))
    with server.client(w.victim.keys["owner"]) as c:
        ok(c.post("/api/v1/cmk", json={}), 201)
        w.dataset_id = ok(c.post("/api/v1/datasets", params={"name": "facts"}, content=jsonl(ds_canary, 4),
                                 headers={"Content-Type": "application/jsonl"}), 201).json()["id"]
        job = ok(c.post("/api/v1/finetuning/jobs", json={"model": BASE, "dataset": "facts", "epochs": 1,
                                                         "batch_size": 4, "suffix": "gone"}), 201).json()
        wait_until(lambda: _job(c, job["id"])["status"] not in ("queued", "running"), 900, 1.0, "the fine-tune")
        finetuned = _job(c, job["id"])
        assert finetuned["status"] == "succeeded", finetuned

        gguf = private_gguf(tmp / "private.gguf", meta_canary, tensor)
        up = begin_upload(c, gguf, PRIVATE)
        ok(put_file(c, up["id"], gguf))
        ok(c.post(f"/api/v1/model-uploads/{up['id']}/commit"), 201)
        staged = private_gguf(tmp / "staged.gguf", "staged", upload_tensor)
        up = begin_upload(c, staged, unique("staged"))
        ok(put_file(c, up["id"], staged))  # never committed

        for name, model, kind in (("ft", finetuned["fine_tuned_model"], "dedicated"),
                                  ("tiny", PRIVATE, "serverless")):
            created = ok(c.post("/api/v1/deployments", json={"name": name, "model": model, "type": kind}), 201)
            w.keys[name] = created.json()["keys"]["primary"]
        for name in w.keys:
            assert wait_state(server, name, key=w.victim.keys["owner"])["state"] == "succeeded"
    for name, key in w.keys.items():
        assert _call(server, key, name) == 200
        assert _call(server, key, name, azure=True) == 200
    assert _call(server, w.victim.keys["reader"], "tiny") == 200
    w.worker_pids = [wk.health.pid for i, wk in workers(server).items() if i not in before]
    assert len(w.worker_pids) == 2, w.worker_pids

    with server.client(w.victim.keys["owner"]) as c:  # a second job, still running at the deletion
        running = ok(c.post("/api/v1/finetuning/jobs", json={"model": BASE, "dataset": "facts", "epochs": 100,
                                                             "batch_size": 1}), 201).json()
        wait_until(lambda: _job(c, running["id"])["status"] == "running" and trainers_of(server), 300, 0.5,
                 "the second job's trainer")
    w.trainer_pids = trainers_of(server)

    # What an attacker would look for afterwards, read now: ciphertext, wrapped keys, key material.
    store = server.home / "datastore"
    ledger_path = store / "ledger" / f"{w.victim.id}.ledger.json"
    ledger = json.loads(ledger_path.read_bytes())
    assert len(ledger["objects"]) == 2 and ledger["kek"]["cmk"], ledger  # the dataset and the adapter
    for oid, entry in ledger["objects"].items():
        blob = store / "blobs" / (entry["blob_key"] + ".blob")
        data = blob.read_bytes()
        for at in (64, len(data) // 2, len(data) - 64):
            w.needles[f"ciphertext of {oid} at {at}"] = data[at:at + 48]
        for layer in ("inner", "outer"):
            w.needles[f"wrapped {layer} key of {oid}"] = base64.b64decode(entry[layer]["ciphertext"])
        if oid == w.dataset_id:
            w.backup[blob] = data
    w.backup[ledger_path] = ledger_path.read_bytes()
    master = base64.b64decode((server.home / "keys" / "workspace-master.key").read_bytes())
    keystore = store / "keys" / "workspace"
    mine = [p.stem for p in keystore.glob("*.json")
            if json.loads(p.read_bytes()).get("labels", {}).get("workspace") == w.victim.id]
    assert len(mine) == 2, mine  # its own workspace key and its customer-managed key
    for ref in mine:
        doc = json.loads((keystore / f"{ref}.json").read_bytes())
        for number, entry in doc["versions"].items():
            w.needles[f"sealed material of {ref} v{number}"] = base64.b64decode(entry["material"])
        for number, material in kek_materials(keystore, master, ref).items():
            w.needles[f"key material of {ref} v{number}"] = material
    # Dataset text and key material are never on disk in the clear (the first is encrypted, the
    # second sealed under the master key); every other needle is there while the workspace exists.
    never = ("dataset text", "key material")
    missing = [k for k, v in w.needles.items() if not k.startswith(never) and not scan(w.roots, {k: v})]
    assert missing == [], f"the scan must find every needle while the workspace exists: {missing}"

    with server.client(w.victim.keys["owner"]) as c:
        started = time.perf_counter()
        w.delete_status = c.delete(f"/api/v1/workspaces/{w.victim.name}").status_code
        w.delete_seconds = time.perf_counter() - started
    for name, key in w.keys.items():  # at once: no wait, no retry
        w.after[f"{name} deployment key, OpenAI"] = _call(server, key, name)
        w.after[f"{name} deployment key, Azure"] = _call(server, key, name, azure=True)
    w.after["reader API key, inference"] = _call(server, w.victim.keys["reader"], "tiny")
    with server.client(w.victim.keys["owner"]) as c:
        w.after["owner API key, control plane"] = c.get("/api/v1/me").status_code
    w.alive_after = [p for p in w.worker_pids + w.trainer_pids if alive(p)]
    return w


@pytest.mark.training  # the world fixture fine-tunes and serves the real model
@pytest.mark.chat_model
def test_delete_answers_and_every_key_is_refused_at_once(world: World) -> None:
    print(f"\nDELETE of a workspace with 2 deployments, 2 jobs (1 running), 2 objects: {world.delete_seconds:.2f} s")
    assert world.delete_status == 204
    assert world.after == dict.fromkeys(world.after, 401), world.after


@pytest.mark.training  # the world fixture fine-tunes and serves the real model
@pytest.mark.chat_model
def test_workers_and_the_running_trainer_are_gone(world: World) -> None:
    assert world.trainer_pids and len(world.worker_pids) == 2
    assert world.alive_after == [], "a worker or trainer of the deleted workspace outlived the DELETE"
    assert not [p for p in trainers_of(world.server) if p in world.trainer_pids]


@pytest.mark.training  # the world fixture fine-tunes and serves the real model
@pytest.mark.chat_model
def test_nothing_of_the_workspace_is_left_on_disk(world: World) -> None:
    hits = scan(world.roots, world.needles)
    files = sum(1 for r in world.roots if r.is_dir() for p in r.rglob("*") if p.is_file())
    print(f"\nbyte scan: {len(world.needles)} needles x 3 forms over {files} files, {len(hits)} hits")
    assert hits == []
    store = world.server.home / "datastore"
    assert not (store / "ledger" / f"{world.victim.id}.ledger.json").exists()
    assert not (store / "blobs" / world.victim.id).exists()
    staged = [d for d in (world.server.home / "model-files" / "uploads").iterdir()
              if world.victim.id in (d / "meta.json").read_text(errors="replace")]
    assert staged == []


@pytest.mark.training  # the world fixture fine-tunes and serves the real model
@pytest.mark.chat_model
def test_usage_and_audit_records_remain_for_chargeback(world: World) -> None:
    with sqlite3.connect(world.server.home / "modelport.db") as db:
        usage = db.execute("SELECT count(*), sum(output_tokens) FROM usage_events WHERE workspace_id = ?",
                           (world.victim.id,)).fetchone()
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        mentions = {t: n for t in tables if t not in ("usage_events", "usage_meters", "audit_events")
                    if (n := sum(world.victim.id in repr(row) for row in db.execute(f"SELECT * FROM {t}")))}
    assert "workspaces" in tables and mentions == {}, mentions  # no row of any other table names it
    assert usage[0] >= 5 and usage[1] > 0, usage
    with world.server.client() as admin:
        events = ok(admin.get("/api/v1/audit", params={"all_workspaces": True, "limit": 1000})).json()
        mine = [e for e in events if e["workspace_id"] == world.victim.id]
        assert {"dataset.create", "deployment.create", "finetune.create", "workspace.delete"} <= \
            {e["action"] for e in mine}
        done = next(e for e in mine if e["action"] == "workspace.delete")
        assert done["outcome"] == "success"
        assert done["detail"]["deployments"] == 2 and done["detail"]["objects_shredded"] == 2, done
        assert done["detail"]["jobs_cancelled"] == 1 and done["detail"]["uploads_cancelled"] == 1, done
        assert admin.get(f"/api/v1/workspaces/{world.victim.id}").status_code == 404
        assert world.victim.id not in {ws["id"] for ws in ok(admin.get("/api/v1/workspaces")).json()}


@pytest.mark.training  # the world fixture fine-tunes and serves the real model
@pytest.mark.chat_model
def test_a_backup_of_its_files_put_back_does_not_decrypt(world: World) -> None:
    """The workspace's ledger and a dataset blob, copied before the deletion, are put back: the
    ledger names data keys wrapped by the workspace's keys, which no longer exist anywhere."""
    for path, data in world.backup.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    try:
        store = from_settings(settings_at(world.server.home))
        with pytest.raises(ModelportError) as caught:
            store.read_bytes(world.victim.id, world.dataset_id)
        assert caught.value.code == "key_destroyed", caught.value
    finally:
        for path in world.backup:
            path.unlink()
        shutil.rmtree(world.server.home / "datastore" / "blobs" / world.victim.id, ignore_errors=True)


@pytest.mark.training  # the world fixture fine-tunes and serves the real model
@pytest.mark.chat_model
def test_the_name_can_be_used_again(world: World) -> None:
    """The deleted workspace's users stay (they are the installation's); its name is free again."""
    name, owner = world.victim.name, world.victim.users["owner"]
    with world.server.client() as admin:
        again = ok(admin.post("/api/v1/workspaces", json={"name": name, "owner": owner}), 201).json()
        key = ok(admin.post(f"/api/v1/users/{owner}/apikeys", json={"workspace": name}), 201).json()
    assert again["id"] != world.victim.id
    with world.server.client(key["key"]) as c:
        ok(c.post("/api/v1/datasets", params={"name": "facts"}, content=jsonl("fresh", 2)), 201)
        assert ok(c.get("/api/v1/datasets")).json()[0]["name"] == "facts"
        assert ok(c.get("/api/v1/deployments")).json() == []


def test_a_deployment_still_starting_does_not_outlive_its_workspace(server: Server, tmp_path: Path) -> None:
    """The worker of a deployment created just before the deletion is still loading (3 s) when the
    DELETE arrives; it must be stopped by the deletion, not left running for nobody."""
    tenant = make_tenant(server, roles=("owner",))
    worker_dirs = Settings(home=server.home).run_dir / "workers"

    def dirs() -> set[str]:
        return {d.name for d in worker_dirs.iterdir()} if worker_dirs.is_dir() else set()

    before = dirs()
    gguf = private_gguf(tmp_path / "slow.gguf", "slow", np.ones(32, dtype=np.float32))
    with server.client(tenant.keys["owner"]) as c:
        up = begin_upload(c, gguf, SLOW)
        ok(put_file(c, up["id"], gguf))
        ok(c.post(f"/api/v1/model-uploads/{up['id']}/commit"), 201)
        key = ok(c.post("/api/v1/deployments", json={"name": "slow", "model": SLOW, "type": "dedicated"}),
                 201).json()["keys"]["primary"]
        wait_until(lambda: dirs() - before, 60, 0.05, "the worker to be starting")
        assert ok(c.delete(f"/api/v1/workspaces/{tenant.name}")).status_code == 204
    assert _call(server, key, "slow") == 401
    assert dirs() - before == set()
    time.sleep(5)  # longer than the load: a worker started behind the deletion's back would be up now
    assert dirs() - before == set()
    assert set(workers(server)) <= before


def test_uploads_in_flight_are_stopped_and_leave_nothing(server: Server) -> None:
    """A dataset upload and a model-file upload are streaming (slowly) when the workspace is
    deleted: both stop at their next chunk, the DELETE answers once they have, and nothing of
    either is left on disk. Before, both went on after the DELETE, and the model file was stored."""
    tenant = make_tenant(server, roles=("owner",))
    canary = "UPCANARY" + secrets.token_hex(8)
    line = json.dumps({"prompt": f"q {canary}", "completion": "a"}).encode() + b"\n"
    block = (canary.encode() + secrets.token_bytes(8)) * 2048
    chunks = 600  # 30 s at the pace below: far longer than the test lets them run
    sent = {"dataset": 0, "model": 0}
    stop = threading.Event()
    results: dict[str, object] = {}

    def body(kind: str, chunk: bytes) -> Iterator[bytes]:
        for _ in range(chunks):
            if stop.is_set():
                return
            sent[kind] += 1
            yield chunk
            time.sleep(0.05)

    with server.client(tenant.keys["owner"]) as c:
        upload = ok(c.post("/api/v1/model-uploads", json={
            "name": "slow-model", "format": "gguf", "files": [{"path": "model.gguf", "size": len(block) * chunks}]}),
            201).json()

    def run(kind: str) -> None:
        try:
            with server.client(tenant.keys["owner"]) as c:
                if kind == "dataset":
                    r = c.post("/api/v1/datasets", params={"name": "slow"}, content=body(kind, line * 200))
                else:
                    r = c.put(f"/api/v1/model-uploads/{upload['id']}/files/model.gguf", content=body(kind, block),
                              headers={"Content-Type": "application/octet-stream"})
                results[kind] = r.status_code
        except httpx.HTTPError as exc:  # the server answered early and closed while we were sending
            results[kind] = type(exc).__name__

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in sent]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: min(sent.values()) >= 10, 60, 0.05, "both uploads to be streaming")
        with server.client() as admin:
            assert ok(admin.delete(f"/api/v1/workspaces/{tenant.name}")).status_code == 204
        stopped_at = dict(sent)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert all(n < chunks for n in stopped_at.values()), stopped_at
    assert results["dataset"] not in (200, 201) and results["model"] not in (200, 201), results
    assert scan([server.home, Settings(home=server.home).run_dir], {"upload canary": canary.encode()}) == []
    assert not (server.model_files / "uploads" / upload["id"]).exists()


def test_a_shared_serverless_pool_keeps_serving_the_other_workspaces(server: Server, tmp_path: Path) -> None:
    """Two workspaces call the same catalog-wide model serverless, on one shared pool: deleting one
    stops nothing the other uses."""
    gguf = private_gguf(tmp_path / "shared.gguf", "shared", np.ones(32, dtype=np.float32))
    with server.client() as admin:
        publisher_record(admin, "tests")
        up = begin_upload(admin, gguf, SHARED, scope="catalog", publisher="tests")
        ok(put_file(admin, up["id"], gguf))
        ok(admin.post(f"/api/v1/model-uploads/{up['id']}/commit"), 201)
    gone, stays = make_tenant(server, roles=("owner",)), make_tenant(server, roles=("owner",))
    keys = {}
    for tenant in (gone, stays):
        with server.client(tenant.keys["owner"]) as c:
            keys[tenant.name] = ok(c.post("/api/v1/deployments", json={"name": "s", "model": SHARED,
                                                                       "type": "serverless"}), 201).json()["keys"]
        assert wait_state(server, "s", key=tenant.keys["owner"])["state"] == "succeeded"
        assert _call(server, keys[tenant.name]["primary"], "s") == 200
    before = {w.health.pid for w in workers(server).values()}
    with server.client(gone.keys["owner"]) as c:
        assert ok(c.delete(f"/api/v1/workspaces/{gone.name}")).status_code == 204
    assert _call(server, keys[gone.name]["primary"], "s") == 401
    assert _call(server, keys[stays.name]["primary"], "s") == 200
    assert {w.health.pid for w in workers(server).values()} == before
