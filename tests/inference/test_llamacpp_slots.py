"""One knob sizes a llama.cpp worker: MODELPORT_LLAMACPP_PARALLEL is both the sequences its
batching engine decodes together and the requests its pool hands it at once. MODELPORT_WORKER_SLOTS
sizes the other runtimes and refuses to name llamacpp (two knobs could disagree: a pool sending
more than the engine batches would queue inside the worker, out of the fair scheduler's sight)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelport.config import Settings, build_settings
from modelport.inference.provisioning import worker_concurrency
from tests.support.inference import CHAT_MODEL, chat, create_deployment, workers
from tests.support.server import start_lean


def test_worker_slots_refuses_llamacpp_and_names_the_setting_to_use(clean_environ) -> None:
    with pytest.raises(ValidationError, match="MODELPORT_LLAMACPP_PARALLEL"):
        Settings(worker_slots={"llamacpp": 8})
    with pytest.raises(ValidationError, match="MODELPORT_LLAMACPP_PARALLEL"):
        build_settings({"MODELPORT_WORKER_SLOTS": '{"llamacpp": 8, "echo": 2}'})
    for bad in ("0", "257", "four"):
        with pytest.raises(ValidationError, match="llamacpp_parallel"):
            build_settings({"MODELPORT_LLAMACPP_PARALLEL": bad})
    assert build_settings({"MODELPORT_LLAMACPP_PARALLEL": "8"}).llamacpp_parallel == 8


def test_each_runtime_takes_what_it_works_on_together(clean_environ) -> None:
    settings = Settings(llamacpp_parallel=6, worker_slots={"transformers": 3})
    assert worker_concurrency(settings, "llamacpp", "chat-completion") == 6
    assert worker_concurrency(settings, "transformers", "chat-completion") == 3
    plain = Settings()
    assert worker_concurrency(plain, "llamacpp", "chat-completion") == plain.llamacpp_parallel == 4
    assert worker_concurrency(plain, "transformers", "embeddings") == 32
    assert worker_concurrency(plain, "transformers", "chat-completion") == 1
    assert worker_concurrency(plain, "echo", "chat-completion") == 64


@pytest.mark.chat_model
def test_the_pool_slots_and_the_engine_follow_one_setting(tmp_path) -> None:
    """A real server and a real SmolLM2 worker: the pool's slots and the engine's `parallel`
    (worker health counters) are both MODELPORT_LLAMACPP_PARALLEL."""
    server = start_lean(tmp_path / "home", None, MODELPORT_LLAMACPP_PARALLEL="3", MODELPORT_WORKER_THREADS="1")
    try:
        key = create_deployment(server, "batch", CHAT_MODEL)["keys"]["primary"]
        r = chat(server, key, None, "hello", max_tokens=2, temperature=0)
        assert r.status_code == 200, r.text
        with server.client() as admin:
            pools = admin.get("/api/v1/pools").json()
        (pool,) = [p for p in pools if p["instances"] >= 1]
        assert pool["slots"] == 3
        (worker,) = workers(server).values()
        assert worker.health.counters["parallel"] == 3
        assert worker.health.counters["cached_prompt_tokens"] == 0
    finally:
        server.stop()
