"""`scan_model`: every check on every file of one model, gathered into one ScanReport.

The catalog runs it at import and again before a deployment loads the model; a model whose
report did not pass is stored with the report but can be neither curated nor deployed. The
scan never raises for a bad artifact: what is wrong goes into the report, so an operator sees
every problem at once.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from modelport.catalog.scanning import safetensors as st
from modelport.catalog.scanning.gguf import chat_templates, inspect_gguf, metadata_from_header
from modelport.catalog.scanning.hashing import sha256_file
from modelport.catalog.scanning.limits import TemplateToCheck, check_templates
from modelport.catalog.scanning.pickles import pickle_kind, scan_pickle_file
from modelport.catalog.scanning.report import Finding, ScanReport
from modelport.errors import InvalidInput, Unprocessable

#: Bumped whenever the policy changes, so stored reports from an older policy can be re-run.
SCAN_POLICY_VERSION = "2"

ModelFormat = Literal["gguf", "safetensors"]


def scanner_versions() -> dict[str, str]:
    versions = {"policy": SCAN_POLICY_VERSION}
    for dist in ("picklescan", "gguf", "safetensors", "jinja2"):
        versions[dist] = importlib.metadata.version(dist)
    return versions


def _file_format(path: Path, name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".gguf":
        return "gguf"
    if suffix == ".safetensors":
        return "safetensors"
    kind = pickle_kind(path, name)
    if kind is not None:
        return kind
    if suffix == ".json":
        return "json"
    return "other"


def _scan_gguf(path: Path, name: str, checks: list[str], templates: list[TemplateToCheck]) -> list[Finding]:
    header, findings = inspect_gguf(path, name)
    checks.append("gguf.structure")
    if header is None or findings:
        return findings
    meta = metadata_from_header(header)
    for key, template in chat_templates(header).items():
        checks.append("chat_template.sandbox")
        templates.append(TemplateToCheck(name, key, template, bos_token=meta["bos_token"] or "",
                                         eos_token=meta["eos_token"] or ""))
    return findings


def _tokenizer_config_templates(path: Path, name: str) -> tuple[dict[str, str], list[Finding]]:
    """Chat templates in a tokenizer_config.json: a string, or a list of {name, template}."""
    try:
        config = st.load_json(path, name)
    except Unprocessable as exc:
        return {}, [Finding(name, "json.parse", "structure", exc.message)]
    raw = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(raw, str):
        return {"chat_template": raw}, []
    if isinstance(raw, list):
        out: dict[str, Any] = {}
        for item in raw:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                out[f"chat_template.{item.get('name', len(out))}"] = item["template"]
        return out, []
    return {}, []


def _scan_other(path: Path, name: str, fmt: str, checks: list[str], templates: list[TemplateToCheck]) -> list[Finding]:
    base = PurePosixPath(name).name
    if fmt in ("pickle", "zip"):
        checks.append("pickle.globals")
        return scan_pickle_file(path, name, fmt)
    if base == "tokenizer_config.json":
        found, findings = _tokenizer_config_templates(path, name)
        for key, template in found.items():
            checks.append("chat_template.sandbox")
            templates.append(TemplateToCheck(name, key, template))
        return findings
    if base == "chat_template.jinja":
        checks.append("chat_template.sandbox")
        try:
            template = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return [
                Finding(name, "chat_template.syntax", "structure", "the chat template is not valid UTF-8")
            ]
        templates.append(TemplateToCheck(name, "chat_template.jinja", template))
        return []
    if base == "config.json":
        checks.append("json.parse")
        try:
            st.load_json(path, name)
        except Unprocessable as exc:
            return [Finding(name, "json.parse", "structure", exc.message)]
    return []


def _model_level(files: Mapping[str, Path], fmt: ModelFormat) -> list[Finding]:
    if fmt == "gguf":
        ggufs = [n for n in files if PurePosixPath(n).suffix.lower() == ".gguf"]
        if not ggufs:
            return [Finding("", "model.weights", "structure", "the model has no .gguf file (no weights)")]
        if len(ggufs) > 1:
            return [
                Finding(
                    "",
                    "model.weights",
                    "structure",
                    f"the model has {len(ggufs)} .gguf files; exactly one is required "
                    "(split GGUFs are not supported)",
                )
            ]
        return []
    findings = []
    if not st.weight_files(files):
        findings.append(
            Finding(
                "",
                "model.weights",
                "structure",
                "the model has no .safetensors file (a directory without weights is not a model)",
            )
        )
    for name in files:
        if name.endswith(".safetensors.index.json"):
            findings += st.check_shard_index(files, name)
    return findings


def scan_model(files: Mapping[str, Path], fmt: ModelFormat) -> ScanReport:
    """Scan every file of a model and return the report (it never raises for a bad artifact).

    `files` maps each relative name ("model.safetensors", "1_Pooling/config.json") to a local
    path. Every file gets a streamed sha256 and size; .gguf and .safetensors files get strict
    structural validation; pickle containers get picklescan; chat templates (GGUF header,
    tokenizer_config.json, chat_template.jinja) must render in the sandbox, checked together in a
    child process under CPU, memory and time limits (`limits.py`). A gguf model needs
    exactly one .gguf file, a safetensors model at least one .safetensors file.
    Raises InvalidInput only for an unknown `fmt`.
    """
    if fmt not in ("gguf", "safetensors"):
        raise InvalidInput("format must be 'gguf' or 'safetensors'", field="format")
    findings: list[Finding] = []
    templates: list[TemplateToCheck] = []
    recorded: dict[str, dict[str, Any]] = {}
    for name in sorted(files):
        path = Path(files[name])
        try:
            size = path.stat().st_size
            digest = sha256_file(path)
            file_fmt = _file_format(path, name)
        except OSError as exc:
            reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            findings.append(
                Finding(name, "file.read", "structure", f"the file is {reason}; it cannot be scanned")
            )
            continue
        checks = ["sha256"]
        recorded[name] = {"size": size, "sha256": digest, "format": file_fmt, "checks": checks}
        try:
            if file_fmt == "gguf":
                findings += _scan_gguf(path, name, checks, templates)
            elif file_fmt == "safetensors":
                checks.append("safetensors.structure")
                findings += st.inspect_safetensors(path, name)[1]
            else:
                findings += _scan_other(path, name, file_fmt, checks, templates)
        except OSError:
            findings.append(
                Finding(name, "file.read", "structure", "the file became unreadable during the scan")
            )
    findings += check_templates(templates)
    findings += _model_level(files, fmt)
    return ScanReport(passed=not findings, findings=findings, files=recorded, scanner=scanner_versions())
