"""Continuous batching in the llama.cpp runtime, in this process, on the bundled SmolLM2 GGUF.

Each test starts its requests from threads at once, so the engine decodes them in one batch
(asserted on its own counters, not assumed), and compares with the same request run alone.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llama_cpp
import pytest

from modelport.errors import InvalidInput
from modelport.runtimes.base import Delta, GenerateRequest, ModelSpec
from modelport.runtimes.llamacpp import LlamaCppRuntime
from tests.support.models import SMOLLM2_GGUF

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in this process


@pytest.fixture(scope="module")
def runtime() -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=1024, threads=1, options={"parallel": 8}))
    yield rt
    rt.close()


def run(rt: LlamaCppRuntime, request: GenerateRequest, cancel: threading.Event | None = None) -> tuple[str, Any, Any]:
    deltas = list(rt.generate(request, cancel or threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage


def together(rt: LlamaCppRuntime, requests: list[GenerateRequest]) -> list[tuple[str, Any, Any]]:
    """All requests at once, each from its own thread, released by one barrier."""
    barrier = threading.Barrier(len(requests))

    def one(request: GenerateRequest) -> tuple[str, Any, Any]:
        barrier.wait()
        return run(rt, request)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


REQUESTS = [
    GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=(" 9",)),
    GenerateRequest(messages=[{"role": "user", "content": "Say hello to the team."}], max_tokens=40, temperature=0),
    GenerateRequest(messages=[{"role": "user", "content": "Write a short poem about the sea."}], max_tokens=48,
                    temperature=1.0, top_p=0.9, seed=1234),
    GenerateRequest(messages=[{"role": "user", "content": "Describe a cat as JSON with name and age."}],
                    max_tokens=120, temperature=0, response_format="json_object"),
    GenerateRequest(prompt="The capital of France is", max_tokens=7, temperature=0),
    GenerateRequest(messages=[{"role": "user", "content": "Name three colours."}], max_tokens=24,
                    temperature=0.7, seed=7),
    GenerateRequest(prompt="Answer yes or no: is water wet?", max_tokens=4, temperature=0,
                    grammar='root ::= ("yes" | "no")'),
]


def test_concurrent_streams_with_different_parameters_equal_each_alone(runtime: LlamaCppRuntime) -> None:
    """Greedy, seeded, stop strings, JSON grammar, a GBNF grammar, different lengths: batched,
    each returns exactly what it returns alone (text, finish reason, usage)."""
    alone = [run(runtime, r) for r in REQUESTS]
    before = runtime.counters()
    batched = together(runtime, REQUESTS)
    after = runtime.counters()
    assert batched == alone
    assert after["max_batch_sequences"] >= 4  # they really shared steps
    assert after["batch_steps"] - before["batch_steps"] < sum(u.completion_tokens for _, _, u in alone)
    assert alone[0][0] == " 5, 6, 7, 8," and alone[0][1] == "stop"
    assert isinstance(json.loads(alone[3][0]), dict)
    assert alone[6][0] in ("yes", "no")
    assert alone[4][2].completion_tokens == 7 and alone[4][1] == "length"


def test_greedy_batched_equals_llama_cpp_python_alone(runtime: LlamaCppRuntime) -> None:
    """The batched engine's greedy text equals llama-cpp-python's own chat completion (its own
    context, one sequence): batching changes no greedy token on this model."""
    messages = [{"role": "user", "content": "Say hello to the team."}]
    reference = llama_cpp.Llama(str(SMOLLM2_GGUF), n_ctx=1024, n_threads=1, verbose=False)
    try:
        expected = reference.create_chat_completion(messages, max_tokens=40, temperature=0)
    finally:
        reference.close()
    others = [GenerateRequest(prompt=f"{i}, {i + 1}, {i + 2},", max_tokens=40, temperature=0) for i in range(5)]
    results = together(runtime, [GenerateRequest(messages=messages, max_tokens=40, temperature=0), *others])
    assert results[0][0] == expected["choices"][0]["message"]["content"]
    assert results[0][2].completion_tokens == expected["usage"]["completion_tokens"]


def test_cancel_one_stream_mid_batch_and_the_others_continue(runtime: LlamaCppRuntime) -> None:
    long = GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=200, temperature=0)
    others = [GenerateRequest(prompt=f"{i}, {i + 1}, {i + 2},", max_tokens=60, temperature=0) for i in (10, 20, 30)]
    alone = [run(runtime, r) for r in others]
    cancel = threading.Event()
    seen: list[Delta] = []

    def cancelled() -> list[Delta]:
        for delta in runtime.generate(long, cancel):
            seen.append(delta)
            if len(seen) == 5:
                cancel.set()
        return seen

    before = runtime.tokens_generated_total
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(cancelled)
        rest = [pool.submit(run, runtime, r) for r in others]
        assert [f.result() for f in rest] == alone
        *texts, last = first.result()
    generated = runtime.tokens_generated_total - before - sum(r[2].completion_tokens for r in alone)
    assert 5 <= len(texts) < 200 and all(d.text and d.finish_reason is None for d in texts)
    # it ends with what it generated (metering bills a cut stream with it), held-back tokens included
    assert last.cancelled and not last.text and last.usage.completion_tokens == generated >= texts[-1].generated
    assert runtime.counters()["sequences_active"] == 0


def test_a_sequence_moves_into_the_hole_a_finished_one_leaves_and_continues_exactly(
        runtime: LlamaCppRuntime) -> None:
    """Three streams on sequence ids 0, 1, 2; the one on 1 ends after two tokens. llama.cpp runs a
    step in one pass only over consecutive ids, so the stream on 2 moves into 1 (a copy of its own
    KV cells) and goes on: every stream is exactly what it is alone, and no id keeps a cell."""
    long_a = GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=40, temperature=0)
    short = GenerateRequest(prompt="The capital of France is", max_tokens=2, temperature=0)
    long_c = GenerateRequest(prompt="Once upon a time", max_tokens=40, temperature=0.8, seed=3)
    alone = [run(runtime, r) for r in (long_a, short, long_c)]
    before = runtime.counters()["sequence_moves"]
    streams = [runtime.generate(r, threading.Event()) for r in (long_a, short, long_c)]
    firsts = [next(s) for s in streams]  # each is in the engine (ids 0, 1, 2) before the next starts
    results = []
    for first, stream in zip(firsts, streams, strict=True):
        deltas = [first, *stream]
        results.append(("".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage))
    assert results == alone
    assert runtime.counters()["sequence_moves"] > before
    engine = runtime._engine
    assert all(llama_cpp.llama_memory_seq_pos_max(engine._mem, slot) == -1 for slot in range(engine.parallel))
    assert sorted(engine._free_slots) == list(range(engine.parallel))


def test_leaving_the_iteration_early_frees_the_sequence(runtime: LlamaCppRuntime) -> None:
    stream = runtime.generate(GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=500, temperature=0),
                              threading.Event())
    next(stream)
    stream.close()
    run(runtime, GenerateRequest(prompt="x", max_tokens=2, temperature=0))  # a step passes
    counters = runtime.counters()
    assert counters["sequences_active"] == 0 and counters["kv_cells_used"] == 0


def test_no_kv_or_prompt_reuse_between_requests(runtime: LlamaCppRuntime) -> None:
    """Another tenant's identical system prompt, run just before, is decoded again in full (the
    engine's counters), every sequence's KV cells are gone when it leaves (llama.cpp's own view of
    each sequence id), and the output is the output of the request alone."""
    shared = "You are a helpful assistant. " * 20
    tenant_a = GenerateRequest(messages=[{"role": "system", "content": shared},
                                         {"role": "user", "content": "Tenant A secret question."}],
                               max_tokens=12, temperature=1.0, seed=5)
    tenant_b = GenerateRequest(messages=[{"role": "system", "content": shared},
                                         {"role": "user", "content": "Name a colour."}],
                               max_tokens=12, temperature=1.0, seed=5)
    alone = run(runtime, tenant_b)
    run(runtime, tenant_a)
    before = runtime.counters()
    after_a = run(runtime, tenant_b)
    after = runtime.counters()
    assert after_a == alone
    assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] == alone[2].prompt_tokens
    assert after["cached_prompt_tokens"] == 0 and after["kv_leftover_on_join"] == 0
    together(runtime, [tenant_a, tenant_b, tenant_a])
    engine = runtime._engine
    assert all(llama_cpp.llama_memory_seq_pos_max(engine._mem, slot) == -1 for slot in range(engine.parallel))
    assert runtime.counters()["kv_cells_used"] == 0


def test_grammar_and_logprobs_per_sequence(runtime: LlamaCppRuntime, capfd: pytest.CaptureFixture[str]) -> None:
    """A GBNF grammar binds only its own sequence; logprobs come per token with the top-k, and
    at temperature 0 the chosen token is the most likely one. A grammar that does not parse is
    a 400 that neither echoes nor prints it."""
    colours = GenerateRequest(prompt="My favourite colour is", max_tokens=6, temperature=0,
                              grammar='root ::= " " ("red" | "green" | "blue")', logprobs=3)
    free = GenerateRequest(prompt="My favourite colour is", max_tokens=6, temperature=0)
    deltas_box: list[Any] = []

    def with_logprobs() -> str:
        deltas = list(runtime.generate(colours, threading.Event()))
        deltas_box.extend(deltas)
        return "".join(d.text for d in deltas)

    with ThreadPoolExecutor(2) as pool:
        constrained = pool.submit(with_logprobs)
        unconstrained = pool.submit(run, runtime, free)
        text = constrained.result()
        free_text = unconstrained.result()[0]
    assert text in (" red", " green", " blue")
    assert free_text == run(runtime, free)[0] and free_text != text
    entries = [e for d in deltas_box for e in (d.logprobs or ())]
    assert b"".join(e.token for e in entries).decode() == text
    for entry in entries:
        assert len(entry.top) == 3 and entry.logprob <= 0
        assert [t[1] for t in entry.top] == sorted((t[1] for t in entry.top), reverse=True)
    plain = list(runtime.generate(GenerateRequest(prompt="1, 2, 3,", max_tokens=5, temperature=0, logprobs=2),
                                  threading.Event()))
    greedy = [e for d in plain for e in (d.logprobs or ())]
    assert len(greedy) == 5 and all(e.logprob == pytest.approx(e.top[0][1]) for e in greedy)
    secret = "okapi_grammar_secret_4417"
    with pytest.raises(InvalidInput) as err:
        run(runtime, GenerateRequest(prompt="x", grammar=f"root ::= {secret} ((("))
    assert secret not in err.value.message
    captured = capfd.readouterr()
    assert secret not in captured.out and secret not in captured.err
    with pytest.raises(InvalidInput):
        GenerateRequest(prompt="x", grammar="root ::= \"a\"", response_format="json_object")
    with pytest.raises(InvalidInput):
        GenerateRequest(prompt="x", logprobs=21)


def test_a_full_shared_kv_cache_preempts_and_recomputes() -> None:
    """A shared (unified) KV cache smaller than four sequences need together: the youngest is
    preempted and decoded again later, and every stream still completes in full. (In a shared
    cache a sequence's cells sit among others', so its logits differ in the last bits from a run
    alone and a greedy tie can break differently: the outputs are compared on their start only.
    The default, a KV stream per sequence, gives identical outputs; see the tests above.)"""
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1,
                                        options={"parallel": 4, "kv_unified": True, "kv_cells": 256}))
    try:
        requests = [GenerateRequest(prompt=f"{i}, {i + 1}, {i + 2}, {i + 3},", max_tokens=110, temperature=0)
                    for i in (1, 40, 300, 5000)]
        batched = together(rt, requests)
        for (text, finish, usage), i in zip(batched, (1, 40, 300, 5000), strict=True):
            assert (finish, usage.completion_tokens) == ("length", 110)
            assert text.startswith(f" {i + 4}, {i + 5}")
        assert rt.counters()["preemptions"] >= 1
        assert rt.counters()["kv_cells_used"] == 0 and rt.counters()["sequences_active"] == 0
    finally:
        rt.close()


def test_bad_options_are_refused_with_what_to_fix() -> None:
    with pytest.raises(InvalidInput, match="option parallel must be an integer from 1 to 256"):
        LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1, options={"parallel": 0}))
    with pytest.raises(InvalidInput, match="must not exceed n_batch"):
        LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1,
                                       options={"parallel": 32, "n_batch": 16}))
    with pytest.raises(InvalidInput, match="option kv_cells"):
        LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1,
                                       options={"kv_unified": True, "kv_cells": 16}))


def test_a_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_decoding() -> None:
    """With `prefill_chunk` 32 and `prefill_first_ms` 0, a prompt of about 600 tokens that joins a running stream takes
    about 19 steps to prefill, and every one of those steps also decodes a token of the running
    stream: the running stream gets at least 15 tokens before the long prompt's first token."""
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=1024, threads=1,
                                        options={"parallel": 2, "prefill_chunk": 32, "prefill_first_ms": 0}))
    try:
        cancel = threading.Event()
        running = rt.generate(GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=900, temperature=0), cancel)
        next(running)
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 60
        assert rt.count_tokens(prompt=long_prompt) > 550
        # engine-side counts (no lag of a reader): tokens decoded before the long prompt's first
        joined = rt.counters()["batch_steps"], rt.tokens_generated_total
        deltas = list(rt.generate(GenerateRequest(prompt=long_prompt, max_tokens=1, temperature=0),
                                  threading.Event()))
        after = rt.counters()["batch_steps"], rt.tokens_generated_total
        cancel.set()
        list(running)
        assert deltas[-1].usage.completion_tokens == 1
        assert after[0] - joined[0] >= 17  # about 600 / 32 steps of prefill
        assert after[1] - joined[1] >= 16  # and the running stream decoded in (nearly) each of them
        assert rt.counters()["prefill_first_steps"] == 0  # prefill_first_ms 0 never holds a stream back
    finally:
        rt.close()


def test_with_prefill_first_a_waiting_prompt_goes_ahead_of_a_running_stream_until_the_bound() -> None:
    """With `prefill_first_ms`, steps prefill a waiting prompt without decoding the running stream,
    one `prefill_chunk` at a time, as long as the stream's last token is more recent than the bound
    (60 s here, never reached): the ~19 chunks of a 600-token prompt pass without a token of the
    running stream, and the stream goes on afterwards, exactly as alone."""
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=1024, threads=1,
                                        options={"parallel": 2, "prefill_chunk": 32, "prefill_first_ms": 60_000}))
    try:
        counting = GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=40, temperature=0)
        alone = run(rt, counting)
        running = rt.generate(counting, threading.Event())
        first = [next(running)]
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 60
        joined = rt.counters()["batch_steps"], rt.tokens_generated_total
        deltas = list(rt.generate(GenerateRequest(prompt=long_prompt, max_tokens=1, temperature=0),
                                  threading.Event()))
        after = rt.counters()["batch_steps"], rt.tokens_generated_total
        rest = first + list(running)
        assert deltas[-1].usage.completion_tokens == 1
        assert after[0] - joined[0] >= 17  # still one chunk a step
        # the long prompt's token, and at most the one the stream may have had in the step it joined
        assert after[1] - joined[1] <= 2
        assert rt.counters()["prefill_first_steps"] >= 16
        assert "".join(d.text for d in rest) == alone[0]  # held back, not changed
    finally:
        rt.close()


def test_a_lora_adapter_from_an_inherited_memfd_applies_to_every_sequence_of_the_batch() -> None:
    """The adapter reaches the engine as /proc/self/fd/N of a memfd (as a worker gets a fine-tune's
    adapter), is set once on the batching context, and every batched sequence uses it: batched
    outputs differ from the base model's and start like the adapted outputs alone.

    Not bit-identical: with an adapter, llama.cpp's f32 adapter products take kernels that depend
    on the batch's width, so greedy outputs batched and alone agree for the first tokens and can
    then part at a near-tie (measured here: after 5-6 tokens on one of three prompts)."""
    import numpy as np

    from modelport.finetuning.lora_gguf import build_adapter_gguf

    rng = np.random.default_rng(7)
    state = {}
    for layer in range(30):
        state[f"model.layers.{layer}.mlp.down_proj.lora_A.weight"] = rng.normal(0, 0.1, (8, 1536)).astype(np.float32)
        state[f"model.layers.{layer}.mlp.down_proj.lora_B.weight"] = rng.normal(0, 0.1, (576, 8)).astype(np.float32)
    data = build_adapter_gguf(state, arch="llama", alpha=16, n_head=9, n_head_kv=3)
    fd = os.memfd_create("adapter")
    try:
        os.write(fd, data)
        adapted = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), lora_path=f"/proc/self/fd/{fd}", n_ctx=256,
                                                 threads=1, options={"parallel": 3}))
    finally:
        os.close(fd)
    base = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=256, threads=1, options={"parallel": 1}))
    try:
        requests = [GenerateRequest(prompt=p, max_tokens=12, temperature=0)
                    for p in ("Once upon a time", "My favourite food is", "The weather today is")]
        alone = [run(adapted, r) for r in requests]
        batched = together(adapted, requests)
        plain = [run(base, r) for r in requests]
        assert sum(b[0] != p[0] for b, p in zip(batched, plain, strict=True)) >= 2  # the adapter is in use
        for (text, finish, usage), (alone_text, _, _) in zip(batched, alone, strict=True):
            assert (finish, usage.completion_tokens) == ("length", 12)
            assert text.split()[:2] == alone_text.split()[:2]
        assert adapted.counters()["max_batch_sequences"] >= 2
    finally:
        adapted.close()
        base.close()
