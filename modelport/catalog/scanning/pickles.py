"""Pickle-based files: scanned with picklescan, and loaded only through torch's weights-only unpickler.

Unpickling runs code, so no pickle is ever unpickled to inspect it. `picklescan` disassembles
the opcode stream and lists the globals it would import; it was chosen over `modelscan`
because, measured here, it flags every gadget tried (`os.system`, `builtins.exec`/`eval`,
`timeit.timeit`, `pydoc.pipepager`, `cProfile.run`) where modelscan misses the last three.
Our policy on its verdict is stricter than its CLI's: a global it calls dangerous is a security
finding, and so is any global it merely calls suspicious unless it is one that torch's
weights-only loader accepts anyway (`WEIGHTS_ONLY_EXTRA`), because such a file could not be
loaded weights-only. A file that cannot be disassembled is refused too: making the
disassembler fail is a known way to hide a gadget from it.

Which files: every file with a pickle extension, and any other file whose first bytes say
pickle (protocol 2-5) or zip (torch's format), except GGUF and safetensors files, whose
headers can start with those bytes by chance.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from picklescan.scanner import SafetyLevel, scan_bytes

from modelport.catalog.scanning.report import Finding, quote_name
from modelport.errors import Unprocessable

PICKLE_EXTENSIONS = frozenset({".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle", ".joblib", ".npy"})
NOT_PICKLE_EXTENSIONS = frozenset({".safetensors", ".gguf"})
_PICKLE_MAGIC = tuple(b"\x80" + bytes([v]) for v in range(2, 6))
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

#: Globals picklescan calls "suspicious" (unknown) that torch's weights-only unpickler allows,
#: so a plain state dict that uses them still passes.
WEIGHTS_ONLY_EXTRA: dict[str, frozenset[str]] = {
    "torch._utils": frozenset({"_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_qtensor"}),
    "torch": frozenset(
        {
            "Size",
            "device",
            "float16",
            "float32",
            "float64",
            "bfloat16",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "bool",
        }
    ),
}

MAX_FINDINGS = 10
#: Largest pickle inside a zip that is scanned; torch's data.pkl is kilobytes even for large models.
MAX_ZIP_PICKLE_BYTES = 256 * 1024 * 1024
#: Largest raw (not zipped) pickle file that is scanned. The disassembler keeps every opcode and
#: reads each argument whole, so scanning costs memory in proportion to the file.
MAX_RAW_PICKLE_BYTES = MAX_ZIP_PICKLE_BYTES


def pickle_kind(path: Path, name: str) -> str | None:
    """ "zip" or "pickle" when the file must be scanned as a pickle container, else None."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in NOT_PICKLE_EXTENSIONS:
        return None
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_MAGIC) or suffix in PICKLE_EXTENSIONS:
        return "pickle"
    return None


def _first_pickle_parses(stream: IO[bytes]) -> bool:
    """True when the stream starts with one complete, well-formed pickle."""
    try:
        for _ in pickletools.genops(stream):
            pass
    except Exception:  # genops raises ValueError, struct.error, UnicodeDecodeError ... on junk
        return False
    return True


def _unparseable_members(path: Path, kind: str) -> list[str] | None:
    """Names of pickles inside the file that do not parse (["" ] for a raw pickle file), or None
    when a zip file is not a readable archive."""
    if kind == "pickle":
        with open(path, "rb") as fh:
            return [] if _first_pickle_parses(fh) else [""]
    try:
        with zipfile.ZipFile(path) as zf:
            bad = []
            # Only *.pkl members (torch.load reads data.pkl): raw tensor storages may begin with
            # pickle-like bytes by chance; picklescan still lists any globals found in those.
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    with zf.open(info) as member:
                        if not _first_pickle_parses(member):
                            bad.append(info.filename)
            return bad
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError):
        return None


def _oversized_zip_pickles(path: Path) -> list[str]:
    """Pickle members whose declared size is beyond the limit. Checked before any scanner reads
    them: a disassembler reads opcode arguments whole, so a compressed pickle holding a huge
    BINBYTES would otherwise be a memory bomb. (zipfile stops reading at the declared size.)"""
    try:
        with zipfile.ZipFile(path) as zf:
            return [
                i.filename
                for i in zf.infolist()
                if i.filename.endswith(".pkl") and i.file_size > MAX_ZIP_PICKLE_BYTES
            ]
    except (zipfile.BadZipFile, OSError):
        return []  # reported as an unreadable archive by the parse check


def _global_findings(file: str, result: Any) -> list[Finding]:
    findings = []
    for g in sorted(result.globals, key=lambda g: (g.module, g.name)):
        ref = quote_name(f"{g.module}.{g.name}")
        if g.safety == SafetyLevel.Dangerous:
            findings.append(
                Finding(
                    file,
                    "pickle.globals",
                    "security",
                    f"the pickle imports {ref}, a known code-execution gadget; do not load this file",
                )
            )
        elif g.safety == SafetyLevel.Suspicious and g.name not in WEIGHTS_ONLY_EXTRA.get(g.module, ()):
            findings.append(
                Finding(
                    file,
                    "pickle.globals",
                    "security",
                    f"the pickle imports {ref}, which weights-only loading does not allow",
                )
            )
    return findings


def scan_pickle_file(path: Path, file: str, kind: str) -> list[Finding]:
    """Scan one pickle container (raw pickle, legacy torch file or torch zip) and return findings."""
    suffix = PurePosixPath(file).suffix.lower()
    if kind == "pickle" and path.stat().st_size > MAX_RAW_PICKLE_BYTES:
        return [
            Finding(
                file,
                "pickle.parse",
                "security",
                f"the pickle file is larger than {MAX_RAW_PICKLE_BYTES} bytes; too large to scan, refused "
                "(save the weights as safetensors)",
            )
        ]
    oversized = _oversized_zip_pickles(path) if kind == "zip" else []
    if oversized:
        return [
            Finding(
                file,
                "pickle.parse",
                "security",
                f"archive member {quote_name(m)} unpacks to more than {MAX_ZIP_PICKLE_BYTES} bytes; "
                "too large to scan, refused",
            )
            for m in oversized[:MAX_FINDINGS]
        ]
    try:
        with open(path, "rb") as fh:
            result = scan_bytes(fh, file, suffix or None)
    except Exception as exc:  # picklescan raises assorted errors on malformed input; all mean "unscannable"
        return [
            Finding(
                file,
                "pickle.parse",
                "security",
                f"the file could not be scanned as a pickle ({type(exc).__name__}); refused",
            )
        ]
    findings = _global_findings(file, result)
    if result.scan_err:
        findings.append(
            Finding(
                file, "pickle.parse", "security", "the pickle stream is malformed after its imports; refused"
            )
        )
    bad = _unparseable_members(path, kind)
    if bad is None:
        findings.append(Finding(file, "pickle.parse", "structure", "the file is not a readable zip archive"))
    elif bad == [""]:
        findings.append(
            Finding(
                file,
                "pickle.parse",
                "structure",
                "the file cannot be parsed as a pickle; it cannot be vouched for",
            )
        )
    else:
        findings.extend(
            Finding(
                file, "pickle.parse", "structure", f"archive member {quote_name(m)} is not a parseable pickle"
            )
            for m in bad
        )
    if len(findings) > MAX_FINDINGS:
        extra = len(findings) - MAX_FINDINGS
        findings = findings[:MAX_FINDINGS]
        findings.append(
            Finding(file, "pickle.globals", "security", f"{extra} more pickle problems not listed")
        )
    return findings


def load_weights_only(path: Path) -> Any:
    """Load a pickle-based weights file the only way modelport allows: torch's weights-only
    unpickler, onto the CPU. Raises Unprocessable when the file needs anything beyond tensors
    and plain containers (which is what a gadget needs). Callers scan the file at import and
    verify its sha256 before calling this; torch's own errors for a corrupt file pass through.
    """
    import torch  # imported here: only runtimes that load pickle weights pay for torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise Unprocessable(
            f"{Path(path).name}: refused by the weights-only loader (it needs more than tensors)",
            details={"file": Path(path).name},
        ) from exc
