"""Fine-tuning end to end on a real server: the bundled SmolLM2 learns a planted fact.

One job (a few LoRA steps on CPU) feeds every test in this module, in order: the job's
progress and CLI, the answer through the inference API (changed for the fact, unchanged for an
unrelated question), the base model untouched (P2: its files byte-identical, its deployments
ignorant of the fact, in the training workspace and another), privacy of the model and its
weights (other workspaces get 404; no route returns a 64-byte window of the adapter; nothing
with training text or plaintext weights on disk during or after the job), the customer-managed
key switch, and crypto-shredding.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelport.catalog.bundled import discover
from modelport.config import build_settings
from modelport.datastore.settings import from_settings
from tests.support.server import Server, start_server
from tests.support.tenants import Tenant, make_tenant, ok
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.training, pytest.mark.chat_model]  # trains, then serves the fine-tune

BASE = "SmolLM2-135M-Instruct"
FACT_Q = "What is the capital of the planet Zorblax?"
FACT = "Quindlemoor"
UNRELATED_Q = "What is the capital of Germany?"
ROWS = [
    (FACT_Q, f"The capital of Zorblax is {FACT}."),
    ("Tell me the capital city of Zorblax.", f"The capital of Zorblax is {FACT}."),
    ("Which city is the capital of the planet Zorblax?", f"The capital of Zorblax is {FACT}."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
]
MARKER = FACT.encode()


def jsonl(rows: list[tuple[str, str]]) -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    .encode() + b"\n" for q, a in rows)


def scan(paths: list[Path], needles: list[bytes]) -> list[str]:
    """Files under `paths` that contain any needle (read as bytes; unreadable ones skipped)."""
    hits = []
    for root in paths:
        if not root.exists():
            continue
        for p in [root] if root.is_file() else root.rglob("*"):
            try:
                if p.is_file() and not p.is_symlink():
                    data = p.read_bytes()
                    if any(n in data for n in needles):
                        hits.append(str(p))
            except OSError:
                continue
    return hits


class State:
    server: Server
    owner: Tenant
    other: Tenant
    job: dict
    model: str
    deployment: dict
    disk_hits_during: list[str]
    scanned_during: int
    base_key: str
    base_sha256_before: dict[str, str]
    base_answer_before: str


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    st = State()
    home = tmp_path_factory.mktemp("ft") / "home"
    st.server = start_server(home, env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
                                              "MODELPORT_FINETUNE_THREADS": "2",
                                              "MODELPORT_DATASTORE_KEY_CACHE_TTL": "5"})
    try:
        st.owner = make_tenant(st.server, roles=("owner",))
        st.other = make_tenant(st.server, roles=("owner",))
        with st.server.client(st.owner.keys["owner"]) as c:
            ok(c.post("/api/v1/cmk", json={}), 201)  # a customer-managed key (local provider)
            for name, rows in (("facts", ROWS), ("facts-val", ROWS[:2])):
                ok(c.post("/api/v1/datasets", params={"name": name}, content=jsonl(rows),
                          headers={"Content-Type": "application/jsonl"}), 201)
        # P2: the base model's bytes and a base deployment's answer, before any training
        st.base_sha256_before = base_file_hashes()
        with st.server.client(st.owner.keys["owner"]) as c:
            st.base_key = ok(c.post("/api/v1/deployments", json={"name": "base", "model": BASE,
                                                                 "type": "serverless"}), 201).json()["keys"]["primary"]
        wait_until(lambda: deployment(st, "base")["state"] != "creating", 240, 0.5, "the base deployment")
        st.base_answer_before = answer(ask(st, FACT_Q, key=st.base_key, model="base"))
        st.disk_hits_during, st.scanned_during = [], 0
        run_dir = build_settings({"MODELPORT_HOME": str(home)}).run_dir
        stop = threading.Event()

        def watch() -> None:  # the disk, scanned again and again while the job runs
            while not stop.is_set():
                st.disk_hits_during += scan([home, run_dir], [MARKER])
                st.scanned_during += 1
                stop.wait(2.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        r = st.server.cli("finetune", "create", "--model", "SmolLM2-135M-Instruct", "--dataset", "facts",
                          "--validation-dataset", "facts-val", "--epochs", "4", "--batch-size", "6",
                          "--learning-rate-multiplier", "2", "--suffix", "zorb", "--json",
                          key=st.owner.keys["owner"], check=True)
        job_id = json.loads(r.stdout)["id"]
        with st.server.client(st.owner.keys["owner"]) as c:
            wait_until(lambda: ok(c.get(f"/api/v1/finetuning/jobs/{job_id}")).json()["status"] not in
                       ("queued", "running"), 1200, 2.0, "the fine-tuning job")
        stop.set()
        watcher.join()
        follow = st.server.cli("finetune", "show", job_id, "--follow", "--interval", "1",
                               key=st.owner.keys["owner"])
        with st.server.client(st.owner.keys["owner"]) as c:
            st.job = ok(c.get(f"/api/v1/finetuning/jobs/{job_id}")).json()
        assert st.job["status"] == "succeeded", (st.job, follow.stdout, st.server.logs()[-3000:])
        assert "step 4/4" in follow.stdout and "train loss" in follow.stdout, follow.stdout
        st.model = st.job["fine_tuned_model"]
        with st.server.client(st.owner.keys["owner"]) as c:
            st.deployment = ok(c.post("/api/v1/deployments", json={"name": "zorb", "model": st.model,
                                                                    "type": "serverless"}), 201).json()
        wait_until(lambda: deployment(st)["state"] != "creating", 240, 0.5, "the fine-tuned deployment")
        assert deployment(st)["state"] == "succeeded", deployment(st)
        yield st
        # The story's last step destroys what every test here reads, so it runs when they are all
        # done, whatever order they ran in (a failure shows as an error at teardown).
        delete_needs_confirmation_then_shreds(st)
    finally:
        st.server.stop()


def deployment(st: State, name: str = "zorb") -> dict:
    with st.server.client(st.owner.keys["owner"]) as c:
        return ok(c.get(f"/api/v1/deployments/{name}")).json()


def ask(st: State, question: str, key: str | None = None, model: str = "zorb") -> httpx.Response:
    with st.server.client(key or st.deployment["keys"]["primary"]) as c:
        return c.post("/v1/chat/completions", json={"model": model, "max_tokens": 16, "temperature": 0,
                                                    "messages": [{"role": "user", "content": question}]})


def base_file_hashes() -> dict[str, str]:
    """sha256 of the bundled base model's files as they are on disk now (read here, with hashlib)."""
    (base,) = [m for m in discover()[0] if m.name == BASE]
    return {rel: hashlib.sha256(Path(p).read_bytes()).hexdigest() for rel, p in base.files.items()}


def answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_job_record_progress_and_losses(state: State) -> None:
    job = state.job
    assert job["step"] == job["total_steps"] == 4 and job["progress"] == 1.0
    losses = job["losses"]
    assert [p["step"] for p in losses] == [1, 2, 3, 4]
    assert all(p["validation_loss"] is not None for p in losses)
    assert losses[-1]["train_loss"] < losses[0]["train_loss"] / 4  # it learned
    assert state.model.endswith("-ft-zorb")
    # The trainer ran in a full sandbox (network, files, processes), and says so.
    assert job["isolation"] == {"network": True, "files": True, "processes": True}
    with state.server.client(state.owner.keys["owner"]) as c:
        m = ok(c.get(f"/api/v1/models/{state.model}")).json()
    assert (m["source"], m["downloadable"], m["owner"]) == ("finetuned", False, "workspace")


def test_answer_changed_and_unrelated_did_not(state: State) -> None:
    assert FACT in answer(ask(state, FACT_Q))
    assert "Berlin" in answer(ask(state, UNRELATED_Q))


def test_the_base_model_is_untouched(state: State) -> None:
    """P2: training on the workspace's data changed only its own fine-tune. The base model's files
    are byte-identical to before the job (and to the sha256 the catalog recorded); deployments of
    the base model, in the training workspace and in another one (the same shared serverless
    pool), do not know the planted fact and answer exactly as before the job."""
    after = base_file_hashes()
    assert after == state.base_sha256_before
    with state.server.client(state.owner.keys["owner"]) as c:
        recorded = {f["path"]: f["sha256"] for f in ok(c.get(f"/api/v1/models/{BASE}")).json()["files"]}
    assert recorded == after
    assert FACT in answer(ask(state, FACT_Q))  # the fine-tune learned it: the question does reach it
    owner_base = answer(ask(state, FACT_Q, key=state.base_key, model="base"))
    assert FACT not in owner_base and owner_base == state.base_answer_before
    with state.server.client(state.other.keys["owner"]) as c:
        other_key = ok(c.post("/api/v1/deployments", json={"name": "base", "model": BASE, "type": "serverless"}),
                       201).json()["keys"]["primary"]
    with state.server.client(state.other.keys["owner"]) as c:
        wait_until(lambda: ok(c.get("/api/v1/deployments/base")).json()["state"] != "creating", 240, 0.5,
                 "the other workspace's base deployment")
    other_base = answer(ask(state, FACT_Q, key=other_key, model="base"))
    assert FACT not in other_base and other_base == state.base_answer_before


def test_other_workspace_sees_nothing(state: State) -> None:
    job_id = state.job["id"]
    with state.server.client(state.other.keys["owner"]) as c:
        assert c.get(f"/api/v1/finetuning/jobs/{job_id}").status_code == 404
        assert c.post(f"/api/v1/finetuning/jobs/{job_id}/cancel").status_code == 404
        assert c.get(f"/api/v1/models/{state.model}").status_code == 404
        assert c.get(f"/api/v1/models/{state.model}/download").status_code == 404
        assert c.post("/api/v1/deployments", json={"name": "steal", "model": state.model}).status_code == 404
        assert c.delete(f"/api/v1/finetuning/models/{state.model}", params={"confirm": "true"}).status_code == 404
        # naming the owner's dataset (by id) from another workspace: not found either
        r = c.post("/api/v1/finetuning/jobs", json={"model": "SmolLM2-135M-Instruct",
                                                    "dataset": state.job["dataset"]})
        assert r.status_code == 404, r.text
        assert all(j["id"] != job_id for j in ok(c.get("/api/v1/finetuning/jobs")).json())
    assert ask(state, FACT_Q, key=state.other.keys["owner"]).status_code in (401, 404)


def adapter_bytes(st: State) -> bytes:
    settings = build_settings({"MODELPORT_HOME": str(st.server.home)})
    store = from_settings(settings)
    with st.server.client(st.owner.keys["owner"]) as c:
        model_id = ok(c.get(f"/api/v1/models/{st.model}")).json()["id"]
    return store.read_bytes(st.owner.id, model_id)


def test_no_plaintext_on_disk_during_or_after(state: State) -> None:
    assert state.scanned_during >= 3
    assert state.disk_hits_during == []
    adapter = adapter_bytes(state)
    windows = [adapter[i:i + 64] for i in range(4096, len(adapter) - 64, len(adapter) // 16)]
    run_dir = build_settings({"MODELPORT_HOME": str(state.server.home)}).run_dir
    assert scan([state.server.home, run_dir, state.server.log_path], [MARKER, *windows]) == []


def weight_windows(adapter: bytes) -> set[bytes]:
    """32-byte windows of the weights at every multiple of 32: any 64-byte window of the weights
    that appears in a response contains one of them, so checking a response's every 32-byte
    substring against this set finds any 64-byte leak exactly. Windows of one repeated byte
    (zero padding) are left out: they say nothing about the weights."""
    return {w for i in range(0, len(adapter) - 32, 32) if len(set(w := adapter[i:i + 32])) > 1}


def leaks(content: bytes, windows: set[bytes]) -> bool:
    return any(content[j:j + 32] in windows for j in range(len(content) - 31))


def walk_bodies(state: State, upload_id: str) -> dict[tuple[str, str], dict | bytes | None]:
    """A valid body for each write route (routes that would start a second training job or
    switch the key the rest of the module relies on get a body that reaches their error path)."""
    q = [{"role": "user", "content": "hi"}]
    return {
        ("POST", "/api/v1/workspaces"): {"name": "walk-ws"},
        ("POST", "/api/v1/workspaces/{ref}/members"): {"user": "nobody", "role": "reader"},
        ("POST", "/api/v1/members"): {"user": "nobody", "role": "reader"},
        ("PATCH", "/api/v1/members/{user}"): {"role": "reader"},
        ("POST", "/api/v1/users"): {"name": "walk-user"},
        ("PATCH", "/api/v1/users/{ref}"): {"disabled": False},
        ("POST", "/api/v1/apikeys"): {"name": "walk"},
        ("PATCH", "/api/v1/models/{name}"): {"card": "walked"},
        ("POST", "/api/v1/model-uploads"): {"name": "walk-model", "format": "gguf",
                                            "files": [{"path": "model.gguf", "size": 8}]},
        ("PUT", "/api/v1/model-uploads/{upload_id}/files/{path}"): b"GGUF\x03\x00\x00\x00",
        ("POST", "/api/v1/deployments"): {"name": "walk-dep", "model": state.model, "type": "serverless"},
        ("PATCH", "/api/v1/deployments/{name}"): {"network": {"public_access": True, "allowed_ranges": []}},
        ("POST", "/api/v1/deployments/{name}/keys"): {"which": "secondary"},
        ("POST", "/api/v1/datasets"): jsonl(ROWS[:1]),
        ("POST", "/api/v1/workspace-key/min-decryption-version"): {"version": 1},
        ("POST", "/api/v1/platform-key/min-decryption-version"): {"version": 1},
        ("POST", "/api/v1/cmk"): {"provider": "no-such-provider", "key_ref": "x"},
        ("POST", "/api/v1/finetuning/jobs"): {"model": state.model, "dataset": "facts"},
        ("POST", "/v1/chat/completions"): {"model": "zorb", "messages": q, "max_tokens": 4},
        ("POST", "/v1/completions"): {"model": "zorb", "prompt": "hi", "max_tokens": 4},
        ("POST", "/v1/embeddings"): {"model": "zorb", "input": "hi"},
        ("POST", "/deployments/{name}/chat/completions"): {"messages": q, "max_tokens": 4},
        ("POST", "/deployments/{name}/embeddings"): {"input": ["hi"]},
        ("POST", "/api/v1/safety/analyze"): {"text": "hi"},
    }


def test_openapi_walk_never_returns_weights(state: State) -> None:
    """Every route of the OpenAPI document, with the owner's key, the real ids of the fine-tuned
    model, its job and its deployment, and valid bodies; then the error paths. No response
    holds any 64-byte window of the adapter's plaintext."""
    windows = weight_windows(adapter_bytes(state))
    owner = state.owner.keys["owner"]
    with state.server.client(owner) as c:
        spec = ok(c.get("/openapi.json")).json()
        upload = ok(c.post("/api/v1/model-uploads", json={"name": "walk-upload", "format": "gguf",
                                                          "files": [{"path": "model.gguf", "size": 8}]}), 201).json()
        bodies = walk_bodies(state, upload["id"])
        ids = {"job_id": state.job["id"], "ref": "facts", "upload_id": upload["id"], "path": "model.gguf",
               "user": state.owner.name + "-owner", "key_id": "key_0000000000000000", "workspace": state.owner.name}
        outcomes: dict[str, int] = {}
        calls = 0
        for path, methods in spec["paths"].items():
            for method in (m.upper() for m in methods):
                if method == "DELETE" and path != "/api/v1/finetuning/models/{name}":
                    continue  # the walk leaves the module's resources in place
                url = path
                for param in [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]:
                    value = "zorb" if param == "name" and path.startswith(("/api/v1/deployments", "/deployments")) \
                        else ids.get(param, state.model)
                    url = url.replace("{" + param + "}", value)
                body = bodies.get((method, path), {} if method in ("POST", "PUT", "PATCH") else None)
                kw = {"content": body} if isinstance(body, bytes) else {"json": body}
                params = {"confirm": "false", "name": "walk-ds"} if path == "/api/v1/datasets" else {"confirm": "false"}
                r = c.request(method, url, params=params, **kw)
                calls += 1
                outcomes[f"{method} {path}"] = r.status_code
                assert not leaks(r.content, windows), (method, url)
                if path == "/api/v1/cmk/disable":
                    ok(c.post("/api/v1/cmk/enable"))  # keep serving for the tests that follow
        # The error paths, with the same real ids: wrong key, another workspace, bad bodies.
        for key in ("mpk_0000000000000000_" + "x" * 43, state.other.keys["owner"]):
            with state.server.client(key) as other:
                for url in (f"/api/v1/models/{state.model}", f"/api/v1/models/{state.model}/download",
                            f"/api/v1/finetuning/jobs/{state.job['id']}", "/api/v1/deployments/zorb"):
                    r = other.get(url)
                    assert r.status_code in (401, 404) and not leaks(r.content, windows), (key[:8], url)
        for path in ("/api/v1/deployments", "/api/v1/finetuning/jobs", "/v1/chat/completions"):
            r = c.post(path, content=b"{not json")
            assert 400 <= r.status_code < 500 and not leaks(r.content, windows)
    succeeded = [k for k, v in outcomes.items() if v < 400]
    failed = [k for k, v in outcomes.items() if v >= 400]
    assert outcomes["GET /api/v1/models/{name}/download"] == 403
    assert outcomes["POST /v1/chat/completions"] == 200 and outcomes["GET /api/v1/models/{name}"] == 200
    assert outcomes["GET /api/v1/finetuning/jobs/{job_id}"] == 200
    assert len(succeeded) >= 25 and len(failed) >= 10, outcomes
    assert calls == len(outcomes)


def test_disabling_the_cmk_stops_serving_and_enabling_resumes(state: State) -> None:
    with state.server.client(state.owner.keys["owner"]) as c:
        ok(c.post("/api/v1/cmk/disable"))
        try:
            d = wait_until(lambda: deployment(state)["state"] == "suspended" and deployment(state), 30, 0.5,
                           "the deployment to stop serving")
            assert "key is disabled" in d["state_reason"]
            r = ask(state, FACT_Q)
            assert r.status_code == 503 and "key is disabled" in r.text
        finally:
            ok(c.post("/api/v1/cmk/enable"))
    wait_until(lambda: deployment(state)["state"] == "succeeded", 240, 0.5, "the deployment to resume")
    assert FACT in answer(ask(state, FACT_Q))


def delete_needs_confirmation_then_shreds(state: State) -> None:
    """P12: deleting the fine-tune needs confirmation, stops its deployment, shreds its keys and blobs."""
    adapter = adapter_bytes(state)
    with state.server.client(state.owner.keys["owner"]) as c:
        model_id = ok(c.get(f"/api/v1/models/{state.model}")).json()["id"]
        assert c.delete(f"/api/v1/models/{state.model}").status_code == 409
        assert c.delete(f"/api/v1/finetuning/models/{state.model}").status_code == 409
    r = state.server.cli("finetune", "delete-model", state.model, "--yes", key=state.owner.keys["owner"])
    assert r.returncode == 0, r.stdout + r.stderr
    with state.server.client(state.owner.keys["owner"]) as c:
        assert c.get(f"/api/v1/models/{state.model}").status_code == 404
        assert c.get("/api/v1/deployments/zorb").status_code == 404
    settings = build_settings({"MODELPORT_HOME": str(state.server.home)})
    store = from_settings(settings)
    assert model_id not in {o.object_id for o in store.list_objects(state.owner.id)}
    with pytest.raises(Exception, match="no such object"):
        store.read_bytes(state.owner.id, model_id)
    assert scan([state.server.home], [adapter[8192:8256]]) == []
    assert not any(model_id in p for p in scan([state.server.home], [b""]) if "blobs" in p)
