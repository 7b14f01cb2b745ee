"""Artifact scanning for the model catalog.

Every model is scanned at import and again before a deployment loads it (`scan_model`):
sha256 and size of every file, strict structural validation of GGUF and safetensors headers,
picklescan on pickle-based files, and a sandboxed render of the chat template (in a child
process under CPU, memory and time limits). A model whose report did not pass cannot be
curated or deployed. Loaders verify the recorded sha256 (`verify_sha256`) before they read
weights, and load pickles only weights-only (`load_weights_only`).

The names below are imported on first use, so that a process which needs only the template
renderer (a worker, the scan's child process) does not pay for numpy, gguf and picklescan.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelport.catalog.scanning.chat_template import check_chat_template, render_chat_template
    from modelport.catalog.scanning.gguf import read_gguf_metadata
    from modelport.catalog.scanning.hashing import sha256_file, verify_sha256
    from modelport.catalog.scanning.pickles import load_weights_only
    from modelport.catalog.scanning.report import Finding, ScanReport
    from modelport.catalog.scanning.safetensors import read_safetensors_metadata
    from modelport.catalog.scanning.scan import SCAN_POLICY_VERSION, scan_model

_WHERE = {
    "SCAN_POLICY_VERSION": "scan",
    "Finding": "report",
    "ScanReport": "report",
    "check_chat_template": "chat_template",
    "load_weights_only": "pickles",
    "read_gguf_metadata": "gguf",
    "read_safetensors_metadata": "safetensors",
    "render_chat_template": "chat_template",
    "scan_model": "scan",
    "sha256_file": "hashing",
    "verify_sha256": "hashing",
}

__all__ = [
    "SCAN_POLICY_VERSION",
    "Finding",
    "ScanReport",
    "check_chat_template",
    "load_weights_only",
    "read_gguf_metadata",
    "read_safetensors_metadata",
    "render_chat_template",
    "scan_model",
    "sha256_file",
    "verify_sha256",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
