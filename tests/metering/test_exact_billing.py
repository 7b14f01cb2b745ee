"""Exact metering: over 2,000+ mixed requests the billed tokens equal what the clients were told.

A real server with the echo runtime (exact, predictable token counts) is called through the
official `openai` and `azure-ai-inference` clients, and raw HTTP for streams that the client
cuts: both APIs, streamed and not, n>1, chat and text completions, embeddings, prompts the
content filter blocks, answers it cuts mid-stream, errors the worker reports, and 429s from a
full screening queue. Requests are spread over deployments by kind so that each deployment's
billed totals can be checked on their own:

- every completed request (an answer whose last byte arrived) is billed exactly the usage its
  client received, and refused requests (400, 429) are billed nothing;
- a stream the client cut is billed its prompt, and between the tokens the client received and
  the tokens its worker generated (the worker's own counter).
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from tests.support.inference import CHAT_MODEL, EMBED_MODEL, create_deployment, wait_state, worker_health, workers
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import ok
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

API_VERSION = "2024-05-01-preview"
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar zork".split()
#: The echo of WORDS longer than 16 tokens wraps around: "... zork alpha ...", which `wrap` blocks.
WRAP = "zork alpha"
#: The raw clients drop an idle connection after 1 s, before the server does (uvicorn's keep-alive,
#: 5 s: httpx's default expiry is the same 5 s, and a POST sent on a connection the server closes at
#: that moment fails with "Server disconnected without sending a response", as one full run did).
RAW_LIMITS = httpx.Limits(keepalive_expiry=1.0)


@dataclass
class Seen:
    """What the clients of one deployment were told, summed."""

    input_tokens: int = 0
    output_tokens: int = 0
    outcomes: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, prompt: int = 0, completion: int = 0) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.input_tokens += prompt
            self.output_tokens += completion


@dataclass
class World:
    server: Server
    keys: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_CONTENT_FILTER_DEFAULT": "off",
           "MODELPORT_SCREENING_CONCURRENCY": "1", "MODELPORT_SCREENING_QUEUE": "0",
           # the per-deployment rate limits are not under test here (2,000 requests in about a minute)
           "MODELPORT_SERVERLESS_REQUESTS_PER_MINUTE": "1000000", "MODELPORT_DEDICATED_REQUESTS_PER_MINUTE": "1000000",
           "MODELPORT_SERVERLESS_TOKENS_PER_MINUTE": "1000000000",
           "MODELPORT_DEDICATED_TOKENS_PER_MINUTE": "1000000000",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo", EMBED_MODEL: "echo"})}
    s = start_server(tmp_path_factory.mktemp("billing") / "home", env_extra=env)
    try:
        specs = {"plain": (CHAT_MODEL, "serverless"), "guarded": (CHAT_MODEL, "serverless"),
                 "embed": (EMBED_MODEL, "serverless"), "cutter": (CHAT_MODEL, "dedicated")}
        keys = {n: create_deployment(s, n, m, wait=False, type=t)["keys"]["primary"] for n, (m, t) in specs.items()}
        for n in specs:
            assert wait_state(s, n)["state"] == "succeeded"
        with s.client() as admin:
            ok(admin.put("/api/v1/safety/blocklists/wrap", json={"terms": ["forbidden"], "patterns": [WRAP]}))
            cfg = ok(admin.get("/api/v1/deployments/guarded/content-filter")).json()
            ok(admin.put("/api/v1/deployments/guarded/content-filter",
                         json={**cfg, "enabled": True, "blocklists": ["wrap"]}))
        yield World(s, keys)
    finally:
        s.stop()


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS[:-1]) for _ in range(rng.randint(1, 12)))


def _openai_chat(c: openai.OpenAI, name: str, rng: random.Random, seen: Seen, *, stream: bool, n: int) -> None:
    kw = {"model": name, "messages": [{"role": "user", "content": _prompt(rng)}],
          "max_tokens": rng.randint(1, 40), "n": n}
    if rng.random() < 0.2:
        kw["stop"] = [rng.choice(WORDS)]
    try:
        if not stream:
            r = c.chat.completions.create(**kw)
            return seen.add("ok", r.usage.prompt_tokens, r.usage.completion_tokens)
        usage = None
        for chunk in c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
        seen.add("ok", usage.prompt_tokens, usage.completion_tokens)
    except openai.APIStatusError as exc:
        seen.add(str(exc.status_code))


def _openai_completion(c: openai.OpenAI, name: str, rng: random.Random, seen: Seen, *, stream: bool) -> None:
    kw = {"model": name, "prompt": _prompt(rng), "max_tokens": rng.randint(1, 30)}
    if not stream:
        r = c.completions.create(**kw)
        return seen.add("ok", r.usage.prompt_tokens, r.usage.completion_tokens)
    usage = None
    for chunk in c.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
    seen.add("ok", usage.prompt_tokens, usage.completion_tokens)


def _azure_chat(url: str, key: str, rng: random.Random, seen: Seen, *, stream: bool) -> None:
    """A client per call: a pooled connection left idle longer than the server's header timeout
    (while the thread makes other calls) is closed by the server, and the client does not retry
    a POST on a closed connection."""
    messages = [UserMessage(_prompt(rng))]
    with ChatCompletionsClient(endpoint=f"{url}/deployments/plain", credential=AzureKeyCredential(key),
                               api_version=API_VERSION) as c:
        _azure_call(c, messages, rng, seen, stream=stream)


def _azure_call(c: ChatCompletionsClient, messages: list, rng: random.Random, seen: Seen, *, stream: bool) -> None:
    try:
        if not stream:
            r = c.complete(messages=messages, max_tokens=rng.randint(1, 40))
            return seen.add("ok", r.usage.prompt_tokens, r.usage.completion_tokens)
        usage = None
        for update in c.complete(messages=messages, max_tokens=rng.randint(1, 40), stream=True,
                                 model_extras={"stream_options": {"include_usage": True}}):
            usage = update.usage or usage
        seen.add("ok", usage.prompt_tokens, usage.completion_tokens)
    except HttpResponseError as exc:
        seen.add(str(exc.status_code))


def _raw_error(http: httpx.Client, name: str, rng: random.Random, seen: Seen) -> None:
    """Requests that fail: a prompt longer than the echo model's context (the worker refuses it:
    400), an unknown parameter (refused before any worker: 400)."""
    if rng.random() < 0.5:
        body = {"model": name, "messages": [{"role": "user", "content": "word " * 2100}], "max_tokens": 3}
    else:
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "logit_bias_typo": 1}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    seen.add("400")


def _guarded(c: openai.OpenAI, rng: random.Random, seen: Seen) -> None:
    """The filtered deployment: blocked prompts (400), outputs cut at the wrap (streamed and not),
    and, with one screening slot and no queue, 429s under concurrency."""
    roll = rng.random()
    text = " ".join(WORDS)
    if roll < 0.3:
        text = _prompt(rng) + " forbidden"
    elif roll < 0.6:
        text = _prompt(rng)
    max_tokens = rng.randint(1, 40)
    try:
        if rng.random() < 0.5:
            r = c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": text}],
                                          max_tokens=max_tokens)
            return seen.add("ok", r.usage.prompt_tokens, r.usage.completion_tokens)
        usage = None
        for chunk in c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": text}],
                                               max_tokens=max_tokens, stream=True,
                                               stream_options={"include_usage": True}):
            usage = chunk.usage or usage
        seen.add("ok", usage.prompt_tokens, usage.completion_tokens)
    except openai.APIStatusError as exc:
        seen.add(str(exc.status_code))


def _embed(c: openai.OpenAI, rng: random.Random, seen: Seen) -> None:
    inputs = [_prompt(rng) for _ in range(rng.randint(1, 4))]
    r = c.embeddings.create(model="embed", input=inputs)
    seen.add("ok", r.usage.prompt_tokens, 0)


def _cut(http: httpx.Client, rng: random.Random, seen: Seen) -> None:
    """A stream the client stops reading after a few events and closes."""
    text = _prompt(rng)
    body = {"model": "cutter", "messages": [{"role": "user", "content": text}], "max_tokens": rng.randint(50, 3000),
            "stream": True}
    keep = rng.randint(1, 5)
    received = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                received += 1
                if received >= keep:
                    break
    # the echo model counts the role and the words of each message as its prompt
    seen.add("cut", 1 + len(text.split()), received)


def _billed(server: Server, name: str) -> dict:
    with server.client() as admin:
        return ok(admin.get(f"/api/v1/deployments/{name}/usage")).json()


def test_billed_tokens_equal_what_clients_received(world: World) -> None:
    s = world.server
    seen = {n: Seen() for n in world.keys}

    def run(i: int) -> None:
        rng = random.Random(1000 + i)
        oai = {n: openai.OpenAI(base_url=f"{s.url}/v1", api_key=k, max_retries=0, timeout=120)
               for n, k in world.keys.items()}
        raw = {n: loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {k}"}, timeout=120,
                               limits=RAW_LIMITS)
               for n, k in world.keys.items()}
        try:
            for _ in range(PER_THREAD):
                roll = rng.random()
                if roll < 0.22:
                    _openai_chat(oai["plain"], "plain", rng, seen["plain"], stream=False, n=rng.choice((1, 1, 2, 3)))
                elif roll < 0.42:
                    _openai_chat(oai["plain"], "plain", rng, seen["plain"], stream=True, n=rng.choice((1, 1, 2, 3)))
                elif roll < 0.50:
                    _openai_completion(oai["plain"], "plain", rng, seen["plain"], stream=rng.random() < 0.5)
                elif roll < 0.60:
                    _azure_chat(s.url, world.keys["plain"], rng, seen["plain"], stream=rng.random() < 0.5)
                elif roll < 0.65:
                    _raw_error(raw["plain"], "plain", rng, seen["plain"])
                elif roll < 0.85:
                    _guarded(oai["guarded"], rng, seen["guarded"])
                else:
                    _embed(oai["embed"], rng, seen["embed"])
        finally:
            for c in (*oai.values(), *raw.values()):
                c.close()

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(run, range(THREADS)))

    # A burst at the filtered deployment: one screening slot and no queue, so some get 429.
    barrier = threading.Barrier(BURST)

    def burst(i: int) -> None:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key=world.keys["guarded"], max_retries=0, timeout=120) as c:
            barrier.wait()
            _guarded(c, random.Random(9000 + i), seen["guarded"])

    with ThreadPoolExecutor(BURST) as pool:
        list(pool.map(burst, range(BURST)))

    # Then streams that clients cut, alone, so that the workers' own counters tell what they generated.
    generated_before = sum(w.health.tokens_generated_total for w in workers(s).values())

    def cut(i: int) -> None:
        rng = random.Random(5000 + i)
        with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {world.keys['cutter']}"},
                          timeout=120, limits=RAW_LIMITS) as http:
            for _ in range(CUTS_PER_THREAD):
                _cut(http, rng, seen["cutter"])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(cut, range(4)))

    def idle() -> bool:
        return all(worker_health(w.socket).active_generations == 0 for w in workers(s).values())

    wait_until(idle, 30, 0.05, "the workers to stop generating")
    generated = sum(w.health.tokens_generated_total for w in workers(s).values()) - generated_before

    total = sum(sum(v.outcomes.values()) for v in seen.values())
    assert total >= 2000, total
    # the mix happened: blocked prompts, filtered outputs, refusals, 429s, cut streams
    assert seen["guarded"].outcomes["400"] > 0 and seen["guarded"].outcomes["ok"] > 0, seen["guarded"].outcomes
    assert seen["guarded"].outcomes["429"] > 0, seen["guarded"].outcomes
    assert seen["plain"].outcomes["400"] > 0, seen["plain"].outcomes
    assert seen["cutter"].outcomes["cut"] > 0

    for name in ("plain", "guarded", "embed"):
        billed = _billed(s, name)
        assert (billed["prompt_tokens"], billed["completion_tokens"]) == (seen[name].input_tokens,
                                                                          seen[name].output_tokens), (name, billed)
    billed = _billed(s, "cutter")
    cut = seen["cutter"]
    assert billed["requests"] == cut.outcomes["cut"]
    assert billed["prompt_tokens"] == cut.input_tokens
    # at least what the clients received, at most what the worker generated
    assert cut.output_tokens <= billed["completion_tokens"] <= generated, (cut.output_tokens, billed, generated)


THREADS = 8
PER_THREAD = 240
BURST = 24
CUTS_PER_THREAD = 50
