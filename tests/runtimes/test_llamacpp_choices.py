"""`n` choices of one request in the batching engine, in this process, on the bundled SmolLM2 GGUF.

The choices decode together from one decoding of the prompt (the first choice's KV cells are
copied to the others, inside the request), and each equals the request alone with seed + i. The
engine's counters say how many prompt tokens were decoded and how many were copied, so the
tests assert on them rather than on timing; no copy ever crosses requests (cached_prompt_tokens
stays 0), and every sequence id is empty after the request, whatever way it ended.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llama_cpp
import pytest

from modelport.runtimes.base import GenerateRequest, ModelSpec, Usage
from modelport.runtimes.llamacpp import LlamaCppRuntime
from tests.support.models import SMOLLM2_GGUF

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in this process

PARALLEL = 6


@pytest.fixture(scope="module")
def runtime() -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=512, threads=1, options={"parallel": PARALLEL}))
    yield rt
    rt.close()


Result = tuple[str, Any, Usage]


def alone(rt: LlamaCppRuntime, request: GenerateRequest) -> Result:
    deltas = list(rt.generate(request, threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage


def choices(rt: LlamaCppRuntime, request: GenerateRequest, n: int,
            cancel: threading.Event | None = None) -> list[Result]:
    texts = [""] * n
    last: list[Any] = [None] * n
    for index, delta in rt.generate_choices(request, n, cancel or threading.Event()):
        assert last[index] is None, "a delta after its choice's last one"
        texts[index] += delta.text
        if delta.finish_reason is not None:
            last[index] = delta
    assert all(d is not None for d in last), "a choice ended without its last delta"
    return [(t, d.finish_reason, d.usage) for t, d in zip(texts, last, strict=True)]


def seeded(request: GenerateRequest, index: int) -> GenerateRequest:
    assert request.seed is not None
    return GenerateRequest(messages=request.messages, prompt=request.prompt, max_tokens=request.max_tokens,
                           temperature=request.temperature, top_p=request.top_p, stop=request.stop,
                           seed=request.seed + index, response_format=request.response_format,
                           grammar=request.grammar, logprobs=request.logprobs)


def empty(rt: LlamaCppRuntime) -> bool:
    engine = rt._engine
    counters = rt.counters()
    return (counters["sequences_active"] == 0 and counters["kv_cells_used"] == 0
            and sorted(engine._free_slots) == list(range(engine.parallel))
            and all(llama_cpp.llama_memory_seq_pos_max(engine._mem, s) == -1 for s in range(engine.parallel)))


SAMPLED = GenerateRequest(messages=[{"role": "user", "content": "Write one sentence about the sea."}],
                          max_tokens=24, temperature=1.0, top_p=0.95, seed=4242)


def test_choices_decode_together_from_one_prefill_and_each_equals_its_seed_alone(runtime: LlamaCppRuntime) -> None:
    n = 4
    expected = [alone(runtime, seeded(SAMPLED, i)) for i in range(n)]
    assert len({text for text, _, _ in expected}) > 1  # the seeds really differ
    prompt_tokens = expected[0][2].prompt_tokens
    before = runtime.counters()
    got = choices(runtime, SAMPLED, n)
    after = runtime.counters()
    assert got == expected
    assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] == prompt_tokens  # once
    assert after["shared_prompt_tokens"] - before["shared_prompt_tokens"] == (n - 1) * prompt_tokens
    assert after["cached_prompt_tokens"] == 0 and after["kv_leftover_on_join"] == 0
    assert after["max_batch_sequences"] >= n
    # one step decodes a token of every choice: far fewer steps than tokens
    assert after["batch_steps"] - before["batch_steps"] <= max(u.completion_tokens for _, _, u in got) + 1
    assert empty(runtime)


def test_greedy_grammar_and_logprobs_choices_equal_the_request_alone(runtime: LlamaCppRuntime) -> None:
    greedy = GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=(" 9",))
    assert choices(runtime, greedy, 3) == [alone(runtime, greedy)] * 3
    colours = GenerateRequest(prompt="My favourite colour is", max_tokens=4, temperature=1.0, seed=3,
                              grammar='root ::= " " ("red" | "green" | "blue")', logprobs=2)
    got = choices(runtime, colours, 3)
    assert got == [alone(runtime, seeded(colours, i)) for i in range(3)]
    assert all(text in (" red", " green", " blue") for text, _, _ in got)
    scored = [d for i, d in runtime.generate_choices(colours, 2, threading.Event()) if i == 1 and d.logprobs]
    assert scored and all(len(e.top) == 2 and e.logprob <= 0 for d in scored for e in d.logprobs)


def test_two_requests_with_choices_at_once_share_nothing_across_requests(runtime: LlamaCppRuntime) -> None:
    """Tenant A's choices and tenant B's choices in one batch, the same long system prompt: each
    request's choices equal that request alone; B's prompt is decoded in full (nothing taken
    from A's cells), and the copies counted are exactly each request's own."""
    shared = "You are a careful assistant who answers briefly. " * 8
    tenant_a = GenerateRequest(messages=[{"role": "system", "content": shared},
                                         {"role": "user", "content": "okapi secret: the vault code is 7731"}],
                               max_tokens=16, temperature=0.8, seed=11)
    tenant_b = GenerateRequest(messages=[{"role": "system", "content": shared},
                                         {"role": "user", "content": "Name a colour."}],
                               max_tokens=16, temperature=0.8, seed=11)
    expected_a = [alone(runtime, seeded(tenant_a, i)) for i in range(3)]
    expected_b = [alone(runtime, seeded(tenant_b, i)) for i in range(2)]
    before = runtime.counters()
    barrier = threading.Barrier(2)

    def run(request: GenerateRequest, n: int) -> list[Result]:
        barrier.wait()
        return choices(runtime, request, n)

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(run, tenant_a, 3)
        b = pool.submit(run, tenant_b, 2)
        got_a, got_b = a.result(), b.result()
    after = runtime.counters()
    assert got_a == expected_a and got_b == expected_b
    pa, pb = expected_a[0][2].prompt_tokens, expected_b[0][2].prompt_tokens
    assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] == pa + pb
    assert after["shared_prompt_tokens"] - before["shared_prompt_tokens"] == 2 * pa + pb
    assert after["cached_prompt_tokens"] == 0 and after["kv_leftover_on_join"] == 0
    assert empty(runtime)


def test_choices_beyond_the_free_sequence_ids_wait_and_decode_their_own_prompt() -> None:
    """Two sequence ids, five choices: one forks, three wait at the back of the queue and decode
    their own copy of the prompt (counted), and all five equal their seeds alone."""
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1, options={"parallel": 2}))
    try:
        n = 5
        request = GenerateRequest(prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=77)
        expected = [alone(rt, seeded(request, i)) for i in range(n)]
        before = rt.counters()
        assert choices(rt, request, n) == expected
        after = rt.counters()
        p = expected[0][2].prompt_tokens
        assert after["shared_prompt_tokens"] - before["shared_prompt_tokens"] == p
        assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] == 4 * p
        assert empty(rt)
    finally:
        rt.close()


def test_choices_that_end_at_their_first_token_leave_no_cells_behind(runtime: LlamaCppRuntime) -> None:
    """max_tokens 1: every sibling forks, samples and leaves in the same step, while the copy of
    the prompt's cells is still queued inside llama.cpp; the next request on those sequence ids
    is exactly what it is alone."""
    one = GenerateRequest(prompt="okapi secret 5521 is the code. The code is", max_tokens=1, temperature=1.0, seed=9)
    got = choices(runtime, one, PARALLEL)
    assert [u.completion_tokens for _, _, u in got] == [1] * PARALLEL
    assert empty(runtime)
    follow = [GenerateRequest(prompt=f"{i}, {i + 1}, {i + 2},", max_tokens=12, temperature=0) for i in range(PARALLEL)]
    expected = [alone(runtime, r) for r in follow]
    barrier = threading.Barrier(PARALLEL)

    def run(request: GenerateRequest) -> Result:
        barrier.wait()
        return alone(runtime, request)

    with ThreadPoolExecutor(PARALLEL) as pool:
        assert list(pool.map(run, follow)) == expected
    assert runtime.counters()["cached_prompt_tokens"] == 0 and empty(runtime)


def test_cancelling_or_leaving_a_request_ends_every_choice_and_frees_every_sequence_id(
        runtime: LlamaCppRuntime) -> None:
    long = GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=400, temperature=0.7, seed=1)
    cancel = threading.Event()
    seen = 0
    ended: set[int] = set()
    for _index, delta in runtime.generate_choices(long, 4, cancel):
        seen += 1
        if seen == 6:
            cancel.set()
        if delta.finish_reason is not None:
            ended.add(_index)
    assert 6 <= seen < 4 * 400 and not ended  # every choice ended without a last delta
    stream = runtime.generate_choices(long, 4, threading.Event())
    next(stream)
    stream.close()  # the reader leaves: its choices leave the batch
    alone(runtime, GenerateRequest(prompt="x", max_tokens=2, temperature=0))  # a step passes
    assert empty(runtime)


def test_choices_in_a_shared_kv_cache_share_cells_and_survive_preemption() -> None:
    """A unified cache too small for every choice's full length: choices share the prompt's cells,
    the youngest are preempted and decode their prompt and tokens again, and every choice still
    completes in full; nothing is left when they are done."""
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1,
                                        options={"parallel": 4, "kv_unified": True, "kv_cells": 256}))
    try:
        request = GenerateRequest(prompt="1, 2, 3, 4, 5,", max_tokens=110, temperature=0)
        got = choices(rt, request, 4)
        assert [(f, u.completion_tokens) for _, f, u in got] == [("length", 110)] * 4
        assert all(text.startswith(" 6, 7, 8") for text, _, _ in got)
        assert rt.counters()["shared_prompt_tokens"] > 0
        assert rt.counters()["cached_prompt_tokens"] == 0 and empty(rt)
    finally:
        rt.close()
