"""What the typed answers cost the gateway: `python benchmarks/bench_wire_shapes.py`.

The inference answers are TypedDicts (inference/protocol.py) built by builders.py and written by
orjson. Until 2026-12-02 they were pydantic models dumped with `model_dump` (a whole chat answer
cost 24.7 µs against 2.3 µs for a dict literal on a quiet machine; now they cost what the dicts
do). This measures, per answer piece, in this process (one core), the builders against bare dict
literals of the same answers, and checks that both give the same bytes:

- one streamed chat chunk (a content delta), without and with the content filter's results;
- one streamed text-completion chunk with logprobs;
- a whole chat answer (one choice, 32 tokens of text).

Prints the median of `--rounds` timings of `--n` pieces each, in microseconds per piece.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from modelport.inference import tools
from modelport.inference.builders import ChatChunks, ChoiceOut, CompletionChunks, chat_completion, sse
from modelport.safety.backends.base import CATEGORIES
from modelport.workers.client import StreamUsage

RESULTS = {c: {"filtered": False, "severity": "safe"} for c in CATEGORIES}


class Filter:
    """Stands in for filtering.RequestFilter: only the two results the builders read."""

    def results(self, index: int) -> dict[str, Any]:
        return RESULTS

    def prompt_filter_results(self) -> list[dict[str, Any]]:
        return [{"prompt_index": 0, "content_filter_results": RESULTS}]


def dict_chat_chunk(piece: str) -> bytes:  # what handlers.py wrote before the typed answers
    return sse({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]})


def dict_finish(flt: Filter) -> bytes:
    c: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    c["content_filter_results"] = flt.results(0)
    return sse({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [c]})


def dict_completion_chunk(piece: str, lps: list[dict[str, Any]]) -> bytes:
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in lps:
        out["tokens"].append(t["token"])
        out["token_logprobs"].append(t["logprob"])
        out["top_logprobs"].append({a["token"]: a["logprob"] for a in t["top_logprobs"]})
        out["text_offset"].append(0)
    return sse({"id": "cmpl-x", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": piece, "logprobs": out, "finish_reason": None}]})


def dict_whole(text: str) -> bytes:
    return orjson.dumps({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 32, "total_tokens": 42}})


def timed(fn: Callable[[], bytes], n: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    flt = Filter()
    chat = ChatChunks("chatcmpl-x", 1, "m", None, include_usage=False, logprobs=False)
    filtered = ChatChunks("chatcmpl-x", 1, "m", flt, include_usage=False, logprobs=False)  # type: ignore[arg-type]
    lps = [{"token": " word", "logprob": -0.25, "top_logprobs": [{"token": " word", "logprob": -0.25}]}]
    completion = CompletionChunks("cmpl-x", 1, "m", None, include_usage=False, logprobs=True)
    piece = tools.Content(" word", lps)
    text = " ".join(["word"] * 32)
    whole = ChoiceOut(text=[text], finish_reason="stop")

    cases: list[tuple[str, Callable[[], bytes], Callable[[], bytes]]] = [
        ("chat chunk, content delta", lambda: chat.piece(0, tools.Content(" word", None)),
         lambda: dict_chat_chunk(" word")),
        ("chat chunk, finish with filter results", lambda: filtered.finish(0, "stop"), lambda: dict_finish(flt)),
        ("completion chunk with logprobs", lambda: CompletionChunks("cmpl-x", 1, "m", None, include_usage=False,
                                                                    logprobs=True).piece(0, piece),
         lambda: dict_completion_chunk(" word", lps)),
        ("whole chat answer, 32 tokens", lambda: orjson.dumps(chat_completion(
            "chatcmpl-x", 1, "m", [whole], StreamUsage(10, 32), None, logprobs=False)),
         lambda: dict_whole(text)),
    ]
    assert completion.piece(0, piece) == dict_completion_chunk(" word", lps)
    print(f"{'piece':42} {'typed µs':>9} {'dicts µs':>9} {'added µs':>9}")
    for name, typed, plain in cases:
        assert typed() == plain(), name  # the same bytes
        t, p = timed(typed, args.n, args.rounds), timed(plain, args.n, args.rounds)
        print(f"{name:42} {t:9.2f} {p:9.2f} {t - p:9.2f}")


if __name__ == "__main__":
    main()
