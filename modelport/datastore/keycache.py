"""A short-lived in-memory cache of unwrapped data keys.

Unwrapping costs a key-provider call (a network round trip for KMS). Caching unwrapped data keys
saves it for repeated reads, but it also delays a key's disable: a read served from the cache
does not ask the provider. The TTL (default 60 s) is that delay's upper bound, which is the
promise made to a customer who disables their key; `ttl=0` turns caching off. Entries are also
evicted at once when this process disables, retires or deletes through the datastore.
Unwrapped keys live only in this process's memory, never on disk.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from modelport.datastore.envelope import DataKeys

CacheKey = tuple[str, str, str]  # workspace id, object id, blob key (unique per object version)


class DataKeyCache:
    def __init__(
        self, ttl: float = 60.0, *, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl < 0:
            raise ValueError("ttl must be >= 0")
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, tuple[float, DataKeys]] = OrderedDict()

    def get(self, key: CacheKey) -> DataKeys | None:
        if self.ttl == 0:
            return None
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            expires, keys = hit
            if self._clock() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return keys

    def put(self, key: CacheKey, keys: DataKeys) -> None:
        if self.ttl == 0:
            return
        with self._lock:
            # The expiry counts from the unwrap, never refreshed by hits: a disabled key stops
            # working within `ttl` of the last real unwrap, however busy the object is.
            self._entries[key] = (self._clock() + self.ttl, keys)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def evict(self, workspace_id: str, object_id: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._entries if _matches(k, workspace_id, object_id)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _matches(key: CacheKey, workspace_id: str, object_id: str | None) -> bool:
    return key[0] == workspace_id and (object_id is None or key[1] == object_id)
