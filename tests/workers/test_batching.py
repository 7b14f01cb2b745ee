"""Concurrent requests through one real worker process: batched generation and embeddings.

The llama.cpp worker decodes concurrent streams together (its health counters say so); each
stream is exactly what it is alone, a cancelled stream leaves the others running, a killed
worker ends every stream with the clean error, SIGTERM drains them all. The embeddings worker
answers concurrent requests in shared batches.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest

from modelport.errors import InvalidInput, ServiceUnavailable
from modelport.workers.client import ChoiceFinished, StreamUsage, TextDelta
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerState, WorkerSupervisor
from tests.support.models import MINILM_DIR, SMOLLM2_GGUF
from tests.support.waiting import wait_until_async
from tests.support.workers import LoopThread, collect, make_supervisor, wait_for

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in a worker


@pytest.fixture(scope="module")
def batching(loop: LoopThread, supervisor: WorkerSupervisor) -> WorkerHandle:
    spec = WorkerSpec(runtime="llamacpp", model_id="smollm2-batch", model_path=str(SMOLLM2_GGUF), threads=1,
                      n_ctx=1024, options={"parallel": 8})
    return loop.run(supervisor.start(spec, region="local"))


BODIES = [
    GenerateBody(prompt="1, 2, 3, 4,", max_tokens=24, temperature=0, stop=[" 9"]),
    GenerateBody(messages=[{"role": "user", "content": "Say hello to the team."}], max_tokens=30, temperature=0),
    GenerateBody(messages=[{"role": "user", "content": "Write a short poem."}], max_tokens=30, temperature=1.0,
                 seed=11, n=2),
    GenerateBody(messages=[{"role": "user", "content": "A JSON object with a key colour."}], max_tokens=80,
                 temperature=0, response_format="json_object"),
    GenerateBody(prompt="Is the sky blue? Answer:", max_tokens=3, temperature=0, grammar='root ::= " yes" | " no"'),
    GenerateBody(prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2),
]


def _summary(result: tuple[dict[int, str], list[Any]]) -> tuple[dict[int, str], Any, list[Any]]:
    texts, events = result
    logprobs = [e.logprobs for e in events if isinstance(e, TextDelta) and e.logprobs]
    return texts, events[-1], logprobs


def test_concurrent_streams_equal_each_alone_and_share_batches(loop: LoopThread, batching: WorkerHandle) -> None:
    alone = [_summary(loop.run(collect(batching, b))) for b in BODIES]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(collect(batching, b) for b in BODIES))

    batched = [_summary(r) for r in loop.run(all_at_once())]
    assert batched == alone
    health = loop.run(batching.client.health())
    assert health.counters["max_batch_sequences"] >= 3
    assert health.counters["cached_prompt_tokens"] == 0 and health.counters["kv_leftover_on_join"] == 0
    assert health.counters["sequences_active"] == 0 and health.counters["kv_cells_used"] == 0
    assert alone[4][0][0] in (" yes", " no")
    entries = [e for chunk in alone[5][2] for e in chunk]
    assert len(entries) == 6 and all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries)


def test_the_choices_of_one_request_decode_together_and_count_the_prompt_once(loop: LoopThread,
                                                                               batching: WorkerHandle) -> None:
    """n=3 with a seed: choice i is what the request alone with seed + i is; the choices' events
    interleave (one batch, not one after the other); the prompt is decoded once and copied to the
    other two choices; usage counts the prompt once and every choice's tokens."""
    def body(seed: int, n: int = 1) -> GenerateBody:
        return GenerateBody(messages=[{"role": "user", "content": "Tell me about the moon."}], max_tokens=20,
                            temperature=1.0, seed=seed, n=n)

    alone = [loop.run(collect(batching, body(900 + i))) for i in range(3)]
    before = loop.run(batching.client.health()).counters
    texts, events = loop.run(collect(batching, body(900, n=3)))
    after = loop.run(batching.client.health()).counters
    assert texts == {i: alone[i][0][0] for i in range(3)}
    prompt = alone[0][1][-1].prompt_tokens
    assert events[-1] == StreamUsage(prompt, sum(a[1][-1].completion_tokens for a in alone))
    assert sorted(e.index for e in events if isinstance(e, ChoiceFinished)) == [0, 1, 2]
    order = [e.index for e in events if isinstance(e, TextDelta)]
    assert order.index(2) < len(order) - 1 - order[::-1].index(0)  # choice 2 began before choice 0 ended
    assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] == prompt
    assert after["shared_prompt_tokens"] - before["shared_prompt_tokens"] == 2 * prompt
    assert after["cached_prompt_tokens"] == 0 and after["kv_leftover_on_join"] == 0


def test_a_bad_grammar_is_a_400_before_the_stream(loop: LoopThread, batching: WorkerHandle) -> None:
    with pytest.raises(InvalidInput, match="grammar could not be parsed") as err:
        loop.run(collect(batching, GenerateBody(prompt="x", grammar="root ::= zz_secret_rule (((")))
    assert "zz_secret_rule" not in err.value.message


def test_a_client_that_leaves_mid_batch_stops_only_its_stream(loop: LoopThread, batching: WorkerHandle) -> None:
    others = [GenerateBody(prompt=f"{i}, {i + 1}, {i + 2},", max_tokens=50, temperature=0) for i in (3, 30, 300)]
    alone = [loop.run(collect(batching, b))[0] for b in others]

    async def leave_after_five() -> int:
        stream = batching.client.generate(GenerateBody(prompt="1, 2, 3, 4,", max_tokens=900, temperature=0))
        seen = 0
        async for event in stream:
            seen += isinstance(event, TextDelta)
            if seen == 5:
                break
        await stream.aclose()
        return seen

    async def scenario() -> list[Any]:
        return await asyncio.gather(leave_after_five(), *(collect(batching, b) for b in others))

    results = loop.run(scenario())
    assert results[0] == 5
    assert [r[0] for r in results[1:]] == alone

    async def idle() -> None:
        await wait_until_async(lambda: _idle(batching), 10, what="the left stream's sequence to leave")

    loop.run(idle())


async def _idle(handle: WorkerHandle) -> bool:
    health = await handle.client.health()
    return health.active_generations == 0 and health.counters["sequences_active"] == 0


def test_killing_the_worker_mid_batch_ends_every_stream_with_the_clean_error(loop: LoopThread,
                                                                            run_root: Any) -> None:
    sup = make_supervisor(loop, run_root / "batchkill", backoff_initial=0.05)
    spec = WorkerSpec(runtime="llamacpp", model_id="smollm2-kill", model_path=str(SMOLLM2_GGUF), threads=1,
                      n_ctx=512, options={"parallel": 4})
    handle = loop.run(sup.start(spec, region="local"))
    try:
        async def stream(i: int, started: asyncio.Event) -> int:
            seen = 0
            async for event in handle.client.generate(GenerateBody(prompt=f"{i}, {i + 1},", max_tokens=400,
                                                                    temperature=0)):
                seen += isinstance(event, TextDelta)
                if seen == 3:
                    started.set()
            return seen

        async def scenario() -> list[Any]:
            flags = [asyncio.Event() for _ in range(4)]
            tasks = [asyncio.ensure_future(stream(i, f)) for i, f in enumerate(flags)]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 120)
            os.kill(handle.pid, signal.SIGKILL)
            return await asyncio.gather(*tasks, return_exceptions=True)

        old_pid = handle.pid
        results = loop.run(scenario())
        assert all(isinstance(r, ServiceUnavailable) and "stopped while answering" in r.message for r in results)
        wait_for(loop, lambda: handle.state == WorkerState.READY and handle.pid != old_pid, timeout=60)
    finally:
        loop.run(sup.stop_all())


def test_sigterm_drains_a_batch(loop: LoopThread, run_root: Any) -> None:
    """Short streams in flight finish during the drain; a long one ends with the shutdown error."""
    sup = make_supervisor(loop, run_root / "batchdrain")
    spec = WorkerSpec(runtime="llamacpp", model_id="smollm2-drain", model_path=str(SMOLLM2_GGUF), threads=1,
                      n_ctx=2048, options={"parallel": 4}, drain_seconds=20)
    handle = loop.run(sup.start(spec, region="local"))

    async def scenario() -> list[Any]:
        short = [asyncio.ensure_future(collect(handle, GenerateBody(prompt=f"{i}, {i + 1},", max_tokens=8,
                                                                    temperature=0))) for i in (1, 2)]
        long = asyncio.ensure_future(collect(handle, GenerateBody(prompt="1, 2,", max_tokens=1900, temperature=0)))

        async def admitted() -> bool:
            return (await handle.client.health()).counters.get("sequences_started", 0) >= 3

        await wait_until_async(admitted, 30, what="three sequences in the batch")
        stopping = asyncio.ensure_future(sup.stop(handle))
        results = await asyncio.gather(*short, long, return_exceptions=True)
        await stopping
        return results

    results = loop.run(scenario())
    assert all(isinstance(r, tuple) for r in results[:2]), results[:2]
    assert isinstance(results[2], ServiceUnavailable) and "stopped before this request finished" in results[2].message
    assert handle.state == WorkerState.STOPPED


@pytest.fixture(scope="module")
def minilm(loop: LoopThread, supervisor: WorkerSupervisor) -> WorkerHandle:
    spec = WorkerSpec(runtime="transformers", model_id="minilm-batch", model_path=str(MINILM_DIR), threads=1)
    return loop.run(supervisor.start(spec, region="local"))


def test_concurrent_embeddings_share_batches_and_equal_each_alone(loop: LoopThread, minilm: WorkerHandle) -> None:
    texts = [f"text number {i} about {'boats' if i % 2 else 'trains'}" + " and more" * (i % 5) for i in range(32)]
    alone = [loop.run(minilm.client.embed([t])) for t in texts]
    before = loop.run(minilm.client.health()).counters

    async def at_once() -> list[Any]:
        return await asyncio.gather(*(minilm.client.embed([t]) for t in texts))

    together = loop.run(at_once())
    after = loop.run(minilm.client.health()).counters
    assert after["embed_requests"] - before.get("embed_requests", 0) == 32
    assert after["embed_batches"] - before.get("embed_batches", 0) < 16  # shared batches
    for one, other in zip(alone, together, strict=True):
        assert one.prompt_tokens == other.prompt_tokens
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(one.data[0], other.data[0], strict=True))


def test_one_bad_embeddings_request_does_not_fail_the_others_in_its_batch(loop: LoopThread,
                                                                          minilm: WorkerHandle) -> None:
    too_long = "word " * 2000

    async def mixed() -> list[Any]:
        calls = [minilm.client.embed([f"fine text {i}"]) for i in range(6)]
        calls.insert(3, minilm.client.embed([too_long]))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = loop.run(mixed())
    assert isinstance(results[3], InvalidInput) and "tokens" in results[3].message
    assert all(len(r.data) == 1 and len(r.data[0]) == 384 for i, r in enumerate(results) if i != 3)


def _files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    data = path.read_bytes()
                    hits += [f"{path}: {n.decode()}" for n in needles if n in data]
            except OSError:
                continue
    return hits


def test_p1_canaries_through_the_batched_path_leave_no_trace(loop: LoopThread, batching: WorkerHandle,
                                                           run_root: Path) -> None:
    """Canaries in prompts and grammars (a grammar makes the model write one, so it is in the
    output too), batched with each other, one stream cancelled, one grammar refused: each canary
    comes back only to its own caller, and none is in an error message, the worker's health,
    its run directory or /dev/shm."""
    canaries = [f"zqcanary{secrets.token_hex(6)}" for _ in range(4)]
    bodies = [GenerateBody(prompt=f"Repeat: {c}", max_tokens=40, temperature=0, grammar=f'root ::= "{c}"',
                           logprobs=1) for c in canaries[:3]]

    async def scenario() -> list[Any]:
        async def leave_early() -> None:
            stream = batching.client.generate(GenerateBody(prompt=f"{canaries[3]} 1, 2,", max_tokens=300))
            async for _ in stream:
                break
            await stream.aclose()

        async def refused() -> str:
            try:
                await collect(batching, GenerateBody(prompt=canaries[0], grammar=f"root ::= {canaries[0]} (("))
            except InvalidInput as exc:
                return exc.message
            return "not refused"

        return await asyncio.gather(*(collect(batching, b) for b in bodies), leave_early(), refused())

    results = loop.run(scenario())
    for canary, (texts, _) in zip(canaries, results[:3], strict=False):
        assert texts[0] == canary  # its own, and only its own
    assert "grammar" in results[4] and not any(c in results[4] for c in canaries)
    health = loop.run(batching.client.health()).model_dump_json()
    assert not any(c in health for c in canaries)
    assert _files_holding([run_root, Path("/dev/shm")], [c.encode() for c in canaries]) == []


def test_hostile_generation_fields_are_400s_and_cannot_end_the_worker(loop: LoopThread,
                                                                       batching: WorkerHandle) -> None:
    """A grammar no token can satisfy (llama.cpp would abort the process on it), a left-recursive
    one, out-of-range logprobs, a grammar with json_object, an oversized grammar: each is a 400
    naming the field, in a batch with an ordinary stream that completes, on the same worker."""
    pid = batching.pid
    ordinary = GenerateBody(prompt="1, 2, 3,", max_tokens=20, temperature=0)
    alone = loop.run(collect(batching, ordinary))[0]
    hostile = [
        GenerateBody(prompt="x", max_tokens=5, temperature=0.7, grammar="root ::= [\\x00]"),
        GenerateBody(prompt="x", max_tokens=5, temperature=0, grammar='root ::= root "a"'),
    ]

    async def scenario() -> list[Any]:
        return await asyncio.gather(collect(batching, ordinary), *(collect(batching, b) for b in hostile),
                                    return_exceptions=True)

    results = loop.run(scenario())
    assert results[0][0] == alone
    assert all(isinstance(r, InvalidInput) and r.field == "grammar" for r in results[1:])
    for bad in ({"logprobs": 21}, {"logprobs": -1}, {"grammar": "root ::= \"a\"", "response_format": "json_object"},
                {"grammar": "root ::= \"" + "a" * (1 << 20) + "\""}, {"grammar": ""}):
        async def post(body: dict[str, Any] = bad) -> Any:  # the raw body, past the client's own model
            conn = await batching.client._send("POST", "/generate",
                                               json.dumps({"prompt": "x", **body}).encode())
            status, data = conn.status, await conn.read_all()
            batching.client._release(conn)
            return status, json.loads(data)

        status, answer = loop.run(post())
        assert status == 400 and answer["error"]["code"] == "invalid_input", (bad, answer)
    assert batching.pid == pid and loop.run(batching.client.health()).status == "ready"
