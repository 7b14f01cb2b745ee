"""Server time per portal page with a realistic catalog: 100 models and 50 deployments.

Run:  .venv/bin/python benchmarks/bench_portal.py [--requests 50] [--models 100] [--deployments 50]

A real `modelport serve` on loopback (models on the echo runtime) is filled through its own
REST API: `--models` small valid GGUF models imported into the admin's workspace (plus the two
bundled ones), `--deployments` serverless deployments, and some traffic so the usage chart has
data. Then each page is fetched `--requests` times, one at a time, by a signed-in httpx client;
the time from request to the last byte is reported (p50 / p95 / max), with the page's size.

Reference in the same run: the REST API call that reads the same data as JSON (the catalog page
against `GET /api/v1/models?limit=100`, the deployments page against `GET /api/v1/deployments`,
the compliance page against `GET /api/v1/policies/compliance`; the seven starter policies are in
force as platform policies, each made `@audit`),
and `/healthz` for the fixed cost of a request. Target: every page under 100 ms p50.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import ECHO_MODEL, start_lean  # noqa: E402
from tests.support.tenants import import_tiny_gguf, ok  # noqa: E402

SMOLLM2 = "SmolLM2-135M-Instruct"


def timed(client: httpx.Client, path: str, n: int) -> tuple[list[float], int]:
    client.get(path)  # warm
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        size = len(r.content)
    return times, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--deployments", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    server = start_lean(tmp / "home", {ECHO_MODEL: "echo", SMOLLM2: "echo"}, MODELPORT_FINETUNE_CONCURRENCY="0",
                        MODELPORT_LOG_LEVEL="WARNING")
    try:
        t0 = time.perf_counter()
        with server.client() as admin:
            for i in range(args.models):
                import_tiny_gguf(admin, tmp / "models", f"bench-model-{i:03d}",
                                 card=f"# Model {i}\n\nA *small* model for the benchmark.\n\n- item\n- item\n")
            for i in range(args.deployments):
                ok(admin.post("/api/v1/deployments", json={"name": f"bench-dep-{i:02d}", "model": SMOLLM2,
                                                           "type": "serverless"}))
            deadline = time.monotonic() + 300
            while ok(admin.get("/api/v1/deployments/bench-dep-00")).json()["state"] != "succeeded":
                assert time.monotonic() < deadline, "deployment did not start"
                time.sleep(0.2)
            for _ in range(20):
                ok(admin.post("/v1/chat/completions", json={"model": "bench-dep-00", "max_tokens": 8,
                                                           "messages": [{"role": "user", "content": "hi there"}]}))
            jobs_ds = b'{"prompt": "p", "completion": "c"}\n' * 10
            ok(admin.post("/api/v1/datasets?name=bench-data", content=jobs_ds,
                          headers={"Content-Type": "application/octet-stream"}))
            job = ok(admin.post("/api/v1/finetuning/jobs", json={"model": SMOLLM2, "dataset": "bench-data"})).json()
            # The starter policies, in force as platform policies, all @audit (so nothing is refused
            # or suspended): the policy and compliance pages evaluate them over every deployment and model.
            for f in sorted((ROOT / "policies").glob("*.cedar")):
                ok(admin.put(f"/api/v1/policies/{f.stem}", json={"cedar": "@audit\n" + f.read_text(),
                                                                  "scope": "platform"}))
        print(f"seeded {args.models} models, {args.deployments} deployments in {time.perf_counter() - t0:.0f} s")

        web = httpx.Client(base_url=server.url, timeout=60)
        form = web.get("/signin").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        assert web.post("/signin", data={"csrf_token": token, "api_key": server.admin_key}).status_code == 303
        api = server.client()
        pages = ["/catalog", f"/catalog/{SMOLLM2}", "/catalog/bench-model-050", "/deployments",
                 "/deployments/bench-dep-00", "/deploy", "/playground", "/datasets", "/finetuning",
                 f"/finetuning/{job['id']}", "/policies", "/policies/compliance", "/workspace", "/admin",
                 "/signin", "/docs"]
        rows = []
        for path in pages:
            times, size = timed(web, path, args.requests)
            rows.append((path, times, size))
        refs = [("/healthz", api), ("/api/v1/models?limit=100", api), ("/api/v1/deployments", api),
                ("/api/v1/policies/compliance", api)]
        ref_rows = [(path, *timed(c, path, args.requests)) for path, c in refs]
        web.close()
        api.close()
    finally:
        server.stop()

    def line(path: str, times: list[float], size: int) -> str:
        q = statistics.quantiles(times, n=20)
        return (f"| `{path}` | {statistics.median(times):.1f} | {q[18]:.1f} | {max(times):.1f} | "
                f"{size / 1024:.1f} |")

    print(f"\nserver time per request, {args.requests} sequential requests each, loopback (ms; size KB)\n")
    print("| page | p50 | p95 | max | HTML KB |\n|---|---|---|---|---|")
    for r in rows:
        print(line(*r))
    print("\nreferences (same run)\n\n| route | p50 | p95 | max | KB |\n|---|---|---|---|---|")
    for r in ref_rows:
        print(line(*r))
    med = {p: statistics.median(t) for p, t, _ in rows + ref_rows}
    print(f"\ncatalog page / GET /api/v1/models?limit=100: {med['/catalog'] / med['/api/v1/models?limit=100']:.2f}x; "
          f"deployments page / GET /api/v1/deployments: {med['/deployments'] / med['/api/v1/deployments']:.2f}x; "
          f"compliance page / GET /api/v1/policies/compliance: "
          f"{med['/policies/compliance'] / med['/api/v1/policies/compliance']:.2f}x")
    worst = max((statistics.median(t), p) for p, t, _ in rows)
    print(f"slowest page p50: {worst[0]:.1f} ms ({worst[1]}); target < 100 ms: "
          f"{'met' if worst[0] < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
