"""Encrypted object storage: two AES-256-GCM layers, versioned keys, crypto-shredding.

Entry points: `from_settings(settings)` builds the installation's `Datastore`;
`Datastore.create(root, platform_master_key=..., workspace_master_key=...)` builds one from
explicit keys (tests, tools).
"""

from modelport.datastore.blobs import BlobStore, LocalBlobStore
from modelport.datastore.errors import CorruptObject, StorageUnavailable
from modelport.datastore.settings import from_settings, load_master_key
from modelport.datastore.store import (
    Datastore,
    GcReport,
    KeyVersionRef,
    ObjectInfo,
    PlaintextStream,
    PurgeReport,
    RewrapReport,
    WorkspaceKeyInfo,
)

__all__ = [
    "BlobStore",
    "CorruptObject",
    "Datastore",
    "GcReport",
    "KeyVersionRef",
    "LocalBlobStore",
    "ObjectInfo",
    "PlaintextStream",
    "PurgeReport",
    "RewrapReport",
    "StorageUnavailable",
    "WorkspaceKeyInfo",
    "from_settings",
    "load_master_key",
]
