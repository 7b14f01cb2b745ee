"""Nothing is lost across a crash: the server is killed (SIGKILL: no shutdown code runs) the
moment the last of a batch of answers has arrived, while other streams are mid-generation.

After a restart on the same home, every answer whose last byte a client received is billed
exactly its usage (it was committed before that byte left), and the streams in flight at the
kill are billed at most what their workers could have generated (here: nothing was committed
for them, or what was, within their max_tokens).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.inference import CHAT_MODEL, create_deployment
from tests.support.runtimes import SLOW
from tests.support.server import lean_env, loopback_client, start_server
from tests.support.tenants import ok

ENV = lean_env({CHAT_MODEL: SLOW})
FLIGHT_MAX_TOKENS = 400  # 16 s at 40 ms a token: still generating at the kill


def _usage(url: str, key: str, name: str) -> dict:
    with loopback_client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        return ok(c.get(f"/api/v1/deployments/{name}/usage")).json()


@pytest.mark.slow
def test_sigkill_loses_no_sent_answer_and_bills_in_flight_at_most_generated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = start_server(home, env_extra=ENV)
    keys = {}
    try:
        for name in ("done", "flight"):
            keys[name] = create_deployment(s, name, CHAT_MODEL, type="dedicated")["keys"]["primary"]
        started = threading.Event()
        flight_seen = [0]

        def in_flight(i: int) -> None:
            body = {"model": "flight", "messages": [{"role": "user", "content": f"long call {i}"}],
                    "max_tokens": FLIGHT_MAX_TOKENS, "stream": True}
            try:
                with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {keys['flight']}"},
                                  timeout=120) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            flight_seen[0] += 1
                            started.set()
            except httpx.HTTPError:
                pass  # the server is killed under it

        flights = [threading.Thread(target=in_flight, args=(i,)) for i in range(2)]
        for t in flights:
            t.start()
        assert started.wait(60)

        def complete(i: int) -> tuple[int, int]:
            body = {"model": "done", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3}
            with loopback_client(base_url=s.url, headers={"Authorization": f"Bearer {keys['done']}"}, timeout=120) as c:
                if i % 2:
                    u = ok(c.post("/v1/chat/completions", json=body)).json()["usage"]
                    return u["prompt_tokens"], u["completion_tokens"]
                r = ok(c.post("/v1/chat/completions",
                              json={**body, "stream": True, "stream_options": {"include_usage": True}}))
                lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
                assert lines[-1] == "[DONE]"
                u = json.loads(lines[-2])["usage"]
                return u["prompt_tokens"], u["completion_tokens"]

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(complete, range(16)))
        s.proc.kill()  # at once: no time for any background flush
        s.proc.wait(30)
        for t in flights:
            t.join(60)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()

    s = start_server(home, env_extra=ENV)
    try:
        done = _usage(s.url, s.admin_key, "done")
        assert done["requests"] == len(got)
        assert (done["prompt_tokens"], done["completion_tokens"]) == (sum(p for p, _ in got), sum(c for _, c in got))
        flight = _usage(s.url, s.admin_key, "flight")
        assert flight["requests"] <= 2
        assert flight["completion_tokens"] <= 2 * FLIGHT_MAX_TOKENS
        assert flight_seen[0] > 0  # they were generating when the server died
    finally:
        s.stop()
