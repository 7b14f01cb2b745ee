"""A text already screened is not classified again (issue 15): analyses kept by a keyed hash.

`CachedBackend` wraps a backend: each text's analysis is looked up by HMAC-SHA256 of the text
(its screening form: the Screener hands the backend nothing else) under a random key made when
the process starts and never written anywhere; only texts not found go to the backend, as one
batch. The cache holds digests and analyses (severities, flags, scores), never a text, and a
digest cannot be checked against a guessed text without the key, which lives only in this
process's memory (P1). It is bounded (`max_entries`, least recently used first out) and
lives as long as the process, so a restart starts empty.

The analysis of a text depends on the backend and its model only, never on the deployment:
thresholds, modes and blocklists are applied afterwards by the Screener, so one cache per
loaded backend serves every deployment that uses it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict

from modelport.safety.backends.base import Analysis, SafetyBackend

DEFAULT_ENTRIES = 8192


class AnalysisCache:
    """Digest -> analysis, least recently used first out; safe to share between threads."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be 0 (no cache) or more")
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, Analysis] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def digest(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def get(self, digest: bytes) -> Analysis | None:
        with self._lock:
            found = self._entries.get(digest)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(digest)
            self.hits += 1
            return found

    def put(self, digest: bytes, analysis: Analysis) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[digest] = analysis
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class CachedBackend:
    """A backend whose analyses are cached (see the module docstring). Same interface; `inner`
    is the wrapped backend, `name` its name.

    `analyze_for(texts, need)`: what the Screener calls, with what its configuration needs
    (`Screener.needed`). A cached analysis is used only if it covers that: a full analysis
    (`covers` None) always does; one a cascade's first stage answered (`covers`: the heads it
    cleared) only for a need within them. So a text cleared for an answer (no jailbreak head)
    is classified again when it comes as a prompt whose deployment detects jailbreaks."""

    def __init__(self, inner: SafetyBackend, cache: AnalysisCache | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.cache = cache if cache is not None else AnalysisCache()

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        return await self.analyze_for(texts, None)

    async def analyze_for(self, texts: list[str], need: frozenset[str] | None) -> list[Analysis]:
        digests = [self.cache.digest(t) for t in texts]
        out: list[Analysis | None] = [_covering(self.cache.get(d), need) for d in digests]
        missing = [i for i, a in enumerate(out) if a is None]
        if missing:
            # a text twice in one batch is classified once
            first: dict[bytes, int] = {}
            for i in missing:
                first.setdefault(digests[i], i)
            order = list(first.values())
            batch = [texts[i] for i in order]
            inner_for = getattr(self.inner, "analyze_for", None)
            found = await (inner_for(batch, need) if inner_for is not None else self.inner.analyze(batch))
            if len(found) != len(order):  # the Screener refuses an incomplete answer (fail closed)
                return found
            by_digest = dict(zip((digests[i] for i in order), found, strict=True))
            for i in missing:
                out[i] = by_digest[digests[i]]
            for d, analysis in by_digest.items():
                self.cache.put(d, analysis)
        return out  # type: ignore[return-value]  # every slot is filled above


def _covering(found: Analysis | None, need: frozenset[str] | None) -> Analysis | None:
    """`found` if it answers `need` (None: everything), else None (classify again)."""
    if found is None or found.covers is None:
        return found
    return found if need is not None and need <= found.covers else None
