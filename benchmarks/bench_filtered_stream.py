"""Streamed generation with the content filter on against the same deployment with it off.

    .venv/bin/python benchmarks/bench_filtered_stream.py [--threads 1] [--tokens 400] [--rounds 5]

A real `modelport serve` with three serverless deployments of the bundled SmolLM2 (llama.cpp,
the same worker pool): `plain` (filter off), `buffered` (the default filter: every category at
medium, each output segment screened before it is sent) and `async` (the same thresholds,
streaming mode asynchronous: text is sent at once, screened behind). Each round streams one
chat completion of up to --tokens tokens from each deployment over the OpenAI-compatible API
(raw HTTP, server-sent events), greedy, with `stream_options.include_usage` for the exact token
count. Deployments alternate within each round, so load from elsewhere falls on all alike.

Measured per deployment (medians of the rounds): tokens/s over the whole request (completion
tokens / time from sending the request to the last event), time to the first content
character, the finish reason. Compared: tokens/s filtered / plain (issue 5's target: at least
90%) and the time to first token added by buffered mode (the first segment is held until it
is screened). Screening runs in the gateway process on the same machine as the decoding
threads: with --threads equal to the number of cores the classifier competes with decoding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.conftest import start_server  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
#: A benign request whose greedy answer the bundled classifier lets through. The first choice, a
#: story about a family's vegetable garden, was cut by a `hate` false positive ("selecting the
#: most fertile seeds ... a small plot of land"), as was a water-cycle explanation: a quality
#: problem reported with issue 5, and useless for a speed comparison, which needs whole answers.
PROMPT = "Explain how to bake a loaf of bread at home, step by step, in detail."
NAMES = ("plain", "buffered", "async")


def stream_once(client: httpx.Client, name: str, key: str, tokens: int) -> dict:
    body = {"model": name, "stream": True, "max_tokens": tokens, "temperature": 0, "seed": 7,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": PROMPT}]}
    started = time.perf_counter()
    first = None
    finish = None
    usage = None
    with client.stream("POST", "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.perf_counter()
                finish = choice.get("finish_reason") or finish
            usage = event.get("usage") or usage
    ended = time.perf_counter()
    completion = usage["completion_tokens"] if usage else 0
    return {"tps": completion / (ended - started), "ttft": (first or ended) - started, "tokens": completion,
            "finish": finish}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp decoding threads of the worker")
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mp-bench-filter-")) / "home"
    server = start_server(home, env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
                                           "MODELPORT_CONTENT_FILTER_DEFAULT": "on",
                                           "MODELPORT_WORKER_THREADS": str(args.threads)})
    results: dict[str, list[dict]] = {n: [] for n in NAMES}
    try:
        keys = {}
        with server.client() as c:
            for name in NAMES:
                r = c.post("/api/v1/deployments", json={"name": name, "model": MODEL, "type": "serverless"})
                r.raise_for_status()
                keys[name] = r.json()["keys"]["primary"]
            for name in NAMES:
                while (state := c.get(f"/api/v1/deployments/{name}").json()["state"]) == "creating":
                    time.sleep(0.1)
                assert state == "succeeded", state
            cfg = c.get("/api/v1/deployments/plain/content-filter").json()
            c.put("/api/v1/deployments/plain/content-filter", json={**cfg, "enabled": False}).raise_for_status()
            cfg = c.get("/api/v1/deployments/async/content-filter").json()
            c.put("/api/v1/deployments/async/content-filter",
                  json={**cfg, "streaming": "asynchronous"}).raise_for_status()
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for name in NAMES:  # warm up: the worker, the classifier, the connection
                stream_once(client, name, keys[name], 16)
            for _ in range(args.rounds):
                for name in NAMES:
                    results[name].append(stream_once(client, name, keys[name], args.tokens))
    finally:
        server.stop()

    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("tps", "ttft", "tokens")} for n, rs in results.items()}
    print(f"SmolLM2-135M Q4_1, {args.threads} decoding thread(s), up to {args.tokens} tokens, "
          f"{args.rounds} rounds, medians")
    print(f"{'deployment':<10} {'tokens/s':>9} {'first token':>12} {'tokens':>7}  finish reasons")
    for name in NAMES:
        finishes = ", ".join(sorted({str(r['finish']) for r in results[name]}))
        m = med[name]
        print(f"{name:<10} {m['tps']:>9.1f} {m['ttft'] * 1000:>9.0f} ms {m['tokens']:>7.0f}  {finishes}")
    plain = med["plain"]
    for name in ("buffered", "async"):
        cut = sum(r["finish"] == "content_filter" for r in results[name])
        if cut:
            print(f"{name}: {cut} of {len(results[name])} answers were cut by the filter: tokens/s not comparable")
        ratio = med[name]["tps"] / plain["tps"]
        print(f"{name}: {ratio:.1%} of the unfiltered tokens/s (target >= 90%: {'met' if ratio >= 0.9 else 'MISSED'}); "
              f"first token +{(med[name]['ttft'] - plain['ttft']) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
