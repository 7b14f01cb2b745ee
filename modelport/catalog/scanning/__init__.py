"""Artifact scanning for the model catalog.

Every model is scanned at import and again before a deployment loads it (`scan_model`):
sha256 and size of every file, strict structural validation of GGUF and safetensors headers,
picklescan on pickle-based files, and a sandboxed render of the chat template. A model whose
report did not pass cannot be curated or deployed. Loaders verify the recorded sha256
(`verify_sha256`) before they read weights, and load pickles only weights-only
(`load_weights_only`).
"""

from modelport.catalog.scanning.chat_template import check_chat_template, render_chat_template
from modelport.catalog.scanning.gguf import read_gguf_metadata
from modelport.catalog.scanning.hashing import sha256_file, verify_sha256
from modelport.catalog.scanning.pickles import load_weights_only
from modelport.catalog.scanning.report import Finding, ScanReport
from modelport.catalog.scanning.safetensors import read_safetensors_metadata
from modelport.catalog.scanning.scan import SCAN_POLICY_VERSION, scan_model

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
