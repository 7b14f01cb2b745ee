"""The one interface every safety backend implements, and what it returns.

A backend turns texts into an `Analysis`: a severity per harm category, and whether the text
is a jailbreak attempt or contains profanity. It does not know about thresholds, modes,
blocklists or the wire schema; `screening.Screener` applies those, so every backend behaves
the same on the wire. A backend raises whatever it raises; the screener turns any exception
into `SafetyUnavailable` (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from modelport.config import Settings

Category = Literal["hate", "sexual", "violence", "self_harm"]
Severity = Literal["safe", "low", "medium", "high"]

CATEGORIES: tuple[Category, ...] = ("hate", "sexual", "violence", "self_harm")
SEVERITIES: tuple[Severity, ...] = ("safe", "low", "medium", "high")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Analysis:
    """What a backend found in one text. `severities` always has every category."""

    severities: Mapping[str, Severity]
    jailbreak: bool = False
    profanity: bool = False
    #: backend-specific scores (probabilities), for evaluation and debugging; never user content
    scores: Mapping[str, float] = field(default_factory=dict)
    #: what this analysis vouches for, as `Screener.needed` names it: None (a full analysis, every
    #: category at every severity, both detectors), or the heads a cascade's first stage cleared
    #: at the default threshold (safety/cascade.py); the Screener refuses one that does not cover
    #: what its configuration needs
    covers: frozenset[str] | None = None

    def __post_init__(self) -> None:
        missing = [c for c in CATEGORIES if c not in self.severities]
        if missing or any(s not in SEVERITIES for s in self.severities.values()):
            raise ValueError(f"an Analysis needs a valid severity for every category (missing {missing})")

    @classmethod
    def safe(cls) -> Analysis:
        return cls(severities=dict.fromkeys(CATEGORIES, "safe"))


@dataclass(frozen=True)
class BackendSettings:
    """What the installation gives every safety backend it builds (`create_backend(name,
    settings=...)`), taken from the typed Settings, never from the environment.

    `cache_dir`: a directory where a backend may keep files derived from its model between
    processes (weights, compiled graphs; never a screened text); None: it keeps nothing."""

    cache_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BackendSettings:
        return cls(cache_dir=settings.cache_dir / "safety")


@runtime_checkable
class SafetyBackend(Protocol):
    """Analyze a batch of texts; return one Analysis per text, in order.

    Async because backends differ: the MiniLM backend runs its model in a worker thread (the
    gateway's event loop never blocks on a forward pass), the LLM judge awaits a chat
    deployment. Batching is the backend's business. `name` is a short identifier shown to
    operators.
    """

    name: str

    async def analyze(self, texts: list[str]) -> list[Analysis]: ...
