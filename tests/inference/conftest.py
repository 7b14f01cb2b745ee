"""One server with the real bundled models, shared by the modules of this package that are
about what the models answer (the official clients, seeds): starting it and loading the
models costs seconds, so it is started once. The plumbing tests start their own lean servers
with the echo runtimes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.inference import EMBED_MODEL, ModelServer, create_deployment, wait_state
from tests.support.server import start_server


@pytest.fixture(scope="package")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    # One thread per worker: the two real models' workers (and other test processes) share the
    # machine's cores, and llama.cpp's spinning threads collapse when cores are oversubscribed.
    s = start_server(tmp_path_factory.mktemp("models") / "home", env_extra={"MODELPORT_WORKER_THREADS": "1"})
    try:
        embed = create_deployment(s, "embed", EMBED_MODEL, wait=False)
        assert wait_state(s, "chat")["state"] == "succeeded"
        assert wait_state(s, "embed")["state"] == "succeeded"
        yield ModelServer(s, (s.home / "chat.key").read_text().strip(), embed["keys"]["primary"])
    finally:
        s.stop()
