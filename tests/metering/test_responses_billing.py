"""The Responses API is metered like the others: an answer, streamed or not, is billed exactly the
usage it reports (committed before its last byte), on the echo runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.inference import CHAT_MODEL, create_deployment
from tests.support.server import Server, loopback_client, start_lean
from tests.support.tenants import ok


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("responses-billing") / "home", {CHAT_MODEL: "echo"})
    try:
        yield s
    finally:
        s.stop()


def test_responses_are_billed_what_they_report(server: Server) -> None:
    key = create_deployment(server, "resp", CHAT_MODEL, type="serverless")["keys"]["primary"]
    seen_in = seen_out = 0
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for i in range(6):
            body = {"model": "resp", "input": "one two three " * (i + 1), "max_output_tokens": 2 + i}
            if i % 2:
                u = ok(c.post("/v1/responses", json=body)).json()["usage"]
            else:
                r = ok(c.post("/v1/responses", json={**body, "stream": True}))
                events = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
                u = next(e for e in events if e["type"] in ("response.completed", "response.incomplete"))[
                    "response"]["usage"]
            seen_in += u["input_tokens"]
            seen_out += u["output_tokens"]
    with server.client() as admin:
        billed = ok(admin.get("/api/v1/deployments/resp/usage")).json()
    assert (billed["requests"], billed["prompt_tokens"], billed["completion_tokens"]) == (6, seen_in, seen_out)
