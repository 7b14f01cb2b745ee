"""Deploy-to-first-token time for the bundled chat model (issue 3).

Starts a real `modelport serve` on loopback (its own temp home, no default deployment, the
content filter off so the classifier's load is not counted), then per round: creates a
serverless deployment of SmolLM2-135M-Instruct over REST, waits until it is `succeeded`
(the worker loaded the model and answered), sends one streamed chat request and records the
first token; deletes the deployment (its pool stops) before the next round.

Reference: raw llama-cpp-python loads this GGUF in well under a second and gives its first token
in 60 ms with 2 threads (docs/design.md, "Reference measurements").

    .venv/bin/python benchmarks/bench_deploy.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import start_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mp-bench-deploy-")) / "home"
    server = start_server(home, env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false",
                                           "MODELPORT_CONTENT_FILTER_DEFAULT": "off",
                                           "MODELPORT_WORKER_THREADS": str(args.threads)})
    ready, first = [], []
    try:
        with server.client() as c:
            for i in range(args.rounds):
                name = f"bench{i}"
                t0 = time.perf_counter()
                r = c.post("/api/v1/deployments", json={"name": name, "model": "SmolLM2-135M-Instruct",
                                                        "type": "serverless"})
                r.raise_for_status()
                while (state := c.get(f"/api/v1/deployments/{name}").json()["state"]) == "creating":
                    time.sleep(0.02)
                t_ready = time.perf_counter()
                assert state == "succeeded", state
                with c.stream("POST", "/v1/chat/completions", json={
                        "model": name, "stream": True, "max_tokens": 8, "temperature": 0,
                        "messages": [{"role": "user", "content": "Say hello."}]}) as s:
                    for line in s.iter_lines():
                        if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                            break
                t_first = time.perf_counter()
                ready.append(t_ready - t0)
                first.append(t_first - t0)
                c.delete(f"/api/v1/deployments/{name}").raise_for_status()
                print(f"round {i + 1}: succeeded after {ready[-1]:.2f} s, first token after {first[-1]:.2f} s")
    finally:
        server.stop()
    print()
    print("| measurement | median | min | max |")
    print("|---|---|---|---|")
    for label, xs in (("create -> succeeded", ready), ("create -> first token", first)):
        print(f"| {label} | {statistics.median(xs):.2f} s | {min(xs):.2f} s | {max(xs):.2f} s |")


if __name__ == "__main__":
    main()
