"""Safety backends and their registry.

Backends register as entry points in the group `modelport.safety_backends`, each naming a
factory `(**options) -> SafetyBackend`; built-in backends are registered exactly like a
third-party package would (pyproject.toml, modelport/plugins.py). `create_backend(name, **options)`
builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from modelport import plugins
from modelport.errors import InvalidInput
from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis, SafetyBackend

GROUP = "modelport.safety_backends"


def available_backends() -> dict[str, Callable[[], Callable[..., SafetyBackend]]]:
    """Name -> a loader of the factory, for every registered backend."""
    return {name: (lambda p=p: cast(Callable[..., SafetyBackend], p.load()))
            for name, p in plugins.plugins(GROUP).items()}


def create_backend(name: str, **options: Any) -> SafetyBackend:
    """Build the named backend with its options. An unknown name is the caller's error."""
    loaders = available_backends()
    if name not in loaders:
        raise InvalidInput(f"unknown safety backend {name!r}; registered: {', '.join(sorted(loaders))}",
                           field="backend")
    return loaders[name]()(**options)


__all__ = ["CATEGORIES", "GROUP", "SEVERITIES", "Analysis", "SafetyBackend", "available_backends", "create_backend"]
