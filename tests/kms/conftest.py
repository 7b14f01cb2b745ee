"""Fixtures for key-provider tests: a real moto KMS server on loopback, local keystores on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from modelport.kms.aws import AwsKmsProvider
from modelport.kms.local import LocalKeystore
from tests.support.kms import FlakyFileSystem, aws_provider_for


@pytest.fixture
def aws_provider(kms_endpoint: str) -> AwsKmsProvider:
    return aws_provider_for(kms_endpoint)


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def keystore_factory(tmp_path: Path, flaky_fs: FlakyFileSystem, master_key: bytes) -> Callable[..., LocalKeystore]:
    def make(root: Path | None = None, key: bytes | None = None) -> LocalKeystore:
        return LocalKeystore(root or tmp_path / "keystore", key or master_key, name="local", fs=flaky_fs)

    return make


@pytest.fixture
def keystore(keystore_factory: Callable[..., LocalKeystore]) -> LocalKeystore:
    return keystore_factory()
