"""Fixtures for worker tests: an event loop in a thread, real supervisors, real workers.

The supervisor and its workers live as long as the module, so the GGUF loads in as few worker
processes as possible (helpers in tests/support/workers.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.workers.protocol import WorkerSpec
from modelport.workers.supervisor import WorkerHandle, WorkerSupervisor
from tests.support.models import SMOLLM2_GGUF
from tests.support.workers import LoopThread, make_supervisor


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def run_root() -> Iterator[Path]:
    """Short paths: Unix socket paths must stay under 108 bytes (pytest's tmp paths are long)."""
    path = Path(tempfile.mkdtemp(prefix="mpw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def supervisor(loop: LoopThread, run_root: Path) -> Iterator[WorkerSupervisor]:
    sup = make_supervisor(loop, run_root / "main", health_interval=0.5, backoff_initial=0.1)
    yield sup
    loop.run(sup.stop_all())


@pytest.fixture(scope="module")
def llama(loop: LoopThread, supervisor: WorkerSupervisor) -> WorkerHandle:
    spec = WorkerSpec(runtime="llamacpp", model_id="smollm2", model_path=str(SMOLLM2_GGUF), threads=1,
                      n_ctx=1024)
    return loop.run(supervisor.start(spec, region="local"))
