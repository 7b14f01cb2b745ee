"""Fair shares under a burst: another workspace's first token while one workspace's burst of
streams fills a shared serverless pool.

    .venv/bin/python benchmarks/bench_fairness.py                  (echo at 10 ms a token)
    .venv/bin/python benchmarks/bench_fairness.py --model smollm2  (the bundled SmolLM2, 2 threads)

Set-up: a real `modelport serve` (its own temporary home, content filter off), two workspaces A
and B, each with a serverless deployment of the bundled chat model, so both share one pool
(held at `--max-instances`, default 1, so that only admission is measured, not growth). Steps:

1. B alone, `--samples` streamed requests one after another: its first token on an idle pool
   (reference 1);
2. A opens `--burst` streams at once (prompts of about 20 tokens, `max_tokens` 96, as in the
   generation benchmark); once they fill the queue, B sends `--samples` streamed requests one
   after another: its first token under the burst (the figure; target < 1 s);
3. reference 2, measured in the same run: what a single first-come-first-served queue would
   have given B, the number of A's requests waiting ahead of B times A's median stream time.

A's burst is cancelled once B's samples are in (`--full` waits for it instead and reports A's
own first-token percentiles). Print: B idle p50, B under the burst p50 / max, the FIFO
estimate, and the ratio. The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.paced_echo import ECHO_10MS  # noqa: E402
from tests.support.inference import CHAT_MODEL, create_deployment  # noqa: E402
from tests.support.server import start_lean  # noqa: E402
from tests.support.tenants import make_tenant  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle "
          "on a stormy night by the sea")  # about 20 tokens


async def stream(client: httpx.AsyncClient, key: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds to the end) of one streamed chat request."""
    start = time.monotonic()
    first = None
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "stream": True,
            "temperature": 0}
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    first = time.monotonic() - start
    return (first if first is not None else float("nan")), time.monotonic() - start


def pool_of(url: str, admin_key: str) -> dict:
    r = httpx.get(f"{url}/api/v1/pools", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    r.raise_for_status()
    return next(p for p in r.json() if p["kind"] == "serverless")


async def run(url: str, admin_key: str, ka: str, kb: str, args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.burst + 16)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        idle = [(await stream(client, kb, args.b_tokens))[0] for _ in range(args.samples)]
        t0 = time.monotonic()
        burst = [asyncio.create_task(stream(client, ka, args.max_tokens)) for _ in range(args.burst)]
        await asyncio.to_thread(wait_until, lambda: pool_of(url, admin_key)["waiting"] >= args.burst - 4,
                                120, 0.05, "A's burst to fill the queue")
        queued = pool_of(url, admin_key)
        under = []
        ahead = []
        for _ in range(args.samples):
            ahead.append(pool_of(url, admin_key)["waiting"])
            under.append((await stream(client, kb, args.b_tokens))[0])
        served = pool_of(url, admin_key)
        done = [t.result() for t in burst if t.done()]
        if args.full:
            done = list(await asyncio.gather(*burst))
        else:
            for t in burst:
                t.cancel()
            await asyncio.gather(*burst, return_exceptions=True)
        a_stream = statistics.median(end - first for first, end in done) if done else float("nan")
        return {"idle": idle, "under": under, "ahead": ahead, "queued": queued, "served": served, "a_done": len(done),
                "a_stream_s": a_stream, "a_first": sorted(f for f, _ in done), "elapsed": time.monotonic() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["echo", "smollm2"], default="echo")
    ap.add_argument("--burst", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--b-tokens", type=int, default=8, help="max_tokens of B's requests")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-instances", type=int, default=1)
    ap.add_argument("--slots", type=int, default=None, help="requests one worker takes at once: "
                    "MODELPORT_LLAMACPP_PARALLEL for llama.cpp (its engine's sequences), MODELPORT_WORKER_SLOTS "
                    "otherwise; default: the runtime's own")
    ap.add_argument("--share", type=float, default=0.75, help="MODELPORT_POOL_WORKSPACE_SHARE")
    ap.add_argument("--full", action="store_true", help="wait for A's whole burst")
    args = ap.parse_args()

    runtime = ECHO_10MS if args.model == "echo" else "llamacpp"
    overrides = {CHAT_MODEL: ECHO_10MS} if args.model == "echo" else {}
    env = {"MODELPORT_CONTENT_FILTER_DEFAULT": "off", "MODELPORT_WORKER_THREADS": str(args.threads),
           "MODELPORT_POOL_MAX_INSTANCES": str(args.max_instances),
           "MODELPORT_QUEUE_PER_DEPLOYMENT": str(args.burst + 8),
           "MODELPORT_POOL_WORKSPACE_SHARE": str(args.share)}
    if args.slots and runtime == "llamacpp":
        env["MODELPORT_LLAMACPP_PARALLEL"] = str(args.slots)
    elif args.slots:
        env["MODELPORT_WORKER_SLOTS"] = json.dumps({runtime: args.slots})
    home = Path(tempfile.mkdtemp(prefix="mp-bench-fair-")) / "home"
    server = start_lean(home, overrides, **env)
    try:
        a, b = make_tenant(server, roles=("owner",)), make_tenant(server, roles=("owner",))
        ka = create_deployment(server, "burst", CHAT_MODEL, key=a.keys["owner"])["keys"]["primary"]
        kb = create_deployment(server, "next", CHAT_MODEL, key=b.keys["owner"])["keys"]["primary"]
        load = os.getloadavg()
        r = asyncio.run(run(server.url, server.admin_key, ka, kb, args))
    finally:
        server.stop()

    fifo = statistics.median(r["ahead"]) * r["a_stream_s"] / max(r["queued"]["slots"], 1)
    p50 = statistics.median(r["under"])
    print(f"model {args.model} ({runtime}), burst {args.burst} x max_tokens {args.max_tokens}, "
          f"pool when the burst was queued: {r['queued']['instances']} instance(s), {r['queued']['slots']} slot(s); "
          f"after B's samples: {r['served']['instances']} instance(s) (cap {args.max_instances}); share {args.share}; "
          f"load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"B alone, first token p50:            {statistics.median(r['idle']) * 1000:8.0f} ms")
    print(f"B under A's burst, first token p50:  {p50 * 1000:8.0f} ms  (max {max(r['under']) * 1000:.0f} ms; "
          f"target < 1000 ms: {'met' if p50 < 1 else 'NOT met'})")
    print("B under the burst, each sample (ms):  " + ", ".join(f"{u * 1000:.0f}" for u in r["under"]))
    print(f"A's requests waiting ahead of B:     {statistics.median(r['ahead']):8.0f}  "
          f"(A's median stream {r['a_stream_s']:.2f} s, {r['a_done']} of A's finished)")
    if r["a_done"]:
        print(f"FIFO estimate for B (reference 2):   {fifo * 1000:8.0f} ms  -> fair queue is {fifo / p50:.0f}x sooner")
    else:  # the estimate needs A's stream time, and no stream of A's ended before B's samples were in
        print("FIFO estimate for B (reference 2):        n/a  (none of A's streams ended yet: run with --full)")
    if args.full and r["a_first"]:
        a_first = r["a_first"]
        print(f"A's own first token p50 / p95:       {statistics.median(a_first) * 1000:8.0f} / "
              f"{a_first[int(0.95 * (len(a_first) - 1))] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
