"""Fixtures for datastore tests: real datastores on disk, failure injection at the OS edge."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from modelport.datastore import Datastore
from tests.support.kms import FlakyFileSystem

# Small chunks make multi-chunk objects cheap: the format is the same at any chunk size.
TEST_CHUNK = 4096


@pytest.fixture
def master_keys() -> tuple[bytes, bytes]:
    """(platform master key, workspace master key): independent random keys."""
    return os.urandom(32), os.urandom(32)


@pytest.fixture
def make_store(tmp_path: Path, flaky_fs: FlakyFileSystem, master_keys: tuple[bytes, bytes]) -> Callable[..., Datastore]:
    def make(root: Path | None = None, **kwargs: object) -> Datastore:
        kwargs.setdefault("chunk_size", TEST_CHUNK)
        return Datastore.create(
            root or tmp_path / "datastore",
            platform_master_key=master_keys[0],
            workspace_master_key=master_keys[1],
            fs=flaky_fs,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def store(make_store: Callable[..., Datastore]) -> Datastore:
    return make_store()
