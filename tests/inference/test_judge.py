"""The `llm-judge` content-filter backend wired to a chat deployment, on a real server.

The judge is a dedicated deployment of the bundled SmolLM2 on llama.cpp (the real model, as the
issue asks: "the bundled chat model as the judge"); the guarded deployment is another SmolLM2
deployment whose filter names it. A 135M model is a poor judge: whatever it answers, the
request must either carry the judge's verdict or be refused with the fail-closed 503, and never
be served unscreened. What is checked exactly: the configuration rules (chat deployment, same
workspace, same geography), that the judge deployment really receives the screening calls
(its worker's request counter and its usage records, api `content_filter.judge`), that the
judge's own traffic is not screened again, and that a judge that is gone fails closed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.inference import CHAT_MODEL, EMBED_MODEL, chat, create_deployment
from tests.support.server import Server, start_lean
from tests.support.tenants import ok

pytestmark = pytest.mark.chat_model  # the judge is SmolLM2 on llama.cpp

FAIL_CLOSED = "judge"  # every fail-closed message names the judge deployment or the judge


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("judge") / "home", {EMBED_MODEL: "echo"},
                   MODELPORT_GEOGRAPHIES=json.dumps({"x": ["x1"], "y": ["y1"]}),
                   MODELPORT_REGION_SLOTS=json.dumps({"x1": 4, "y1": 2}),
                   MODELPORT_WORKER_THREADS="1")
    try:
        create_deployment(s, "judge", CHAT_MODEL, type="dedicated", geography="x")
        create_deployment(s, "guarded", CHAT_MODEL, type="dedicated", geography="x")
        yield s
    finally:
        s.stop()


def _put(server: Server, name: str, **change: Any):  # type: ignore[no-untyped-def]
    with server.client() as c:
        cfg = ok(c.get(f"/api/v1/deployments/{name}/content-filter")).json()
        cfg.update(change)
        return c.put(f"/api/v1/deployments/{name}/content-filter", json=cfg)


def _reset(server: Server) -> None:
    """`guarded` back to the default filter, whatever a test before this one left it with."""
    ok(_put(server, "guarded", enabled=True, backend="minilm", judge_deployment=None))


def _judge_usage(server: Server) -> dict:
    with server.client() as c:
        return ok(c.get("/api/v1/deployments/judge/usage")).json()


def test_the_configuration_names_a_chat_deployment_of_the_same_geography(server: Server):
    _reset(server)
    r = _put(server, "guarded", enabled=True, backend="llm-judge")
    assert r.status_code in (400, 422) and "judge_deployment" in r.text
    r = _put(server, "guarded", enabled=True, judge_deployment="judge")  # backend still minilm
    assert r.status_code in (400, 422) and "llm-judge" in r.text
    r = _put(server, "guarded", enabled=True, backend="llm-judge", judge_deployment="nobody")
    assert r.status_code == 400 and r.json()["error"]["field"] == "judge_deployment"

    create_deployment(server, "vectors", EMBED_MODEL, geography="x")
    r = _put(server, "guarded", enabled=True, backend="llm-judge", judge_deployment="vectors")
    assert r.status_code == 400 and "chat deployment" in r.json()["error"]["message"]

    create_deployment(server, "far-judge", CHAT_MODEL, geography="y")
    r = _put(server, "guarded", enabled=True, backend="llm-judge", judge_deployment="far-judge")
    assert r.status_code == 400 and "geography" in r.json()["error"]["message"]

    with server.client() as c:
        assert ok(c.get("/api/v1/deployments/guarded/content-filter")).json()["backend"] == "minilm"
        for name in ("vectors", "far-judge"):
            assert c.delete(f"/api/v1/deployments/{name}").status_code == 204


def test_requests_are_judged_by_the_judge_deployment_or_refused(server: Server):
    _reset(server)
    cfg = ok(_put(server, "guarded", enabled=True, backend="llm-judge", judge_deployment="judge")).json()
    assert cfg["backend"] == "llm-judge" and cfg["judge_deployment"] == "judge"
    # The judge may even name itself: its own calls never pass through screening, so this
    # cannot recurse (a recursion would hang the requests below until their timeout).
    ok(_put(server, "judge", enabled=True, backend="llm-judge", judge_deployment="judge"))
    before = _judge_usage(server)
    texts = ("What is the capital of France?", "Tell me a short story about a cat.")
    outcomes = []
    for text in texts:
        r = chat(server, None, "guarded", text, max_tokens=8)
        outcomes.append(r.status_code)
        if r.status_code == 200:
            body = r.json()
            results = body["prompt_filter_results"][0]["content_filter_results"]
            assert set(results) >= {"hate", "sexual", "violence", "self_harm", "jailbreak"}
            assert "content_filter_results" in body["choices"][0]
        else:  # the judge's answer was not in Llama Guard's format: fail closed, never unscreened
            assert r.status_code == 503, r.text
            assert "not processed" in r.json()["error"]["message"] and "choices" not in r.text
    after = _judge_usage(server)
    # Every request sent its prompt to the judge deployment (a 200 also its output).
    assert after["requests"] - before["requests"] >= len(texts), (before, after, outcomes)
    assert after["completion_tokens"] > before["completion_tokens"]
    ok(_put(server, "judge", enabled=False, backend="minilm", judge_deployment=None))


def test_a_judge_that_is_gone_fails_closed(server: Server):
    """Its own judge: deleting the module's would fail the tests that run after this one."""
    create_deployment(server, "gone-judge", CHAT_MODEL, type="dedicated", geography="x")
    ok(_put(server, "guarded", enabled=True, backend="llm-judge", judge_deployment="gone-judge"))
    with server.client() as c:
        assert c.delete("/api/v1/deployments/gone-judge").status_code == 204
    r = chat(server, None, "guarded", "What is the capital of France?", max_tokens=8)
    assert r.status_code == 503, r.text
    assert FAIL_CLOSED in r.json()["error"]["message"]
    assert "choices" not in r.text
    _reset(server)
