"""The llama.cpp runtime, in this process, on the bundled SmolLM2 GGUF."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from modelport.errors import InvalidInput, Unprocessable
from modelport.runtimes.base import GenerateRequest, ModelSpec
from modelport.runtimes.llamacpp import LlamaCppRuntime
from tests.support.models import SMOLLM2_GGUF

pytestmark = pytest.mark.chat_model  # loads SmolLM2 in this process

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def runtime() -> Iterator[LlamaCppRuntime]:
    rt = LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), n_ctx=1024, threads=1))
    yield rt
    rt.close()


def run(rt: LlamaCppRuntime, cancel: threading.Event | None = None, **kw) -> tuple[str, str, object]:
    deltas = list(rt.generate(GenerateRequest(**kw), cancel or threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage


def test_chat_generation_matches_llama_cpp_python_and_counts_exactly(runtime: LlamaCppRuntime) -> None:
    """Same greedy text as llama-cpp-python's own chat completion (its template renderer and
    decode loop), so the sandboxed template and our loop feed the model the same prompt."""
    messages = [{"role": "user", "content": "Say hello to the team."}]
    text, finish, usage = run(runtime, messages=messages, max_tokens=40, temperature=0)
    reference = llama_cpp.Llama(str(SMOLLM2_GGUF), n_ctx=1024, n_threads=1, verbose=False)
    try:
        expected = reference.create_chat_completion(messages, max_tokens=40, temperature=0)
    finally:
        reference.close()
    assert text == expected["choices"][0]["message"]["content"]
    assert finish == expected["choices"][0]["finish_reason"]
    assert usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert usage.prompt_tokens == runtime.count_tokens(messages=messages)
    assert runtime.context_length == 1024


def test_same_seed_same_output_at_temperature_one(runtime: LlamaCppRuntime) -> None:
    first = run(runtime, messages=POEM, max_tokens=30, temperature=1.0, seed=1234)
    second = run(runtime, messages=POEM, max_tokens=30, temperature=1.0, seed=1234)
    other = run(runtime, messages=POEM, max_tokens=30, temperature=1.0, seed=99)
    assert first == second
    assert first[0] != other[0]


def test_max_tokens_ends_with_length(runtime: LlamaCppRuntime) -> None:
    text, finish, usage = run(runtime, prompt="1, 2, 3, 4,", max_tokens=7, temperature=0)
    assert (finish, usage.completion_tokens) == ("length", 7)
    assert text.startswith(" 5, 6")


def test_stop_sequence_ends_generation_without_returning_it(runtime: LlamaCppRuntime) -> None:
    text, finish, _ = run(runtime, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=(" 7",))
    assert (text, finish) == (" 5, 6,", "stop")


def test_json_object_gives_parseable_json(runtime: LlamaCppRuntime) -> None:
    text, finish, _ = run(runtime, messages=[{"role": "user", "content": "Describe a cat as JSON with name and age."}],
                          max_tokens=300, temperature=0, response_format="json_object")
    assert finish == "stop"
    assert isinstance(json.loads(text), dict)


def test_no_kv_prefix_is_reused_across_requests(runtime: LlamaCppRuntime) -> None:
    """llama.cpp would reuse the KV cache of the previous request's matching prefix; the runtime
    removes each sequence's cells when it leaves, so the second request decodes its whole prompt
    again (the engine's own count) and its output equals the output of the same request alone."""
    shared = "You are a helpful assistant. " * 20
    tenant_a = [{"role": "system", "content": shared}, {"role": "user", "content": "Tenant A secret question."}]
    tenant_b = [{"role": "system", "content": shared}, {"role": "user", "content": "Name a colour."}]
    alone = run(runtime, messages=tenant_b, max_tokens=12, temperature=1.0, seed=5)
    run(runtime, messages=tenant_a, max_tokens=12, temperature=1.0, seed=5)
    before = runtime.counters()["prompt_tokens_decoded"]
    after_a = run(runtime, messages=tenant_b, max_tokens=12, temperature=1.0, seed=5)
    evaluated = runtime.counters()["prompt_tokens_decoded"] - before
    assert after_a == alone
    assert evaluated == runtime.count_tokens(messages=tenant_b)
    assert runtime.counters()["cached_prompt_tokens"] == 0


def test_prompt_over_the_context_window_is_refused_before_inference(runtime: LlamaCppRuntime) -> None:
    marker = "zebra-marker-91"
    long = [{"role": "user", "content": (marker + " ") * 1200}]
    assert runtime.count_tokens(messages=long) > runtime.context_length
    before = runtime.tokens_generated_total
    with pytest.raises(InvalidInput) as err:
        run(runtime, messages=long)
    assert marker not in str(err.value)
    assert runtime.tokens_generated_total == before


def test_cancel_stops_decoding(runtime: LlamaCppRuntime) -> None:
    cancel = threading.Event()
    stream = runtime.generate(GenerateRequest(prompt="1, 2, 3, 4,", max_tokens=500, temperature=0), cancel)
    for _ in range(3):
        next(stream)
    cancel.set()
    *rest, last = list(stream)
    assert rest == []  # no text after the cancel, no finish_reason:
    # only what it generated (metering bills a cut stream with it)
    assert last.cancelled and not last.text and last.usage.completion_tokens >= 3
    assert runtime.tokens_generated_total > 0


def test_model_from_a_memfd(tmp_path: Path) -> None:
    fd = os.memfd_create("model")
    try:
        with open(SMOLLM2_GGUF, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        rt = LlamaCppRuntime.load(ModelSpec(f"/proc/self/fd/{fd}", n_ctx=256, threads=1))
        try:
            text, _, _ = run(rt, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
        finally:
            rt.close()
    finally:
        os.close(fd)
    assert text == " 5, 6,"


def test_not_a_gguf_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(Unprocessable, match="not a valid GGUF"):
        LlamaCppRuntime.load(ModelSpec(str(bogus)))
    with pytest.raises(Unprocessable, match="not a valid GGUF"):
        LlamaCppRuntime.load(ModelSpec(str(SMOLLM2_GGUF), lora_path=str(bogus)))
    truncated = tmp_path / "truncated.gguf"
    with open(SMOLLM2_GGUF, "rb") as src:
        truncated.write_bytes(src.read(4096))
    with pytest.raises(Unprocessable, match="cannot load"):
        LlamaCppRuntime.load(ModelSpec(str(truncated)))
