"""Any sequence of joins, cancels, early leaves and completions leaves the batching engine as it
found it: no KV cell held, no sequence id lost, no sequence still counted, every stream ended.

A hypothesis state machine drives the real engine (bundled SmolLM2, one thread, short streams):
rules start streams with random lengths and stop strings (and requests of several choices,
which fork from one prompt or wait for a sequence id), cancel or abandon running ones, and
let others run to their end; the invariant is checked after each rule, and the engine is
checked empty at the end of every run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import llama_cpp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from modelport.runtimes.base import Delta, GenerateRequest, ModelSpec
from modelport.runtimes.llamacpp import LlamaCppRuntime
from tests.support.models import SMOLLM2_GGUF

pytestmark = pytest.mark.chat_model

PARALLEL = 3


@pytest.fixture(scope="module")
def runtime() -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=128, threads=1, options={"parallel": PARALLEL}))
    yield rt
    rt.close()


def _deltas(choices: Iterator[tuple[int, Delta]]) -> Iterator[Delta]:
    """The Deltas of every choice; closing this closes the choices' reader."""
    try:
        for _, delta in choices:
            yield delta
    finally:
        choices.close()  # type: ignore[attr-defined]


def test_no_sequence_of_calls_leaks_kv_cells_or_sequence_ids(runtime: LlamaCppRuntime) -> None:
    engine = runtime._engine

    class Engine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.streams: list[tuple[Iterator[Delta], threading.Event]] = []

        @precondition(lambda self: len(self.streams) < PARALLEL + 2)  # some wait for a sequence id
        @rule(start=st.integers(0, 90), tokens=st.integers(1, 6), stop=st.sampled_from([(), (",",), (" 1",)]))
        def join(self, start: int, tokens: int, stop: tuple[str, ...]) -> None:
            cancel = threading.Event()
            stream = runtime.generate(GenerateRequest(prompt=f"{start}, {start + 1},", max_tokens=tokens,
                                                      temperature=0, stop=stop), cancel)
            next(stream, None)  # the generator runs up to its first delta: the request is in the engine
            self.streams.append((stream, cancel))

        @precondition(lambda self: len(self.streams) < PARALLEL + 2)
        @rule(start=st.integers(0, 90), tokens=st.integers(1, 6), n=st.integers(2, PARALLEL + 1))
        def join_with_choices(self, start: int, tokens: int, n: int) -> None:
            """A request with `n` choices: some fork from its prompt, some wait for an id."""
            cancel = threading.Event()
            stream = _deltas(runtime.generate_choices(
                GenerateRequest(prompt=f"{start}, {start + 1},", max_tokens=tokens, temperature=0.9, seed=start),
                n, cancel))
            next(stream, None)
            self.streams.append((stream, cancel))

        @precondition(lambda self: self.streams)
        @rule(which=st.integers(0, 10))
        def cancel(self, which: int) -> None:
            stream, cancel = self.streams.pop(which % len(self.streams))
            cancel.set()
            assert all(d.finish_reason is None or d.usage is not None for d in stream)

        @precondition(lambda self: self.streams)
        @rule(which=st.integers(0, 10))
        def abandon(self, which: int) -> None:
            stream, _ = self.streams.pop(which % len(self.streams))
            stream.close()  # a reader that leaves without reading on

        @precondition(lambda self: self.streams)
        @rule(which=st.integers(0, 10))
        def finish(self, which: int) -> None:
            stream, _ = self.streams.pop(which % len(self.streams))
            last = list(stream)
            assert not last or last[-1].finish_reason in (None, "stop", "length")

        @invariant()
        def bounded(self) -> None:
            counters = runtime.counters()
            assert counters["kv_leftover_on_join"] == 0 and counters["cached_prompt_tokens"] == 0
            assert len(engine._free_slots) + len(engine._active) <= PARALLEL

        def teardown(self) -> None:
            for stream, cancel in self.streams:
                cancel.set()
                list(stream)
            # one more request passes through a step, so every leave has been processed
            list(runtime.generate(GenerateRequest(prompt="1,", max_tokens=1, temperature=0), threading.Event()))
            counters = runtime.counters()
            assert counters["sequences_active"] == 0 and counters["kv_cells_used"] == 0
            assert sorted(engine._free_slots) == list(range(PARALLEL))
            assert all(llama_cpp.llama_memory_seq_pos_max(engine._mem, s) == -1 for s in range(PARALLEL))

    run_state_machine_as_test(Engine, settings=settings(max_examples=12, stateful_step_count=10, deadline=None,
                                                        suppress_health_check=list(HealthCheck)))
