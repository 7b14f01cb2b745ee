"""One way to find plugins: entry points, registered by modelport itself exactly as a third party would.

modelport's own runtimes, safety backends, key providers and bundled models are entry points of
its distribution (pyproject.toml), in these groups:

    modelport.runtimes          name -> a Runtime class
    modelport.safety_backends   name -> a factory (*, settings: BackendSettings, **options) -> SafetyBackend
    modelport.key_providers     name -> a factory (Settings) -> KeyProvider | None
    modelport.models            name -> a function () -> BundledModel

One precedence rule: a name belongs to one distribution. Two installed distributions that declare
the same name in a group are refused (PluginConflict names both), never resolved by install order.
A runtime may also be named directly as `package.module:ClassName` (see runtimes/registry.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from modelport.errors import InvalidInput

GROUPS = ("modelport.runtimes", "modelport.safety_backends", "modelport.key_providers", "modelport.models")


class PluginConflict(InvalidInput):
    """Two installed distributions declare one plugin name."""


@dataclass(frozen=True)
class Plugin:
    name: str
    target: str  # module:attribute
    distribution: str

    def load(self) -> object:
        return load_target(self.target)


def plugins(group: str) -> dict[str, Plugin]:
    """The plugins registered in `group`, by name."""
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}")
    found: dict[str, Plugin] = {}
    for ep in entry_points(group=group):
        plugin = Plugin(ep.name, ep.value, _distribution(ep))
        other = found.get(ep.name)
        if other is not None and other.target != plugin.target:
            raise PluginConflict(f"{group}: {ep.name!r} is declared by both {other.distribution} ({other.target}) "
                                 f"and {plugin.distribution} ({plugin.target}); uninstall one of them")
        found[ep.name] = plugin
    return found


def load_target(target: str) -> object:
    """Import `module:attribute`."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"{target!r} is not of the form package.module:name")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidInput(f"{module_name} has no {attr!r}") from None


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "an unknown distribution"
