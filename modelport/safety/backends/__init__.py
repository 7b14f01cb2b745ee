"""Safety backends and their registry.

Backends register as entry points in the group `modelport.safety_backends`, each naming a
factory `(*, settings: BackendSettings, **options) -> SafetyBackend`; built-in backends are
registered exactly like a third-party package would (pyproject.toml, modelport/plugins.py).
`create_backend(name, settings=..., **options)` builds one; `settings` is the installation's
(`BackendSettings.from_settings`), the options are the backend's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from modelport import plugins
from modelport.errors import InvalidInput
from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis, BackendSettings, SafetyBackend

GROUP = "modelport.safety_backends"


def available_backends() -> dict[str, Callable[[], Callable[..., SafetyBackend]]]:
    """Name -> a loader of the factory, for every registered backend."""
    return {name: functools.partial(_factory, p) for name, p in plugins.plugins(GROUP).items()}


def _factory(plugin: plugins.Plugin) -> Callable[..., SafetyBackend]:
    return cast(Callable[..., SafetyBackend], plugin.load())


def create_backend(name: str, *, settings: BackendSettings | None = None, **options: Any) -> SafetyBackend:
    """Build the named backend with the installation's settings (default: none, so nothing is
    cached) and its own options. An unknown name is the caller's error."""
    loaders = available_backends()
    if name not in loaders:
        raise InvalidInput(f"unknown safety backend {name!r}; registered: {', '.join(sorted(loaders))}",
                           field="backend")
    return loaders[name]()(settings=settings or BackendSettings(), **options)


__all__ = ["CATEGORIES", "GROUP", "SEVERITIES", "Analysis", "BackendSettings", "SafetyBackend", "available_backends",
           "create_backend"]
