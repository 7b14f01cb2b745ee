"""No tenant can recover another's prompt through prefix reuse or timing, on a real worker.

A serverless pool's worker serves every workspace that deploys its model, so tenant A's and
tenant B's requests reach the same llama.cpp batching engine one after the other. If the engine
kept A's KV cells (or a prompt cache) and reused a matching prefix for B, B could tell that A
sent a prompt starting with some text by B's own first-token latency: a prompt that shares a long
prefix with A's would skip most of its prefill.

The primary assertion is the engine's own counters (through the worker's health): every request
decodes its whole prompt, no prompt token is ever taken from the cache, no sequence id is found
holding cells. The second is the timing itself, designed for a loaded 2-core machine: rounds of
(A sends its secret, B probes) in which B's probe that shares A's long prefix and a control probe
of exactly as many tokens that shares nothing alternate in a random order, so drift in the
machine's load hits both alike; the paired latencies go to an exact one-sided Wilcoxon
signed-rank test, and the test fails only when the shared probe is faster with p < 0.002 (ten
pairs: at most one pair, the closest, the other way) and by a median of more than 25% (reuse of
a prefix of about 130 tokens makes the probe several times faster).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from modelport.workers.client import StreamUsage
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor
from tests.support.models import SMOLLM2_GGUF
from tests.support.stats import median_ratio, wilcoxon_greater
from tests.support.workers import LoopThread

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in a worker

ROUNDS = 10
P_LIMIT = 0.002
RATIO_LIMIT = 0.75

SHARED = "Internal memo for the finance team of the northern office, strictly confidential. " * 8
CONTROL = "Weather notes from the coastal station, recorded every hour by the duty officer. " * 8
SECRET = "The acquisition target is Okapi Holdings; the offer is 41 dollars a share."
QUESTION = "Summarise the above in one word:"


@pytest.fixture(scope="module")
def shared_worker(loop: LoopThread, supervisor: WorkerSupervisor) -> WorkerHandle:
    """A pool worker as serverless deployments get one: several sequence ids, every tenant's requests."""
    spec = WorkerSpec(runtime="llamacpp", model_id="smollm2-timing", model_path=str(SMOLLM2_GGUF), threads=1,
                      n_ctx=1024, options={"parallel": 4})
    return loop.run(supervisor.start(spec, region="local"))


async def _tokens(handle: WorkerHandle, prompt: str) -> int:
    return (await handle.client.count_tokens(prompt=prompt)).count


async def _probes(handle: WorkerHandle) -> tuple[str, str, str]:
    """A's secret prompt, B's shared-prefix probe and B's control probe of exactly as many tokens
    (padded after the prefix, so the shared probe keeps all of A's prefix)."""
    secret = f"{SHARED}\n{SECRET}\n"
    pads = [0, 0]

    def probes() -> tuple[str, str]:
        return (f"{SHARED}\n{'x ' * pads[0]}{QUESTION}", f"{CONTROL}\n{'x ' * pads[1]}{QUESTION}")

    for _ in range(100):  # pad the shorter one a word at a time until the counts agree
        counts = [await _tokens(handle, p) for p in probes()]
        if counts[0] == counts[1]:
            break
        pads[counts.index(min(counts))] += 1
    shared, control = probes()
    assert await _tokens(handle, control) == await _tokens(handle, shared) >= 120
    return secret, shared, control


async def _first_token(handle: WorkerHandle, prompt: str) -> tuple[float, int]:
    """Seconds from sending the request to its first event; and its prompt tokens."""
    start = time.perf_counter()
    first: float | None = None
    usage: StreamUsage | None = None
    async for event in handle.client.generate(GenerateBody(prompt=prompt, max_tokens=1, temperature=0)):
        if first is None:
            first = time.perf_counter() - start
        if isinstance(event, StreamUsage):
            usage = event
    assert first is not None and usage is not None
    return first, usage.prompt_tokens


def test_the_rank_test_flags_a_consistent_speedup_and_not_noise() -> None:
    """The statistics this file relies on can fail: ten pairs all faster give p = 1/1024."""
    assert wilcoxon_greater([0.5 + i / 100 for i in range(ROUNDS)]) == pytest.approx(1 / 1024)
    assert wilcoxon_greater([-0.01] + [0.5 + i / 100 for i in range(ROUNDS - 1)]) == pytest.approx(2 / 1024)
    assert wilcoxon_greater([(-1) ** i * (1 + i / 10) for i in range(ROUNDS)]) > 0.2
    assert wilcoxon_greater([-1.0] * ROUNDS) == 1.0
    assert median_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 1.0


def test_a_tenants_prompt_cannot_be_recovered_through_prefix_reuse_or_first_token_timing(
        loop: LoopThread, shared_worker: WorkerHandle) -> None:
    handle = shared_worker

    async def scenario() -> tuple[list[float], list[float], int, dict[str, int], dict[str, int]]:
        secret, shared, control = await _probes(handle)
        for prompt in (secret, shared, control):  # warm up: first calls pay for page faults
            await _first_token(handle, prompt)
        before = (await handle.client.health()).counters
        order = random.Random(16)
        shared_times: list[float] = []
        control_times: list[float] = []
        decoded = 0
        for _ in range(ROUNDS):
            probes = [(shared, shared_times), (control, control_times)]
            order.shuffle(probes)
            for prompt, times in probes:
                _, tokens = await _first_token(handle, secret)  # tenant A
                seconds, probe_tokens = await _first_token(handle, prompt)  # tenant B, right after
                times.append(seconds)
                decoded += tokens + probe_tokens
        after = (await handle.client.health()).counters
        return shared_times, control_times, decoded, before, after

    shared_times, control_times, decoded, before, after = loop.run(scenario(), timeout=900)
    # primary: the engine's own counters
    assert after["cached_prompt_tokens"] == 0 and after["kv_leftover_on_join"] == 0
    assert after["prompt_tokens_decoded"] - before["prompt_tokens_decoded"] == decoded
    # then what B can measure
    differences = [c - s for s, c in zip(shared_times, control_times, strict=True)]
    p = wilcoxon_greater(differences)
    ratio = median_ratio(shared_times, control_times)
    summary = (f"shared-prefix probe vs control: median ratio {ratio:.2f}, one-sided Wilcoxon p = {p:.5f}; "
               f"shared {_ms(shared_times)}, control {_ms(control_times)}")
    print(summary)
    assert not (p < P_LIMIT and ratio < RATIO_LIMIT), summary


def _ms(times: list[float]) -> Any:
    return [round(t * 1000) for t in times]
