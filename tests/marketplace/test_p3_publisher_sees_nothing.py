"""P3: nothing of a request reaches the model's publisher.

Two workspaces subscribe to an offer of the bundled chat model (served by a slow echo runtime,
which answers with the prompt's words, so outputs carry the canaries too): one consents to
share its contact, the other does not (and its contact carries a canary). Canary strings go
through every inference path of their deployments: success (streamed and not, both APIs), an
error the worker reports, a prompt the content filter blocks, an answer it cuts, a stream the
client cuts, and a worker killed mid-stream. Then every route a publisher key can call (every
GET of the OpenAPI document, with its own offer and publisher in the path), the report as JSON
and CSV, and every CLI export are scanned: no canary, no prompt or output text, no deployment or
API key, no workspace name or id, no contact that was not shared. A publisher reaches no file of
the server; what it downloads is what is scanned here.

And the role table extended to publishers: a publisher key on any workspace or inference route
gets 403 or 404.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.inference import CHAT_MODEL, create_deployment, kill, workers
from tests.support.marketplace import Publisher, create_offer, make_publisher, subscribe
from tests.support.runtimes import SLOW
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import Tenant, make_tenant, ok
from tests.support.waiting import wait_until

CANARY = "p3cnry" + secrets.token_hex(6)
HIDDEN_CONTACT = "hiddencontact" + secrets.token_hex(6)
BLOCKED = "forbiddenword"
#: Routes a publisher key may call (everything else answers 403 or 404 to it).
PUBLISHER_ROUTES = {("GET", "/api/v1/marketplace/offers"), ("POST", "/api/v1/marketplace/offers"),
                    ("GET", "/api/v1/marketplace/offers/{offer}"),
                    ("GET", "/api/v1/marketplace/offers/{offer}/terms/{version}"),
                    ("POST", "/api/v1/marketplace/offers/{offer}/retire"),
                    ("PATCH", "/api/v1/marketplace/offers/{offer}"),
                    ("POST", "/api/v1/marketplace/offers/{offer}/terms"),
                    ("POST", "/api/v1/marketplace/offers/{offer}/terms/{version}/retire"),
                    ("GET", "/api/v1/publishers/{ref}"), ("GET", "/api/v1/publisher/subscriptions"),
                    ("GET", "/api/v1/publisher/report")}


@dataclass
class World:
    server: Server
    pub: Publisher
    offer: dict
    tenants: list[Tenant]
    deployment_keys: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_CONTENT_FILTER_DEFAULT": "off",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: SLOW})}
    s = start_server(tmp_path_factory.mktemp("p3") / "home", env_extra=env)
    try:
        pub = make_publisher(s, "HuggingFaceTB")
        offer = create_offer(s, pub.key, CHAT_MODEL, contact_sharing_required=False)
        consenting, withholding = make_tenant(s), make_tenant(s)
        subscribe(s, consenting.keys["owner"], offer, consent=True,
                  contact={"name": "Ada Shared", "email": "ada@shared.example", "organization": "Shared Org"})
        subscribe(s, withholding.keys["owner"], offer, consent=False,
                  contact={"name": HIDDEN_CONTACT, "email": f"{HIDDEN_CONTACT}@x.example", "organization": "H"})
        w = World(s, pub, offer, [consenting, withholding])
        for t in w.tenants:
            key = create_deployment(s, "sold", CHAT_MODEL, key=t.keys["owner"], type="serverless")["keys"]["primary"]
            w.deployment_keys.append(key)
            with s.client(t.keys["owner"]) as c:
                ok(c.put("/api/v1/safety/blocklists/words", json={"terms": [BLOCKED], "patterns": ["tail head"]}))
                cfg = ok(c.get("/api/v1/deployments/sold/content-filter")).json()
                # the classifier is not the point here: a blocklist blocks prompts and cuts answers
                ok(c.put("/api/v1/deployments/sold/content-filter", json={
                    **cfg, "enabled": True, "blocklists": ["words"],
                    **{cat: {"prompt_threshold": "high", "completion_threshold": "high", "mode": "annotate"}
                       for cat in ("hate", "sexual", "violence", "self_harm")},
                    "jailbreak": {"enabled": False, "mode": "annotate"}}))
        yield w
    finally:
        s.stop()


def _every_inference_path(w: World, key: str) -> dict[str, object]:
    s = w.server
    seen: dict[str, object] = {}
    with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        def chat(text: str, **kw: object) -> httpx.Response:
            return c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], **kw})

        seen["success"] = chat(f"{CANARY} hello", max_tokens=3).status_code
        r = chat(f"{CANARY} streamed", max_tokens=3, stream=True, stream_options={"include_usage": True})
        seen["stream"] = r.status_code
        seen["azure"] = c.post("/deployments/sold/chat/completions", params={"api-version": "2024-05-01-preview"},
                               json={"messages": [{"role": "user", "content": f"{CANARY} azure"}],
                                     "max_tokens": 2}, headers={"api-key": key}).status_code
        seen["completions"] = c.post("/v1/completions", json={"prompt": f"{CANARY} text", "max_tokens": 2}).status_code
        seen["error"] = chat(f"{CANARY} " * 2100, max_tokens=2).status_code  # longer than the echo context
        seen["bad_param"] = c.post("/v1/chat/completions", json={"messages": [], CANARY: CANARY}).status_code
        seen["prompt_blocked"] = chat(f"{CANARY} {BLOCKED}", max_tokens=2).status_code
        # the echo repeats the prompt's words: "... tail head ..." at the wrap, which the blocklist cuts
        r = chat(f"head {CANARY} harmless words tail", max_tokens=8)
        assert r.status_code == 200, r.text
        seen["output_cut"] = r.json()["choices"][0]["finish_reason"] == "content_filter"
        r = chat(f"head {CANARY} harmless words tail", max_tokens=8, stream=True)
        seen["output_cut_stream"] = '"content_filter"' in r.text
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": f"{CANARY} cut me"}], "max_tokens": 200,
                "stream": True}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 3:
                    break
        seen["client_cut"] = r.status_code

    # a worker killed mid-stream: the stream ends with an error event
    got: list[str] = []

    def long_stream() -> None:
        with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c2:
            with c2.stream("POST", "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": f"{CANARY} crash"}], "max_tokens": 300,
                    "stream": True}) as r2:
                got.extend(r2.iter_lines())

    t = threading.Thread(target=long_stream)
    t.start()
    wait_until(lambda: len(got) > 3, 60, 0.05, "the long stream to run")
    for worker in workers(s).values():
        if worker.health.active_generations:
            kill(worker.health.pid)
    t.join(120)
    seen["worker_crash"] = int(any('"error"' in line for line in got))
    return seen


def _scan(text: str, w: World, *, allow_shared: bool = True) -> None:
    forbidden = [CANARY, HIDDEN_CONTACT, "hello", "streamed", "harmless words", "cut me", *w.deployment_keys]
    for t in w.tenants:
        forbidden += [t.name, t.id, *t.keys.values(), *t.key_ids.values(), *t.users.values()]
    hits = [f for f in forbidden if f in text]
    assert hits == [], hits


def test_canaries_through_every_path_never_reach_the_publisher(w_paths: None, world: World) -> None:
    w = world
    s = w.server
    texts: list[str] = []
    with s.client() as admin:
        spec = admin.get("/openapi.json").json()
    with s.client(w.pub.key) as c:
        for path, ops in spec["paths"].items():
            if "get" not in ops or not path.startswith("/api/v1"):
                continue
            url = path.replace("{offer}", w.offer["id"]).replace("{version}", "1").replace("{ref}", w.pub.name)
            for suffix in ("", "?format=csv"):
                r = c.get(url + suffix)
                if ("GET", path) in PUBLISHER_ROUTES:
                    assert r.status_code == 200, (url, r.status_code, r.text)
                else:
                    assert r.status_code in (403, 404, 422), (url, r.status_code)
                texts.append(r.text)
        report = ok(c.get("/api/v1/publisher/report")).json()
        csv_text = ok(c.get("/api/v1/publisher/report", params={"format": "csv"})).text
    texts += [json.dumps(report), csv_text]
    for args in (("publisher", "report"), ("publisher", "report", "--json"), ("publisher", "report", "--csv"),
                 ("publisher", "subscriptions", "--json"), ("offers", "list", "--json"),
                 ("offers", "show", w.offer["id"], "--json")):
        r = s.cli(*args, key=w.pub.key, check=True)
        texts += [r.stdout, r.stderr]
    for text in texts:
        _scan(text, w)

    # what the publisher does see: the shared contact, volume and charges, and an opaque id otherwise
    shared = [row for row in report["rows"] if row["contact"]]
    opaque = [row for row in report["rows"] if not row["contact"]]
    assert shared and opaque
    assert {r["contact"]["email"] for r in shared} == {"ada@shared.example"}
    assert all(r["subscription"].startswith("sub_") and r["requests"] > 0 and r["output_tokens"] > 0
               for r in report["rows"])
    assert "ada@shared.example" in csv_text


@pytest.fixture(scope="module")
def w_paths(world: World) -> None:
    """Every inference path, once per workspace, before the scans."""
    for key in world.deployment_keys:
        seen = _every_inference_path(world, key)
        assert seen["success"] == seen["stream"] == seen["azure"] == seen["completions"] == 200, seen
        assert seen["error"] == 400 and seen["bad_param"] == 400 and seen["prompt_blocked"] == 400, seen
        assert seen["worker_crash"] == 1 and seen["output_cut"] and seen["output_cut_stream"], seen
        # the killed worker is restarted by its supervisor before the next workspace's turn
        with loopback_client(base_url=world.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            wait_until(lambda: c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}).status_code == 200, 120, 0.5,
                "the restarted worker")


def test_a_publisher_key_gets_403_or_404_on_every_workspace_and_inference_route(world: World) -> None:
    s = world.server
    with s.client() as admin:
        spec = admin.get("/openapi.json").json()
    tried = 0
    with s.client(world.pub.key) as c:
        for path, ops in spec["paths"].items():
            for method in ops:
                if (method.upper(), path) in PUBLISHER_ROUTES or not (path.startswith("/api/v1") or
                                                                      path.startswith(("/v1", "/deployments"))):
                    continue
                url = re.sub(r"\{[^}]+\}", "x", path.replace("{currency}", "USD"))
                r = c.request(method.upper(), url, json={})
                assert r.status_code in (403, 404), (method, url, r.status_code, r.text)
                tried += 1
    assert tried > 60
