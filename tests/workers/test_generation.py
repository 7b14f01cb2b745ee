"""Generation and embeddings through real worker processes and the WorkerClient."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

from modelport.errors import InvalidInput, NotFound, ServiceUnavailable
from modelport.workers.client import ChoiceFinished, StreamUsage, TextDelta, WorkerClient
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor
from tests.support.models import MINILM_DIR, SMOLLM2_GGUF
from tests.support.workers import LoopThread, collect

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in a worker

COUNTING = "1, 2, 3, 4,"


def test_streamed_generation_with_usage_and_token_counting(loop: LoopThread, llama: WorkerHandle) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    texts, events = loop.run(collect(llama, GenerateBody(messages=messages, max_tokens=20, temperature=0)))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1 and texts[0]
    finish = [e for e in events if isinstance(e, ChoiceFinished)]
    assert len(finish) == 1 and finish[0].finish_reason in ("stop", "length")
    usage = events[-1]
    count = loop.run(llama.client.count_tokens(messages=messages))
    assert usage == StreamUsage(prompt_tokens=count.count, completion_tokens=finish[0].completion_tokens)
    assert count.context_length == 1024


def test_seed_is_reproducible_and_n_choices_differ_by_seed(loop: LoopThread, llama: WorkerHandle) -> None:
    body = GenerateBody(prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=42, n=2)
    first, events = loop.run(collect(llama, body))
    second, _ = loop.run(collect(llama, body))
    assert first == second
    assert set(first) == {0, 1}
    assert first[0] != first[1]  # choice i uses seed + i
    finishes = [e for e in events if isinstance(e, ChoiceFinished)]
    assert events[-1].completion_tokens == sum(f.completion_tokens for f in finishes) == 24


def test_stop_max_tokens_and_json_through_the_worker(loop: LoopThread, llama: WorkerHandle) -> None:
    texts, events = loop.run(collect(llama, GenerateBody(prompt=COUNTING, max_tokens=30, temperature=0,
                                                         stop=[" 7"])))
    assert texts[0] == " 5, 6,"
    assert events[-2].finish_reason == "stop"
    _, events = loop.run(collect(llama, GenerateBody(prompt=COUNTING, max_tokens=5, temperature=0)))
    assert (events[-2].finish_reason, events[-1].completion_tokens) == ("length", 5)
    texts, _ = loop.run(collect(llama, GenerateBody(
        messages=[{"role": "user", "content": "Give a JSON object with a key colour."}], max_tokens=200,
        temperature=0, response_format="json_object")))
    assert isinstance(json.loads(texts[0]), dict)


def test_refusals_are_typed_and_never_echo_the_prompt(loop: LoopThread, llama: WorkerHandle) -> None:
    marker = "okapi-secret-7731"
    too_long = [{"role": "user", "content": (marker + " ") * 600}]
    count = loop.run(llama.client.count_tokens(messages=too_long))
    assert count.count > count.context_length  # what the gateway checks before any inference

    async def consume(body: GenerateBody) -> None:
        async for _ in llama.client.generate(body):
            pass

    for body in (GenerateBody(messages=too_long), ):
        with pytest.raises(InvalidInput) as err:
            loop.run(consume(body))
        assert marker not in err.value.message
    with pytest.raises(InvalidInput) as err:
        loop.run(llama.client.embed([marker]))
    assert "embeddings" in err.value.message and marker not in err.value.message


def test_client_disconnect_stops_decoding_in_the_worker_within_a_second(loop: LoopThread,
                                                                       llama: WorkerHandle) -> None:
    """Asserted on the worker's own counters: active generations drop to 0 and the count of
    decoded tokens stops growing, although the request asked for 900 tokens."""

    async def read_then_leave() -> float:
        stream = llama.client.generate(GenerateBody(prompt=COUNTING, max_tokens=900, temperature=0))
        seen = 0
        async for event in stream:
            seen += isinstance(event, TextDelta)
            if seen == 5:
                break
        await stream.aclose()
        return time.monotonic()

    left_at = loop.run(read_then_leave())

    async def wait_idle() -> tuple[float, int]:
        while True:
            health = await llama.client.health()
            if health.active_generations == 0:
                return time.monotonic(), health.tokens_generated_total
            await asyncio.sleep(0.02)

    idle_at, tokens = loop.run(wait_idle(), timeout=10)
    assert idle_at - left_at < 1.0
    time.sleep(0.3)
    assert loop.run(llama.client.health()).tokens_generated_total == tokens
    # and the model context is free for the next request
    texts, _ = loop.run(collect(llama, GenerateBody(prompt=COUNTING, max_tokens=4, temperature=0)))
    assert texts[0].startswith(" 5")


def test_cancel_by_id_stops_a_generation_and_answers_what_it_generated(loop: LoopThread,
                                                                      llama: WorkerHandle) -> None:
    """POST /cancel while the stream is still open and unread: the worker stops both choices and
    answers their tokens, counted against its own total (nothing else runs on this worker), and
    remembers the count for a late ask; an unknown id is 404, a reused one 400."""

    async def scenario() -> tuple[int, int, int, int, int]:
        before = (await llama.client.health()).tokens_generated_total
        stream = llama.client.generate(GenerateBody(prompt=COUNTING, max_tokens=900, temperature=0.5, seed=3, n=2,
                                                    id="cut-1"))
        reported = [0, 0]
        seen = 0
        async for event in stream:
            if isinstance(event, TextDelta):
                seen += 1
                reported[event.index] = event.generated or 0
                if seen == 6:
                    break
        counted = await llama.client.cancel("cut-1", timeout=10)  # the stream is still open
        health = await llama.client.health()
        await stream.aclose()
        again = await llama.client.cancel("cut-1", timeout=10)
        return counted, health.tokens_generated_total - before, health.active_generations, again, sum(reported)

    counted, generated, active, again, reported = loop.run(scenario())
    assert active == 0 and counted == generated == again and counted >= reported >= 6
    with pytest.raises(NotFound):
        loop.run(llama.client.cancel("never-sent", timeout=10))
    with pytest.raises(InvalidInput):
        loop.run(collect(llama, GenerateBody(prompt=COUNTING, max_tokens=2, id="cut-1")))


def test_model_handed_over_as_a_memfd_and_spec_never_in_argv_or_env(
        loop: LoopThread, supervisor: WorkerSupervisor, llama: WorkerHandle) -> None:
    fd = os.memfd_create("smollm2")
    try:
        with open(SMOLLM2_GGUF, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        spec = WorkerSpec(runtime="llamacpp", model_id="smollm2-memfd", model_fd=fd, threads=1, n_ctx=256)
        handle = loop.run(supervisor.start(spec, region="local"))
    finally:
        os.close(fd)  # the supervisor holds its own copy for restarts
    try:
        body = GenerateBody(prompt=COUNTING, max_tokens=6, temperature=0)
        from_memfd, _ = loop.run(collect(handle, body))
        from_path, _ = loop.run(collect(llama, body))
        assert from_memfd == from_path == {0: " 5, 6,"}
        cmdline = Path(f"/proc/{handle.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{handle.pid}/environ").read_bytes()
        for leak in (b"memfd", b"smollm2", b"llamacpp", str(SMOLLM2_GGUF).encode()):
            assert leak not in cmdline and leak not in environ
    finally:
        loop.run(supervisor.stop(handle))


def test_embeddings_worker_returns_unit_vectors(loop: LoopThread, supervisor: WorkerSupervisor) -> None:
    spec = WorkerSpec(runtime="transformers", model_id="minilm", model_path=str(MINILM_DIR), threads=1)
    handle = loop.run(supervisor.start(spec, region="local"))
    try:
        result = loop.run(handle.client.embed(["first text", "second text"]))
        assert [len(v) for v in result.data] == [384, 384]
        assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in result.data)
        counts = loop.run(handle.client.count_tokens(input=["first text", "second text"]))
        assert counts.counts == [4, 4] and result.prompt_tokens == 8
        assert loop.run(handle.client.health()).tasks == ["embeddings"]
        with pytest.raises(InvalidInput):
            loop.run(collect(handle, GenerateBody(prompt="x")))
    finally:
        loop.run(supervisor.stop(handle))
    with pytest.raises(ServiceUnavailable):
        loop.run(handle.client.health())


def _sockets() -> set[str]:
    """This process's open sockets, by inode ("socket:[123]")."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_the_client_keeps_one_connection_alive_and_drops_an_abandoned_one(
        loop: LoopThread, llama: WorkerHandle) -> None:
    """Keep-alive: sequential calls reuse one connection (the same socket, nothing else opened, after
    ten calls); a stream left early closes its connection (the worker sees the disconnect and
    stops), and the next call opens a fresh one and works. A client of its own, so that the
    supervisor's health checks do not share its connections."""
    client = WorkerClient(llama.client.socket_path)
    body = GenerateBody(prompt=COUNTING, max_tokens=3, temperature=0)

    async def generate(b: GenerateBody) -> str:
        return "".join([e.text async for e in client.generate(b) if isinstance(e, TextDelta)])

    try:
        first = loop.run(generate(body))
        before = _sockets()
        for _ in range(5):
            assert loop.run(generate(body)) == first
            loop.run(client.count_tokens(prompt="one two"))
        assert _sockets() == before

        async def leave_early() -> None:
            stream = client.generate(GenerateBody(prompt=COUNTING, max_tokens=200, temperature=0))
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
            await stream.aclose()

        loop.run(leave_early())
        after_abandon = _sockets()
        assert len(before - after_abandon) == 1 and after_abandon < before  # that connection is closed
        assert loop.run(generate(body)) == first  # a new connection serves the next call
        assert len(_sockets() - after_abandon) == 1
    finally:
        loop.run(client.close())
