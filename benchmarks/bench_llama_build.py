"""Two builds of llama-cpp-python (or two GGUF files) against each other: prefill of one prompt
and decode steps.

    .venv/bin/python benchmarks/bench_llama_build.py [--python OTHER_VENV/bin/python]
                                                     [--model OTHER.gguf] [--reference-model GGUF]
                                                     [--threads 2]
                                                     [--rounds 4] [--reps 15]

The reference is this interpreter with the bundled SmolLM2-135M Q4_1 GGUF (or `--reference-model`);
the other is `--python` (another venv: another wheel) and/or `--model` (the same weights quantized
otherwise, say). Each
runs the measurement in a child process of its own, rounds alternating so that the machine's load
falls on both alike; the child prints which llama.cpp it loaded (`llama_print_system_info()` and
the path of the shared library) and times, with a context of 16 KV streams and flash attention as
the batching worker uses them:
- prefill: one `llama_decode` of the benchmark's ~19-token counting prompt (what bounds the first
  token: at 8 streams the k-th prompt's first token comes after k prefills);
- decode step at 1, 8 and 16 sequences (one token each, ids in order): what bounds the aggregate.
Medians in milliseconds per round, then the median over rounds and the ratio other / this.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.host import cpu_ticks, steal_since  # noqa: E402

STEPS = (1, 8, 16)


def child(threads: int, reps: int, path: str | None) -> dict[str, object]:
    import llama_cpp as L
    import numpy as np  # noqa: F401  (loaded as the worker loads it)

    from benchmarks.bench_generation import gguf_path, prompt

    quiet = L.llama_log_callback(lambda *_: None)  # held: llama.cpp keeps the pointer
    L.llama_log_set(quiet, None)
    model = L.llama_model_load_from_file((path or gguf_path()).encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 16 * 256, 512, 512, 16
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = L.llama_init_from_model(model, params)
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(512, 0, 1)
    text = prompt(0).encode()
    buf = (L.llama_token * 64)()
    ids = list(buf[:L.llama_tokenize(vocab, text, len(text), buf, 64, False, True)])

    def decode(items: list[tuple[int, list[int], int]]) -> float:
        n = 0
        for seq, tokens, start in items:
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, start + i, 1
                batch.seq_id[n][0], batch.logits[n] = seq, i == len(tokens) - 1
                n += 1
        batch.n_tokens = n
        at = time.perf_counter()
        assert L.llama_decode(ctx, batch) == 0
        return time.perf_counter() - at

    prefill = []
    steps: dict[int, list[float]] = {n: [] for n in STEPS}
    decode([(0, ids, 0)])  # warm-up
    L.llama_memory_clear(mem, True)
    for _ in range(reps):
        prefill.append(decode([(0, ids, 0)]))
        L.llama_memory_clear(mem, True)
    for seq in range(16):  # every sequence holds the prompt, then steps of one token each
        decode([(seq, ids, 0)])
    pos = len(ids)
    for _ in range(reps):
        for n in STEPS:
            steps[n].append(decode([(seq, [100 + seq], pos) for seq in range(n)]))
            for seq in range(n):  # the next step writes the same positions again
                L.llama_memory_seq_rm(mem, seq, pos, -1)
    lib = next((line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if "libggml-cpu" in line), "?")
    info = L.llama_print_system_info().decode().strip()
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {"prefill_ms": statistics.median(prefill) * 1000, "prompt_tokens": len(ids),
            **{f"step{n}_ms": statistics.median(steps[n]) * 1000 for n in STEPS},
            "system_info": info, "library": lib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", help="the other build's interpreter (its venv holds the other wheel)")
    parser.add_argument("--model", help="the other's GGUF file (default: the bundled SmolLM2 Q4_1)")
    parser.add_argument("--reference-model", help="the reference's GGUF file (default: the bundled SmolLM2 Q4_1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.threads, args.reps, args.model)))
        return
    if not (args.python or args.model):
        parser.error("--python or --model is required")
    pythons = {"this": (sys.executable, args.reference_model), "other": (args.python or sys.executable, args.model)}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    ticks = cpu_ticks()
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in pythons}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for _ in range(args.rounds):
        for name, (python, model) in pythons.items():
            out = subprocess.run([python, __file__, "--child", "--threads", str(args.threads), "--reps",
                                  str(args.reps), *(["--model", model] if model else [])],
                                 check=True, capture_output=True, text=True, env=env)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  ({name}: {runs[name][-1]})", file=sys.stderr, flush=True)
    steal = steal_since(ticks)
    print(f"{args.threads} threads, {args.rounds} rounds of {args.reps}, prompt of {runs['this'][0]['prompt_tokens']}"
          f" tokens; load average before {load_before}, after {Path('/proc/loadavg').read_text().split()[:3]};"
          f" CPU steal {steal:.0%}")
    for name, (python, model) in pythons.items():
        print(f"{name:5}: {python} {model or 'bundled SmolLM2 Q4_1'}\n"
              f"       {runs[name][0]['library']}\n       {runs[name][0]['system_info']}")
    print(f"{'ms (median of rounds)':26} {'this':>8} {'other':>8} {'other/this':>10}")
    for key in ("prefill_ms", *(f"step{n}_ms" for n in STEPS)):
        a = statistics.median(float(r[key]) for r in runs["this"])  # type: ignore[arg-type]
        b = statistics.median(float(r[key]) for r in runs["other"])  # type: ignore[arg-type]
        print(f"{key:26} {a:8.2f} {b:8.2f} {b / a:10.2f}")


if __name__ == "__main__":
    main()
