"""The supervisor's lifecycle on real worker processes (the instant `echo` runtime and the
`probe` test runtime): start failures, crash and replacement, health-check kills, crash loops,
SIGTERM draining, queue limits."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from modelport.errors import Conflict, InvalidInput, ServiceUnavailable, TooManyRequests, Unprocessable
from modelport.workers.client import TextDelta
from modelport.workers.protocol import GenerateBody, WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerState, WorkerSupervisor
from tests.support.waiting import wait_until_async
from tests.support.workers import LoopThread, collect, make_supervisor, wait_for

PROBE = "tests.workers.probe_runtime:ProbeRuntime"
WORDS = [{"role": "user", "content": "alpha beta gamma delta"}]


def echo(model_id: str, **options: object) -> WorkerSpec:
    return WorkerSpec(runtime="echo", model_id=model_id, options=options, drain_seconds=0.5)


async def health_is(handle: WorkerHandle, **expected: object) -> bool:
    """The worker's own health report has these values (asked over its socket)."""
    health = await handle.client.health()
    return all(getattr(health, k) == v for k, v in expected.items())


def test_start_failures_say_what_to_fix(loop: LoopThread, supervisor: WorkerSupervisor, tmp_path: Path) -> None:
    not_gguf = tmp_path / "m.gguf"
    not_gguf.write_bytes(b"\x00" * 64)
    not_gguf.chmod(0o644)
    tmp_path.chmod(0o755)
    tmp_path.parent.chmod(0o755)
    with pytest.raises(Unprocessable, match="not a valid GGUF"):
        loop.run(supervisor.start(WorkerSpec(runtime="llamacpp", model_id="bad", model_path=str(not_gguf)),
                                  region="local"))
    with pytest.raises(InvalidInput, match="unknown runtime 'nope'"):
        loop.run(supervisor.start(WorkerSpec(runtime="nope", model_id="x", model_path="/dev/null"), "local"))
    with pytest.raises(ServiceUnavailable) as err:
        loop.run(supervisor.start(WorkerSpec(runtime=PROBE, model_id="dies", model_path="/dev/null",
                                             options={"exit_on_load": 7}), "local"))
    assert "exited with code 7 while starting" in err.value.message
    assert "probe: exiting during load on purpose" in err.value.message  # its startup output
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    with pytest.raises(InvalidInput, match="not readable by worker processes"):
        loop.run(supervisor.start(WorkerSpec(runtime="llamacpp", model_id="x", model_path=str(secret)), "local"))
    assert supervisor.handles() == []  # failed starts leave nothing behind
    assert list((supervisor.run_dir / "workers").iterdir()) == []


def test_regions_are_enforced(loop: LoopThread, run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "eu", regions={"eu-west"})
    with pytest.raises(Conflict, match="not in 'us-east'"):
        loop.run(sup.start(echo("e"), region="us-east"))
    handle = loop.run(sup.start(echo("e"), region="eu-west"))
    assert handle.region == "eu-west"
    loop.run(sup.stop_all())


def test_a_killed_worker_fails_its_stream_cleanly_and_is_replaced(loop: LoopThread, run_root: Path) -> None:
    changes: list[tuple[str, str]] = []
    sup = make_supervisor(loop, run_root / "crash", backoff_initial=0.05,
                          on_state_change=lambda h, old, new: changes.append((old.value, new.value)))
    handle = loop.run(sup.start(echo("crashy", delay_ms=20), region="local"))
    old_pid = handle.pid

    async def stream_and_kill() -> list[str]:
        got = []
        async for event in handle.client.generate(GenerateBody(messages=WORDS, max_tokens=1000)):
            if isinstance(event, TextDelta):
                got.append(event.text)
                if len(got) == 3:
                    os.kill(old_pid, signal.SIGKILL)
        return got

    with pytest.raises(ServiceUnavailable, match="stopped while answering"):
        loop.run(stream_and_kill())
    wait_for(loop, lambda: handle.state == WorkerState.READY and handle.pid != old_pid)
    assert handle.restarts == 1
    assert handle.last_exit == "killed by signal SIGKILL"
    texts, _ = loop.run(collect(handle, GenerateBody(messages=WORDS)))
    assert texts[0] == "alpha beta gamma delta"
    assert changes == [("starting", "ready"), ("ready", "restarting"), ("restarting", "ready")]
    loop.run(sup.stop_all())
    assert changes[-1] == ("ready", "stopped")


def test_a_crash_loop_backs_off_and_ends_failed(loop: LoopThread, run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "loop", backoff_initial=0.05, max_consecutive_failures=2)
    started = time.monotonic()
    handle = loop.run(sup.start(WorkerSpec(runtime=PROBE, model_id="loop", model_path="/dev/null",
                                           options={"crash_after_s": 1.0}), region="local"))
    wait_for(loop, lambda: handle.state == WorkerState.FAILED, timeout=60)
    assert handle.restarts == 2
    assert handle.last_exit == "exited with code 9"
    assert time.monotonic() - started > 0.05 + 0.1  # two backoff sleeps, doubling
    loop.run(sup.stop_all())


def test_a_worker_that_stops_answering_health_checks_is_replaced(loop: LoopThread, run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "hang", health_interval=0.1, health_timeout=0.2, health_failures=2,
                          backoff_initial=0.05)
    handle = loop.run(sup.start(echo("hangs"), region="local"))
    frozen = handle.pid
    os.kill(frozen, signal.SIGSTOP)
    wait_for(loop, lambda: handle.state == WorkerState.READY and handle.pid != frozen)
    assert handle.last_exit == "killed by signal SIGKILL"
    assert loop.run(handle.client.health()).status == "ready"
    loop.run(sup.stop_all())


def test_sigterm_drains_in_flight_requests_then_ends_the_rest_with_an_error(loop: LoopThread,
                                                                           run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "drain")
    handle = loop.run(sup.start(echo("draining", delay_ms=50), region="local"))

    async def scenario() -> tuple[object, object, object, float]:
        short = asyncio.ensure_future(collect(handle, GenerateBody(messages=WORDS, max_tokens=6)))
        long = asyncio.ensure_future(collect(handle, GenerateBody(messages=WORDS, max_tokens=1000)))
        await wait_until_async(lambda: health_is(handle, requests_total=2), 10, what="both requests admitted")
        began = time.monotonic()
        stopping = asyncio.ensure_future(sup.stop(handle))
        await wait_until_async(lambda: health_is(handle, status="draining"), 10, what="the worker to drain")
        late = await asyncio.gather(collect(handle, GenerateBody(messages=WORDS)), return_exceptions=True)
        results = await asyncio.gather(short, long, return_exceptions=True)
        await stopping
        return results[0], results[1], late[0], time.monotonic() - began

    short, long, late, took = loop.run(scenario())
    assert isinstance(short, tuple) and short[0][0].split()[:2] == ["alpha", "beta"]  # finished in the drain
    assert isinstance(long, ServiceUnavailable) and "stopped before this request finished" in long.message
    assert isinstance(late, ServiceUnavailable)  # refused: shutting down
    assert 0.4 < took < 5
    assert handle.state == WorkerState.STOPPED


def test_a_full_queue_answers_429(loop: LoopThread, run_root: Path) -> None:
    sup = make_supervisor(loop, run_root / "queue")
    spec = WorkerSpec(runtime="echo", model_id="q", options={"delay_ms": 20}, max_queue=1)
    handle = loop.run(sup.start(spec, region="local"))

    async def scenario() -> object:
        # 100 tokens at 20 ms: the first request holds the model while the others arrive
        running = asyncio.ensure_future(collect(handle, GenerateBody(messages=WORDS, max_tokens=100)))
        await wait_until_async(lambda: health_is(handle, requests_total=1), 10, what="the first request to run")
        queued = asyncio.ensure_future(collect(handle, GenerateBody(messages=WORDS, max_tokens=2)))
        await wait_until_async(lambda: health_is(handle, requests_total=2), 10, what="the second request to wait")
        third = await asyncio.gather(collect(handle, GenerateBody(messages=WORDS)), return_exceptions=True)
        await asyncio.gather(running, queued)
        return third[0]

    assert isinstance(loop.run(scenario()), TooManyRequests)
    loop.run(sup.stop_all())
