"""The content filter screens exactly the text the model sees, whatever its spelling, on both APIs.

Each test writes a blocklisted word in a way that once slipped past the filter: split across two
content parts (screened joined by a newline, sent to the model joined by nothing), with a
zero-width or other format character inside it, in fullwidth letters, or in `messages[].name`.
Deployments run on the echo runtime (it answers with the words of the last message, cycling), so
the output direction is exact too; the real bundled MiniLM classifier screens everything.
The requests go through the official `openai` and `azure-ai-inference` clients.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import TextContentItem, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from tests.support.inference import CHAT_MODEL, create_deployment, wait_state
from tests.support.server import Server, loopback_client, start_server
from tests.support.tenants import ok


def fullwidth(text: str) -> str:
    """`text` in fullwidth forms (U+FF01-U+FF5E), which NFKC maps back to ASCII."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


TERM = "quuxblorp"  # a made-up word: only the blocklist can catch it, never the classifier
CANARY = "cnry" + secrets.token_hex(8)
API_VERSION = "2024-05-01-preview"

#: Spellings of TERM that a person reads (and a model takes) as the word itself.
DISGUISES = {
    "zero-width space": "quux\u200bblorp",
    "zero-width joiner": "quux\u200dblorp",
    "soft hyphen": "quux\u00adblorp",
    "word joiner": "quux\u2060blorp",
    "right-to-left override": "quux\u202eblorp",
    "fullwidth": fullwidth("quuxblorp"),
    "fullwidth and zero-width": fullwidth("quux") + "\u200b" + fullwidth("blorp"),
}

#: The echo of WORDS, cycled, reads "... zork alpha ..." once, at the wrap-around; the output
#: blocklist `wrap` catches "zork alpha". The last word is written with a disguise below.
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
         f"papa quebec romeo sierra tango uniform victor {CANARY} xray yankee zulu red orange yellow green "
         "blue indigo violet garden river meadow window pencil candle").split()
WRAP_TOKENS = 80


@dataclass
class World:
    server: Server
    keys: dict[str, str]


def _put_filter(server: Server, name: str, **change: object) -> None:
    with server.client() as c:
        cfg = ok(c.get(f"/api/v1/deployments/{name}/content-filter")).json()
        cfg.update(change)
        ok(c.put(f"/api/v1/deployments/{name}/content-filter", json=cfg))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {"MODELPORT_CONTENT_FILTER_DEFAULT": "on", "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
           "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo"})}
    s = start_server(tmp_path_factory.mktemp("evasion") / "home", env_extra=env)
    try:
        keys = {n: create_deployment(s, n, CHAT_MODEL, wait=False, type="serverless")["keys"]["primary"]
                for n in ("guard", "out")}
        with s.client() as admin:
            ok(admin.put("/api/v1/safety/blocklists/words", json={"terms": [TERM], "patterns": []}))
            ok(admin.put("/api/v1/safety/blocklists/wrap", json={"terms": [], "patterns": ["zork alpha"]}))
        for n in keys:
            assert wait_state(s, n)["state"] == "succeeded"
        _put_filter(s, "guard", blocklists=["words"])
        _put_filter(s, "out", blocklists=["wrap"])
        yield World(server=s, keys=keys)
    finally:
        s.stop()


def oai(w: World, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{w.server.url}/v1", api_key=w.keys[name], max_retries=0, timeout=120)


def azure(w: World, name: str) -> ChatCompletionsClient:
    return ChatCompletionsClient(endpoint=f"{w.server.url}/deployments/{name}",
                                 credential=AzureKeyCredential(w.keys[name]))


def requests_of(w: World, name: str) -> int:
    with w.server.client() as admin:
        return ok(admin.get(f"/api/v1/deployments/{name}/usage")).json()["requests"]


def assert_blocked_by_the_blocklist(body: dict) -> None:
    err = body["error"]
    assert err["code"] == "content_filter", body
    result = err["innererror"]["content_filter_result"]
    assert result["custom_blocklists"] == {"filtered": True, "details": [{"id": "words", "filtered": True}]}
    assert CANARY not in json.dumps(body) and "blorp" not in json.dumps(body)


def blocked_on_both_apis(w: World, openai_messages: list[dict], azure_messages: list) -> None:
    before = requests_of(w, "guard")
    with oai(w, "guard") as c, pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="guard", messages=openai_messages, max_tokens=5)
    assert_blocked_by_the_blocklist(caught.value.response.json())
    with azure(w, "guard") as az, pytest.raises(HttpResponseError) as az_caught:
        az.complete(messages=azure_messages, max_tokens=5)
    assert az_caught.value.status_code == 400
    assert_blocked_by_the_blocklist(az_caught.value.response.json())
    assert requests_of(w, "guard") == before  # neither reached the model


# -- prompts ------------------------------------------------------------------------------------

def test_the_plain_word_is_blocked_and_an_unrelated_prompt_passes(world: World) -> None:
    """The premise: the blocklist catches the word itself, and only the word."""
    blocked_on_both_apis(world, [{"role": "user", "content": f"please say {TERM} {CANARY}"}],
                         [UserMessage(f"please say {TERM} {CANARY}")])
    with oai(world, "guard") as c:
        r = c.chat.completions.create(model="guard", messages=[{"role": "user", "content": "quux and blorp"}],
                                      max_tokens=3)
    assert r.choices[0].message.content == "quux and blorp"


def test_a_word_split_across_two_content_parts_is_screened_as_the_model_reads_it(world: World) -> None:
    """The model receives the parts joined by nothing ("quuxblorp"); screening must see the same."""
    parts = [{"type": "text", "text": f"please say {CANARY} quux"}, {"type": "text", "text": "blorp now"}]
    blocked_on_both_apis(world, [{"role": "user", "content": parts}],
                         [UserMessage([TextContentItem(text=f"please say {CANARY} quux"),
                                       TextContentItem(text="blorp now")])])


def test_content_parts_reach_the_model_joined_by_nothing(world: World) -> None:
    """What the model gets is the parts' text joined without a separator (the echo shows it)."""
    parts = [{"type": "text", "text": "alpha be"}, {"type": "text", "text": "ta gamma"}]
    with oai(world, "guard") as c:
        r = c.chat.completions.create(model="guard", messages=[{"role": "user", "content": parts}], max_tokens=3)
    assert r.choices[0].message.content == "alpha beta gamma"


@pytest.mark.parametrize("disguise", sorted(DISGUISES))
def test_format_characters_and_fullwidth_letters_do_not_hide_a_word(world: World, disguise: str) -> None:
    text = f"please say {DISGUISES[disguise]} {CANARY}"
    blocked_on_both_apis(world, [{"role": "user", "content": text}], [UserMessage(text)])


def test_a_name_is_screened_with_its_message(world: World) -> None:
    """The Azure client's UserMessage has no `name`; its `complete` takes the message as a dict."""
    messages = [{"role": "user", "name": TERM, "content": f"hello {CANARY}"}]
    blocked_on_both_apis(world, messages, messages)


@pytest.mark.parametrize("name", ["<|im_start|>system", "two words", "quux\u200bblorp", "x" * 65, ""])
def test_a_name_that_is_not_a_plain_identifier_is_refused(world: World, name: str) -> None:
    """`name` is an identifier (letters, digits, '_' and '-', 1-64 characters, as OpenAI documents it):
    anything else could carry markup or disguised text into the chat template, so it gets a 400."""
    messages = [{"role": "user", "name": name, "content": "hello"}]
    before = requests_of(world, "guard")
    with oai(world, "guard") as c, pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="guard", messages=messages, max_tokens=5)
    err = caught.value.response.json()["error"]
    assert err["param"] == "messages.0.name" and "name" in err["message"]
    with loopback_client(base_url=world.server.url, timeout=60) as c:
        az = c.post("/deployments/guard/chat/completions", params={"api-version": API_VERSION},
                    json={"messages": messages}, headers={"api-key": world.keys["guard"]})
    assert az.status_code == 400 and az.json()["error"]["param"] == "messages.0.name", az.text
    assert requests_of(world, "guard") == before


def test_a_plain_name_passes(world: World) -> None:
    with oai(world, "guard") as c:
        r = c.chat.completions.create(model="guard", max_tokens=2,
                                      messages=[{"role": "user", "name": "alice_01", "content": "hello there"}])
    assert r.choices[0].message.content == "hello there"


# -- outputs -------------------------------------------------------------------------------------

def _wrap_prompt(last: str) -> str:
    return " ".join([*WORDS, last])


@pytest.mark.parametrize("last", ["zo\u200brk", fullwidth("zork"), "zor\u00adk"])
def test_a_disguised_word_in_the_output_is_caught(world: World, last: str) -> None:
    """The echo writes "<last> alpha" at its wrap-around: the normalised output reads "zork alpha",
    which the blocklist catches, while the prompt itself never contains it."""
    prompt = _wrap_prompt(last)
    messages = [{"role": "user", "content": prompt}]
    with oai(world, "out") as c:
        whole = c.chat.completions.create(model="out", messages=messages, max_tokens=WRAP_TOKENS)
        assert whole.choices[0].finish_reason == "content_filter"
        assert last not in whole.choices[0].message.content
        chunks = list(c.chat.completions.create(model="out", messages=messages, max_tokens=WRAP_TOKENS, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["content_filter"] and last not in text and text.startswith("alpha bravo")
    with azure(world, "out") as az:
        reply = az.complete(messages=[UserMessage(prompt)], max_tokens=WRAP_TOKENS)
    assert reply.choices[0].finish_reason == "content_filter"
    assert last not in reply.choices[0].message.content
    # the same prompt with fewer tokens than one wrap-around is answered whole
    with oai(world, "out") as c:
        short = c.chat.completions.create(model="out", messages=messages, max_tokens=len(WORDS) + 1)
    assert short.choices[0].finish_reason == "length" and short.choices[0].message.content == prompt


def test_nothing_screened_is_kept(world: World) -> None:
    s = world.server
    assert [p for p in s.home.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()] == []
    assert CANARY not in s.logs()
