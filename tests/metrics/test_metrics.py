"""GET /metrics on a real server after traffic on every inference path, with canaries.

Only platform admins' API keys read it (401 without a key or with a deployment key, 403 for
anyone else). Its labels are the deployment id and a status, nothing else: no label or value
carries a prompt, an output, a user, a workspace, a key or a deployment's name; and its counts
follow the traffic (answers by status, tokens, throttles, content-filter actions, queue depth).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.inference import CHAT_MODEL, chat_body, create_deployment
from tests.support.server import Server, loopback_client, start_lean
from tests.support.tenants import Tenant, make_tenant, ok

CANARY = "canary" + secrets.token_hex(8)
BLOCKED_WORD = "zorkblocked"
STATUS = re.compile(r"^([1-5][0-9][0-9]|success|error|cancelled|requests|tokens|"
                    r"(prompt|completion)_(filtered|annotated))$")


@dataclass
class Traffic:
    server: Server
    team: Tenant
    name: str
    dep_id: str
    keys: list[str]
    text: str  # the scraped exposition
    admitted: int  # requests of the loop that ran into the rate limit, before its 429


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, metric: str, **labels: str) -> float:
    total = 0.0
    for f in text_string_to_metric_families(text):
        for sample in f.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    s = start_lean(tmp_path_factory.mktemp("metrics") / "home", {CHAT_MODEL: "echo"})
    try:
        team = make_tenant(s)
        owner = team.keys["owner"]
        name = f"metrics-{CANARY}"  # a deployment's name is the user's: it must not show either
        d = create_deployment(s, name, CHAT_MODEL, key=owner)
        key = d["keys"]["primary"]
        with s.client(owner) as c:
            ok(c.patch(f"/api/v1/deployments/{name}", json={"rate_limits": {"requests_per_minute": 60}}))
            ok(c.put("/api/v1/safety/blocklists/canaries", json={"terms": [BLOCKED_WORD]}))
            cfg = ok(c.get(f"/api/v1/deployments/{name}/content-filter")).json()
            ok(c.put(f"/api/v1/deployments/{name}/content-filter",
                     json={**cfg, "enabled": True, "blocklists": ["canaries"]}))
        prompt = f"The {CANARY} garden has red roses and {CANARY} tulips"
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0) as c:
            c.chat.completions.create(model=name, max_tokens=4, **chat_body(prompt))  # success
            for _ in c.chat.completions.create(model=name, max_tokens=4, stream=True, **chat_body(prompt)):
                pass  # streamed
            with pytest.raises(openai.BadRequestError):  # blocked by the filter (a blocklist)
                c.chat.completions.create(model=name, max_tokens=4, **chat_body(f"{prompt} {BLOCKED_WORD}"))
            with pytest.raises(openai.BadRequestError):  # refused input
                c.chat.completions.create(model=name, messages=[{"role": CANARY, "content": prompt}])
            admitted = 0
            with pytest.raises(openai.RateLimitError):
                for _ in range(12):  # 10 per 10 seconds
                    c.chat.completions.create(model=name, max_tokens=1, **chat_body(prompt))
                    admitted += 1
        with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {team.keys['reader']}"}) as c:
            c.post("/v1/chat/completions", json=chat_body(prompt, model="no-such-" + CANARY))  # 404
        with s.client() as admin:
            text = ok(admin.get("/metrics")).text
        yield Traffic(s, team, name, d["id"], [key, d["keys"]["secondary"], *team.keys.values()], text, admitted)
    finally:
        s.stop()


def test_only_platform_admins_read_metrics(traffic: Traffic) -> None:
    s = traffic.server
    with loopback_client(base_url=s.url) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    for role in ("owner", "contributor", "reader"):
        with s.client(traffic.team.keys[role]) as c:
            r = c.get("/metrics")
            assert r.status_code == 403 and "platform admin" in r.json()["error"]["message"]
    with s.client(traffic.keys[0]) as c:  # a deployment key
        assert c.get("/metrics").status_code == 401
    with s.client() as admin:
        r = ok(admin.get("/metrics"))
        assert r.headers["content-type"].startswith("text/plain") and "modelport_requests_total" in r.text


def test_no_label_or_value_carries_content_users_keys_or_names(traffic: Traffic) -> None:
    text = traffic.text
    forbidden = [CANARY, BLOCKED_WORD, traffic.name, traffic.team.name, traffic.team.id, "red roses",
                 *traffic.team.users.values(), *traffic.team.user_ids.values(), *traffic.team.key_ids.values(),
                 *traffic.keys, *(k.split("_")[1] for k in traffic.keys)]  # secrets and their lookup ids
    for item in forbidden:
        assert item not in text, item
    seen_labels = set()
    for f in text_string_to_metric_families(text):
        assert f.name.startswith("modelport_"), f.name
        for sample in f.samples:
            seen_labels |= set(sample.labels)
            assert set(sample.labels) <= {"deployment", "status", "le"}, sample
            dep = sample.labels.get("deployment")
            assert dep is None or re.fullmatch(r"dep_[0-9a-f]+|none", dep), sample
            status = sample.labels.get("status")
            assert status is None or STATUS.match(status), sample
    assert seen_labels == {"deployment", "status", "le"}


def test_counts_follow_the_traffic(traffic: Traffic) -> None:
    text, dep = traffic.text, traffic.dep_id
    assert value(text, "modelport_requests_total", deployment=dep, status="200") == 2 + traffic.admitted
    assert value(text, "modelport_requests_total", deployment=dep, status="429") == 1
    assert value(text, "modelport_requests_total", deployment=dep, status="400") == 2
    assert value(text, "modelport_requests_total", deployment="none", status="404") == 1
    assert value(text, "modelport_request_duration_seconds_count", deployment=dep) == 2 + traffic.admitted + 3
    assert value(text, "modelport_throttled_requests_total", deployment=dep, status="requests") == 1
    assert value(text, "modelport_output_tokens_total", deployment=dep, status="success") == 4 + 4 + traffic.admitted
    assert value(text, "modelport_input_tokens_total", deployment=dep, status="success") > 0
    assert value(text, "modelport_content_filter_actions_total", deployment=dep, status="prompt_filtered") == 1
    assert "modelport_queue_depth" in families(text)
    assert value(text, "modelport_queue_depth", deployment=dep) == 0
