"""Safety backends and their registry.

Backends register as entry points in the group `modelport.safety_backends`, each naming a
factory `(**options) -> SafetyBackend`; built-in backends are registered exactly like a
third-party package would (pyproject.toml). `create_backend(name, **options)` builds one.
`_BUILTIN` mirrors the built-in entry points so that a source checkout whose package metadata
predates them still finds the built-ins; an installed entry point of the same name wins.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from modelport.errors import InvalidInput
from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis, SafetyBackend

GROUP = "modelport.safety_backends"

_BUILTIN = {
    "minilm": "modelport.safety.backends.minilm:MiniLMBackend",
    "hf-local": "modelport.safety.backends.hf_local:HFLocalBackend",
    "llm-judge": "modelport.safety.backends.llm_judge:LLMJudgeBackend",
}


def _load(target: str) -> Callable[..., SafetyBackend]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available_backends() -> dict[str, Callable[[], Callable[..., SafetyBackend]]]:
    """Name -> a loader of the factory, for every registered backend."""
    found: dict[str, Callable[[], Callable[..., SafetyBackend]]] = {
        name: (lambda t=target: _load(t)) for name, target in _BUILTIN.items()
    }
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.load
    return found


def create_backend(name: str, **options: Any) -> SafetyBackend:
    """Build the named backend with its options. An unknown name is the caller's error."""
    loaders = available_backends()
    if name not in loaders:
        raise InvalidInput(f"unknown safety backend {name!r}; registered: {', '.join(sorted(loaders))}",
                           field="backend")
    return loaders[name]()(**options)


__all__ = ["CATEGORIES", "GROUP", "SEVERITIES", "Analysis", "SafetyBackend", "available_backends", "create_backend"]
