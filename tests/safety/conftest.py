"""Shared fixtures: the real shipped MiniLM safety backend, loaded once per session."""

from __future__ import annotations

import asyncio

import pytest
import torch

from modelport.safety.backends.minilm import MiniLMBackend


@pytest.fixture(scope="session")
def minilm() -> MiniLMBackend:
    torch.set_num_threads(2)
    backend = MiniLMBackend()
    backend.warm_up()
    return backend


def run(coro):
    return asyncio.run(coro)
