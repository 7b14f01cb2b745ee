"""The environment every test runs in: its own home, and caches in the session's temp directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modelport.config import build_settings
from modelport.safety.backends.base import BackendSettings
from tests.support.server import server_env


def test_caches_go_to_the_sessions_temp_directory_never_to_the_users(session_cache_dir: Path,
                                                                       clean_environ: Path) -> None:
    assert Path(os.environ["MODELPORT_CACHE_DIR"]) == session_cache_dir
    assert session_cache_dir.is_relative_to(tempfile.gettempdir())
    cache = BackendSettings.from_settings(build_settings()).cache_dir  # what a server's safety backends get
    assert cache is not None and cache.is_relative_to(session_cache_dir)
    assert not cache.is_relative_to(Path.home() / ".cache")
    env = server_env(clean_environ, 1234)  # what a test server is started with
    assert env["MODELPORT_CACHE_DIR"] == str(session_cache_dir) and env["MODELPORT_HOME"] == str(clean_environ)


def test_every_test_has_its_own_home(clean_environ: Path, tmp_path: Path) -> None:
    assert Path(os.environ["MODELPORT_HOME"]) == clean_environ and clean_environ.is_relative_to(tmp_path)
