"""schemathesis against a live server: the OpenAPI document describes the API exactly.

Generated clients and validators trust /openapi.json, so every answer must be one it documents
(status, content type, body schema, headers), every request it calls valid must be accepted (or
refused for a documented reason: 401, 403, 404, 409) and every request it calls invalid must be
refused. schemathesis checks all of that, with all its checks and in all four phases (schema
examples, coverage of every keyword's boundaries, random fuzzing, stateful sequences that follow
the links between operations), against a real `modelport serve` on a throwaway home: once with
a reader's API key and once with an owner's (of a workspace made for the run). Fine-tuning job
creation (each queued job holds an encrypted copy of its dataset and is the subject of the
fine-tuning tests) and the model download (it streams whole model files) are left out. A fixed
seed and schemathesis' deterministic mode make each run the same.

The exact command, run for each key (PORT and KEY are the run's own):

    st --config-file tests/api/schemathesis.toml run http://127.0.0.1:PORT/openapi.json --url http://127.0.0.1:PORT \\
        -H "Authorization: Bearer KEY" --checks all --mode all \\
        --phases examples,coverage,fuzzing,stateful --max-examples 5 \\
        --seed 20261202 --generation-deterministic \\
        --suppress-health-check all --request-timeout 120 --max-response-time 120 \\
        --workers 1 \\
        --exclude-path /api/v1/models/{name}/download \\
        --exclude-name "POST /api/v1/finetuning/jobs"

It must report 0 failures and 0 errors. To reproduce by hand: `modelport serve` on a fresh home,
make an owner and a reader (tests/support/tenants.make_tenant does it over the API), then run
the command above with `.venv/bin/st`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inference import CHAT_MODEL, EMBED_MODEL
from tests.support.server import Server, start_server
from tests.support.tenants import make_tenant

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 20261202
MAX_EXAMPLES = 5
#: Left out of the run (module docstring): (option, value).
EXCLUDED = (("--exclude-path", "/api/v1/models/{name}/download"),
            ("--exclude-name", "POST /api/v1/finetuning/jobs"))


def st_command(url: str, key: str) -> list[str]:
    """The command of the module docstring."""
    st = Path(sys.executable).with_name("st")
    argv = [str(st), "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--url", url,
            "-H", f"Authorization: Bearer {key}",
            "--checks", "all", "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-deterministic",
            "--suppress-health-check", "all", "--request-timeout", "120", "--max-response-time", "120",
            "--workers", "1"]
    for option, value in EXCLUDED:
        argv += [option, value]
    return argv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A throwaway installation; every model on the echo runtime, so that a deployment the run
    creates starts a real worker that loads nothing, and fine-tuning jobs stay queued."""
    s = start_server(tmp_path_factory.mktemp("st") / "home", env_extra={
        "MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false", "MODELPORT_FINETUNE_CONCURRENCY": "0",
        "MODELPORT_RUNTIME_OVERRIDES": json.dumps({CHAT_MODEL: "echo", EMBED_MODEL: "echo"})})
    try:
        yield s
    finally:
        s.stop()


def run_schemathesis(server: Server, key: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEMATHESIS_", "HYPOTHESIS_"))}
    return subprocess.run(st_command(server.url, key), cwd=cwd, env={**env, "NO_COLOR": "1"},
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("role", ["reader", "owner"])
def test_schemathesis_finds_nothing(server: Server, role: str, tmp_path: Path) -> None:
    tenant = make_tenant(server, roles=("owner", "reader"))
    r = run_schemathesis(server, tenant.keys[role], tmp_path)
    tail = (r.stdout + r.stderr)[-20000:].replace(tenant.keys[role], "<key>")
    assert r.returncode == 0, f"schemathesis ({role}) failed:\n{tail}"
    counts = re.search(r"(\d+) generated, (\d+) passed", r.stdout)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 1000, tail
    with server.client() as admin:  # the server is still up and serving after the run
        assert admin.get("/api/v1/me").status_code == 200
