"""Find a runtime class by name (entry point) or by `module:Class` reference.

Built-in runtimes register exactly as a third-party package would, in the `modelport.runtimes`
entry-point group (see pyproject.toml and modelport/plugins.py).

An operator may also name a class directly as `package.module:ClassName` (a runtime shipped
outside any distribution); it is imported inside the worker, never in the gateway.
"""

from __future__ import annotations

import importlib

from modelport import plugins
from modelport.errors import InvalidInput
from modelport.runtimes.base import Runtime

ENTRY_POINT_GROUP = "modelport.runtimes"


def available_runtimes() -> dict[str, str]:
    """Runtime names and the `module:Class` they load."""
    return {name: p.target for name, p in plugins.plugins(ENTRY_POINT_GROUP).items()}


def resolve_runtime(ref: str) -> type[Runtime]:
    """Import the runtime class for a registered name or a `module:Class` reference."""
    target = ref if ":" in ref else available_runtimes().get(ref)
    if target is None:
        names = ", ".join(sorted(available_runtimes()))
        raise InvalidInput(f"unknown runtime {ref!r}; installed runtimes: {names}", field="runtime")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"runtime {ref!r} cannot be imported: {type(exc).__name__}: {exc}",
                           field="runtime") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise InvalidInput(f"runtime {ref!r} does not name a modelport Runtime class", field="runtime")
    return cls
