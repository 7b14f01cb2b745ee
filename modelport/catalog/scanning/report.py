"""What a scan found, in a shape that is stored with the model and shown to operators.

A `ScanReport` is persisted next to the catalog entry (as JSON, via `to_dict`), so it must be
stable and must never carry file content: a finding names the file, the check and what is
wrong (offsets, sizes, names of keys, tensors or pickle globals), never the values it read.
Names taken from an untrusted file go through `quote_name`, which bounds their length and
escapes control characters, so a crafted key cannot forge log lines or bloat the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FindingKind = Literal["structure", "security"]

#: Longest name (key, tensor, global) quoted in a message; longer ones are cut with an ellipsis.
_MAX_NAME = 80


def quote_name(name: str | bytes) -> str:
    """Quote a name read from an untrusted file for a message: escaped, bounded, always quoted."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    if len(name) > _MAX_NAME:
        name = name[:_MAX_NAME] + "..."
    return repr(name)


@dataclass(frozen=True)
class Finding:
    """One reason a model failed its scan.

    `kind` tells an operator what to do about it: a `structure` finding means the file is not a
    valid artifact (re-export or re-download it); a `security` finding means the file is valid
    but dangerous to load (do not use it). `file` is the relative name inside the model, or ""
    when the finding is about the model as a whole (for example: no weights at all).
    """

    file: str
    check: str
    kind: FindingKind
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        kind = data["kind"]
        if kind not in ("structure", "security"):
            raise ValueError(f"unknown finding kind {kind!r}")
        return cls(file=str(data["file"]), check=str(data["check"]), kind=kind, message=str(data["message"]))


@dataclass
class ScanReport:
    """The outcome of scanning every file of one model.

    `files` maps each relative name to what was recorded about it: `size`, `sha256`, `format`
    (gguf, safetensors, pickle, zip, json, other) and `checks` (the checks that ran on it).
    The sha256 values are the ones later loads and downloads are verified against.
    `scanner` records the versions of the tools that produced the verdict, so a stored report
    can be re-run when a scanner learns new gadgets.
    """

    passed: bool
    findings: list[Finding] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    scanner: dict[str, str] = field(default_factory=dict)

    @property
    def structural_errors(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "structure"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "findings": [f.to_dict() for f in self.findings],
            "files": {name: dict(info) for name, info in self.files.items()},
            "scanner": dict(self.scanner),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanReport:
        return cls(
            passed=bool(data["passed"]),
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            files={str(k): dict(v) for k, v in data.get("files", {}).items()},
            scanner={str(k): str(v) for k, v in data.get("scanner", {}).items()},
        )
