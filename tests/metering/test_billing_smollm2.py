"""Exact metering on the bundled SmolLM2 (a smaller run than the echo one): completed answers,
streamed and not, on both APIs, are billed exactly the usage their clients received, and a
stream the client cut is billed its prompt and at least what it received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential

from tests.support.inference import wait_state
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

pytestmark = pytest.mark.chat_model

PROMPTS = ["Name a colour.", "Say hello in French.", "What is two plus two?", "Name a fruit.", "Count to three."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("smol") / "home", env_extra={"MODELPORT_WORKER_THREADS": "1"})
    try:
        assert wait_state(s, "chat")["state"] == "succeeded"
        yield s
    finally:
        s.stop()


def _billed(s: Server) -> dict:
    with s.client() as admin:
        return ok(admin.get("/api/v1/deployments/chat/usage")).json()


def test_smollm2_billing_is_exact(server: Server) -> None:
    key = (Path(server.home) / "chat.key").read_text().strip()
    before = _billed(server)
    prompt = completion = 0
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300) as c:
        for i, text in enumerate(PROMPTS * 2):
            kw = {"model": "chat", "messages": [{"role": "user", "content": text}], "max_tokens": 8, "seed": i}
            if i % 2:
                r = c.chat.completions.create(**kw, n=2 if i % 3 == 0 else 1)
                usage = r.usage
            else:
                usage = None
                for chunk in c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
                    usage = chunk.usage or usage
            prompt += usage.prompt_tokens
            completion += usage.completion_tokens
    az = ChatCompletionsClient(endpoint=f"{server.url}/deployments/chat", credential=AzureKeyCredential(key),
                               api_version="2024-05-01-preview")
    try:
        for text in PROMPTS:
            r = az.complete(messages=[UserMessage(text)], max_tokens=6)
            prompt += r.usage.prompt_tokens
            completion += r.usage.completion_tokens
    finally:
        az.close()
    after = _billed(server)
    assert after["requests"] - before["requests"] == 15
    assert after["prompt_tokens"] - before["prompt_tokens"] == prompt
    assert after["completion_tokens"] - before["completion_tokens"] == completion

    # a stream cut after two pieces of text: its prompt, and at least what arrived
    body = {"model": "chat", "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
            "max_tokens": 200, "stream": True}
    received = 0
    with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    received += 1
                    if received == 2:
                        break
        full = ok(http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1})).json()

    def cut_billed() -> dict | None:
        now = _billed(server)
        return now if now["requests"] - after["requests"] == 2 else None

    now = wait_until(cut_billed, 60, 0.1, "the cut stream to be billed")
    cut_prompt = now["prompt_tokens"] - after["prompt_tokens"] - full["usage"]["prompt_tokens"]
    cut_completion = now["completion_tokens"] - after["completion_tokens"] - full["usage"]["completion_tokens"]
    assert cut_prompt == full["usage"]["prompt_tokens"]  # the same prompt, counted by the same worker
    assert received <= cut_completion <= 200
