"""P1: prompts and outputs are processed in memory only, on every path.

Unique canary strings go through every path a request can take: success (both APIs, chat,
completions, embeddings, streamed or not), refusals with the canary in malformed fields,
a prompt too long for the context window, a body too large, a wrong key, the worker killed
mid-request (503), a client that disconnects mid-stream or gives up while waiting. Then every
byte the platform could have written is scanned: MODELPORT_HOME (database with its WAL, logs,
keys), the files under $TMPDIR created or changed during the test (worker run directories
included), /dev/shm, and the server's captured output. Zero hits. The usage records exist,
with counts only.

The echo runtime answers with the words of the prompt, so each canary is in the output too.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential

from tests.support.inference import (
    CHAT_MODEL,
    EMBED_MODEL,
    chat_body,
    create_deployment,
    kill,
    run_dir,
    worker_health,
    workers,
)
from tests.support.runtimes import SLOW
from tests.support.server import Server, loopback_client, start_lean
from tests.support.tenants import ok
from tests.support.waiting import wait_until

MAX_SCAN_BYTES = 512 * 1024**2


class Canaries:
    def __init__(self) -> None:
        self.by_path: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        value = f"zqcanary{secrets.token_hex(8)}"
        self.by_path[path] = value
        return value

    def pattern(self) -> re.Pattern[bytes]:
        return re.compile(b"|".join(re.escape(v.encode()) for v in self.by_path.values()))

    def which(self, hit: bytes) -> str:
        return next(p for p, v in self.by_path.items() if v.encode() == hit)


@pytest.fixture(scope="module")
def started_at() -> float:
    return time.time() - 1  # mtime granularity


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, started_at: float) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("privacy") / "home", {CHAT_MODEL: SLOW, EMBED_MODEL: "echo"},
                   MODELPORT_MAX_REQUEST_BYTES=str(256 * 1024), MODELPORT_LOG_LEVEL="DEBUG")
    try:
        yield s
    finally:
        s.stop()


def files_to_scan(server: Server, since: float) -> Iterator[Path]:
    yield from (p for p in server.home.rglob("*") if p.is_file())
    # The workers' own directories (their sockets; a worker's /tmp is memory inside its sandbox).
    yield from (p for p in run_dir(server).rglob("*") if p.is_file())
    yield server.log_path
    for root, _dirs, names in os.walk(tempfile.gettempdir()):
        for name in names:
            p = Path(root, name)
            try:
                st = p.lstat()
            except OSError:
                continue
            if st.st_mtime >= since and p.is_file() and not p.is_symlink() and st.st_size <= MAX_SCAN_BYTES:
                yield p
    yield from (p for p in Path("/dev/shm").rglob("*") if p.is_file() and not p.is_symlink())


def scan(server: Server, since: float, canaries: Canaries) -> dict[str, list[str]]:
    pattern = canaries.pattern()
    hits: dict[str, list[str]] = {}
    scanned = 0
    for p in files_to_scan(server, since):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        scanned += 1
        for m in set(pattern.findall(data)):
            hits.setdefault(canaries.which(m), []).append(str(p))
    assert scanned > 5
    return hits


def test_no_prompt_or_output_is_ever_written(server: Server, started_at: float, tmp_path: Path):
    c = Canaries()
    dep = create_deployment(server, "priv", CHAT_MODEL)
    key = dep["keys"]["primary"]
    emb = create_deployment(server, "priv-embed", EMBED_MODEL)["keys"]["primary"]
    (worker,) = [w for w in workers(server).values() if w.health.runtime == "slow-echo"]
    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    http = loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    try:
        # -- success, both APIs -----------------------------------------------------------
        text = c("chat")
        r = oa.chat.completions.create(model="priv", messages=[{"role": "system", "content": c("system")},
                                                              {"role": "user", "content": text}])
        assert r.choices[0].message.content == text  # the canary is in the output too
        streamed = oa.chat.completions.create(model="priv", messages=[{"role": "user", "content": c("stream")}],
                                              stream=True, stream_options={"include_usage": True})
        assert c.by_path["stream"] in "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
        cr = oa.completions.create(model="priv", prompt=c("completion"), max_tokens=1)
        assert cr.choices[0].text == c.by_path["completion"]
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=emb, max_retries=0) as eo:
            assert len(eo.embeddings.create(model="priv-embed", input=[c("embed"), c("embed2")]).data) == 2
        with ChatCompletionsClient(endpoint=f"{server.url}/deployments/priv",
                                   credential=AzureKeyCredential(dep["keys"]["secondary"])) as az:
            assert az.complete(messages=[UserMessage(c("azure"))]).choices[0].message.content
            assert list(az.complete(messages=[UserMessage(c("azure-stream"))], stream=True))

        # -- refusals, canaries in malformed fields (and the answer never echoes a value) --
        refusals = {
            "role": (chat_body("x") | {"messages": [{"role": c("role"), "content": c("role-content")}]}, 400),
            "temperature": (chat_body(c("temp-content"), temperature=c("temperature")), 400),
            "stop": (chat_body(c("stop-content"), stop=[c("stop") * 20]), 400),
            "n": (chat_body(c("n-content"), n=99), 400),
            "unknown": (chat_body(c("unknown-content"), logit_bias={c("logit"): 1}), 400),
            "json": (None, 400),
            "too-long": (chat_body(" ".join([c("too-long")] * 2100)), 400),  # echo's window: 2,048
            "too-large": (chat_body(c("too-large") + " " + "y" * 300_000), 413),
        }
        for name, (body, status) in refusals.items():
            if body is None:
                resp = http.post("/v1/chat/completions", content=b'{"messages": [' + c("json").encode(),
                                 headers={"Content-Type": "application/json"})
            else:
                resp = http.post("/v1/chat/completions", json=body)
            assert resp.status_code == status, (name, resp.text)
            assert not c.pattern().search(resp.content), f"the {name} error echoes a value: {resp.text}"
        # -- the agent APIs: Responses, tool calls and results, logprobs (issue 17) -----------
        r = oa.responses.create(model="priv", input=c("responses"), instructions=c("instructions"))
        assert c.by_path["responses"] in r.output_text
        events = list(oa.responses.create(model="priv", input=c("responses-stream"), stream=True))
        assert events[-1].type == "response.completed"
        call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": f'{{"a":"{c("args")}"}}'}}
        tool_history = [{"role": "user", "content": c("tool-question")}, {"role": "assistant", "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "call_1", "content": c("tool-result")}]
        assert http.post("/v1/chat/completions", json={"model": "priv", "messages": tool_history, "logprobs": True,
                                                       "top_logprobs": 2}).status_code == 200
        strict = {"type": "object", "required": [c("prop")], "additionalProperties": False,
                  "properties": {c.by_path["prop"]: {"type": "string", "pattern": "x"}}}
        unknown_key = {"type": "object", c("schema-key"): 1}
        tool = {"type": "function", "function": {"name": c("tool-name"), "description": c("tool-desc")}}
        agent_refusals = {
            "schema-property": ("/v1/chat/completions", chat_body("x") | {"response_format": {
                "type": "json_schema", "json_schema": {"name": "s", "schema": strict, "strict": True}}}, 400),
            "schema-key": ("/v1/chat/completions", chat_body("x") | {"response_format": {
                "type": "json_schema", "json_schema": {"name": "s", "schema": unknown_key}}}, 400),
            "tool-twice": ("/v1/chat/completions", chat_body("x") | {"tools": [tool, tool]}, 400),
            "no-grammar": ("/v1/chat/completions", chat_body(c("no-grammar")) | {"tools": [tool]}, 400),
            "item": ("/v1/responses", {"model": "priv", "input": [{"type": c("item-type")}]}, 400),
            "store": ("/v1/responses", {"model": "priv", "input": c("store-input"), "store": True}, 400),
        }
        for name, (path, body, status) in agent_refusals.items():
            resp = http.post(path, json=body)
            assert resp.status_code == status, (name, resp.text)
            assert not c.pattern().search(resp.content), f"the {name} error echoes a value: {resp.text}"
        resp = http.get(f"/v1/responses/resp_{c('response-id')}")
        assert resp.status_code == 404 and not c.pattern().search(resp.content)

        for bad in (f"Bearer {c('key')}", f"Bearer mpd_{c('dkey')}"):
            assert httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(c("unauth")),
                              headers={"Authorization": bad}).status_code == 401
        assert http.post("/v1/chat/completions", json=chat_body(c("nf-content"), model="nope")).status_code == 404

        # -- the content filter: a blocked prompt, an output filtered mid-stream ------------
        # (the blocklist is configuration, stored by design: it holds no canary)
        guarded = create_deployment(server, "guarded", CHAT_MODEL)["keys"]["primary"]
        with server.client() as admin:
            ok(admin.put("/api/v1/safety/blocklists/p1", json={"terms": ["forbiddenword"],
                                                               "patterns": ["omega alpha"]}))
            cfg = ok(admin.get("/api/v1/deployments/guarded/content-filter")).json()
            ok(admin.put("/api/v1/deployments/guarded/content-filter",
                         json={**cfg, "enabled": True, "blocklists": ["p1"]}))
        with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {guarded}"}, timeout=120) as g:
            blocked = g.post("/v1/chat/completions", json=chat_body(f"{c('blocked')} forbiddenword"))
            assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_filter"
            assert not c.pattern().search(blocked.content)
            # echo repeats the words, so the output holds "omega alpha" where the prompt does not
            cut = g.post("/v1/chat/completions", json=chat_body(f"alpha {c('filtered')} omega", max_tokens=6))
            assert cut.json()["choices"][0]["finish_reason"] == "content_filter"
            with g.stream("POST", "/v1/chat/completions",
                          json=chat_body(f"alpha {c('filtered-stream')} omega", max_tokens=6, stream=True)) as r:
                assert '"content_filter"' in "".join(r.iter_lines())

        # -- a client that disconnects mid-stream, and one that gives up waiting ------------
        with oa.chat.completions.create(model="priv", messages=[{"role": "user", "content": c("disconnect")}],
                                        max_tokens=300, stream=True) as s:
            next(iter(s))
        with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=0.5) as quick:
            with pytest.raises(httpx.ReadTimeout):
                quick.post("/v1/chat/completions", json=chat_body(c("abandoned"), max_tokens=300))
        wait_until(lambda: worker_health(worker.socket).active_generations == 0, 30, 0.05, "the worker to be idle")

        # -- the worker killed mid-request: 503, and mid-stream: an error event -------------
        results: dict[str, object] = {}

        def long_stream() -> None:
            with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as h:
                with h.stream("POST", "/v1/chat/completions",
                              json=chat_body(c("crash-stream"), max_tokens=300, stream=True)) as resp:
                    results["stream"] = [line for line in resp.iter_lines() if line]

        def long_call() -> None:
            with loopback_client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as h:
                results["call"] = h.post("/v1/chat/completions", json=chat_body(c("crash"), max_tokens=300))

        threads = [threading.Thread(target=long_stream), threading.Thread(target=long_call)]
        threads[0].start()
        wait_until(lambda: worker_health(worker.socket).active_generations == 1, 30, 0.02, "the stream to run")
        threads[1].start()
        wait_until(lambda: worker_health(worker.socket).tokens_generated_total > 0, 30, 0.02)
        time.sleep(0.3)  # let the second request reach the queue behind the first
        kill(worker.health.pid)
        for t in threads:
            t.join(60)
        assert '"service_unavailable"' in results["stream"][-1]
        assert results["call"].status_code == 503  # type: ignore[union-attr]
        assert not c.pattern().search(results["call"].content)  # type: ignore[union-attr]
        wait_until(lambda: workers(server).get(worker.id), 60, 0.2, "the worker to be restarted")
        assert oa.chat.completions.create(model="priv", messages=[{"role": "user", "content": c("after")}]).choices

        # -- usage: counts recorded, no content --------------------------------------------
        with server.client() as admin:
            usage = admin.get("/api/v1/deployments/priv/usage").json()
        assert usage["requests"] >= 8 and usage["prompt_tokens"] > 10 and usage["completion_tokens"] > 5
        assert set(usage) == {"deployment", "requests", "prompt_tokens", "completion_tokens"}
    finally:
        oa.close()
        http.close()

    assert len(c.by_path) >= 25
    # deployment keys are secrets too: only their digests may be stored
    c.by_path["primary-key"], c.by_path["secondary-key"] = key, dep["keys"]["secondary"]
    # a control: a canary this test writes itself must be found, or the scan proves nothing
    control = tmp_path / "control.bin"
    control.write_bytes(b"\x00prefix" + c("control").encode() + b"suffix")
    hits = scan(server, started_at, c)
    assert hits.pop("control") == [str(control)]
    assert hits == {}, f"canaries found on disk: {hits}"
    control.unlink()
    # once more after a clean stop: the last log lines and the database checkpoint are written
    assert server.stop() == 0
    hits = scan(server, started_at, c)
    assert hits == {}, f"canaries found on disk after shutdown: {hits}"
