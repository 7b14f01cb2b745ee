"""Fixtures shared by the whole suite: a clean environment, real databases, a real server on
loopback, the KMS server. Helpers that tests import live in tests/support/, never in a conftest.

Every test gets its own MODELPORT_HOME and an environment without MODELPORT_* variables
(except the test-only ones), so nothing leaks between tests or from the developer's shell. Caches
that the code under test keeps between processes (the safety classifier's ONNX graph) go to one
temporary MODELPORT_CACHE_DIR per test session, never to the user's ~/.cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# pytest-xdist's workers inherit COLUMNS and LINES set for the controller's terminal (80 when it
# has none), and rich fixes a console's width from COLUMNS when the console is built (the CLI's
# consoles are built at import, modelport/cli/output.py): drop them before anything imports the
# CLI, so that a worker sees what a plain run sees (tests that need a width set it per call).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

from modelport.kms.testing import start_kms_server
from tests.support import pg
from tests.support.kms import FlakyFileSystem
from tests.support.server import KEEP_ENV, Server, start_server

if TYPE_CHECKING:
    from modelport.safety.backends.minilm import MiniLMBackend

#: Fixtures that load the bundled chat model: a test that uses one must be marked `chat_model`,
#: so that `make test-fast` (-m "not chat_model and not training") leaves it out.
CHAT_MODEL_FIXTURES = {"llama", "models"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if CHAT_MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))
                and not item.get_closest_marker("chat_model")]
    if unmarked:
        raise pytest.UsageError("these tests load the chat model but are not marked chat_model:\n  "
                                + "\n  ".join(unmarked))


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir() -> Iterator[Path]:
    """One cache directory for the session, set before any server or module fixture starts, so
    that servers and in-process backends build their caches there (once per session)."""
    path = Path(tempfile.mkdtemp(prefix="modelport-test-cache-"))
    before = os.environ.get("MODELPORT_CACHE_DIR")
    os.environ["MODELPORT_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("MODELPORT_CACHE_DIR", None)
        else:
            os.environ["MODELPORT_CACHE_DIR"] = before
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, session_cache_dir: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("MODELPORT_") and key not in KEEP_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv("MODELPORT_CACHE_DIR", str(session_cache_dir))
    home = tmp_path / "home"
    monkeypatch.setenv("MODELPORT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


# -- databases -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str | None]:
    with pg.server_url() as (url, how):
        if url is None:
            print(f"\nPostgreSQL store tests will be SKIPPED: {how}.")
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The metadata store on each backend: SQLite in a temp dir, PostgreSQL in a fresh database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    admin = request.getfixturevalue("postgres_admin_url")
    if admin is None:
        pytest.skip("PostgreSQL not available: set MODELPORT_TEST_DATABASE_URL or install the server binaries")
    url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, url)


# -- a real server on loopback ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per test module (starting one costs a few seconds)."""
    s = start_server(tmp_path_factory.mktemp("srv") / "home")
    try:
        yield s
    finally:
        s.stop()


# -- the safety classifier -------------------------------------------------------------------

@pytest.fixture(scope="session")
def minilm(session_cache_dir: Path) -> MiniLMBackend:
    """The real shipped MiniLM safety backend in this process, loaded once per session (its ONNX
    graph is built into the session's MODELPORT_CACHE_DIR, as a server's is)."""
    import torch  # here, not at the top: most test runs never load torch

    from modelport.config import build_settings
    from modelport.safety.backends.base import BackendSettings
    from modelport.safety.backends.minilm import MiniLMBackend

    torch.set_num_threads(2)
    settings = build_settings({"MODELPORT_CACHE_DIR": str(session_cache_dir)})
    backend = MiniLMBackend(settings=BackendSettings.from_settings(settings))
    backend.warm_up()
    return backend


# -- key providers and storage failures ------------------------------------------------------

@pytest.fixture(scope="session")
def kms_endpoint() -> Iterator[str]:
    """moto_server in a subprocess on a free loopback port, for the whole session."""
    kms = start_kms_server()
    try:
        yield kms.endpoint_url
    finally:
        kms.stop()


@pytest.fixture
def flaky_fs() -> FlakyFileSystem:
    return FlakyFileSystem()
