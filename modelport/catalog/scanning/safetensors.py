"""Structural validation of safetensors files, and the metadata read from a safetensors model.

The format: u64 little-endian header length N, N bytes of JSON mapping tensor names to
{dtype, shape, data_offsets: [begin, end]} (plus an optional "__metadata__" of str -> str),
then the data area. Our own checks run first because they can say precisely what is wrong
(which tensor, which offsets); `safetensors.safe_open` then confirms the file the way the
loader will see it, so a check we lack cannot let an unloadable file through. Only the header
is read; the data area is never loaded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import safetensors

from modelport.catalog.scanning.report import Finding, quote_name
from modelport.errors import Unprocessable

#: Headers beyond this are refused before reading (the reference implementation's own limit).
MAX_HEADER_BYTES = 100_000_000
#: Small JSON side files (config.json ...) are refused beyond this size.
MAX_JSON_BYTES = 10_000_000
MAX_FINDINGS = 10

#: Bits per element of each dtype the safetensors specification defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

_U64 = struct.Struct("<Q")


class _HeaderError(Exception):
    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _HeaderError("safetensors.header", f"the header names {quote_name(k)} more than once")
        out[k] = v
    return out


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Return (header JSON, data area start, file size)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        if size < 8:
            raise _HeaderError(
                "safetensors.header", f"the file is {size} bytes, too short for a safetensors header"
            )
        (n,) = _U64.unpack(fh.read(8))
        if n > MAX_HEADER_BYTES:
            raise _HeaderError(
                "safetensors.header", f"the header claims {n} bytes (limit {MAX_HEADER_BYTES})"
            )
        if 8 + n > size:
            raise _HeaderError(
                "safetensors.header",
                f"the header claims {n} bytes but the file is only {size} bytes (truncated or corrupt)",
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _HeaderError("safetensors.header", "the header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _HeaderError("safetensors.header", "the header is not a JSON object")
    return header, 8 + n, size


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_tensors(header: dict[str, Any], data_size: int) -> tuple[list[tuple[str, str]], int, int]:
    """Return (problems, tensor count, element count)."""
    problems: list[tuple[str, str]] = []
    spans: list[tuple[int, int, str]] = []
    n_elements = 0
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        problems.append(("safetensors.header", "__metadata__ must map strings to strings"))
    for name, info in header.items():
        if name == "__metadata__":
            continue
        q = quote_name(name)
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            problems.append(("safetensors.header", f"tensor {q} needs exactly dtype, shape and data_offsets"))
            continue
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BITS:
            problems.append(("safetensors.dtype", f"tensor {q} has unknown dtype {quote_name(str(dtype))}"))
            continue
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            problems.append(("safetensors.header", f"tensor {q} has a shape that is not a list of sizes"))
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
            problems.append(("safetensors.header", f"tensor {q} has data_offsets that are not two offsets"))
            continue
        begin, end = offsets
        if begin > end or end > data_size:
            problems.append(
                (
                    "safetensors.tensor_bounds",
                    f"tensor {q} occupies data bytes [{begin}, {end}) but the data area holds {data_size} "
                    "bytes (truncated file or offsets out of bounds)",
                )
            )
            continue
        count = 1
        for d in shape:
            count *= d
        bits = count * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            problems.append(
                (
                    "safetensors.tensor_size",
                    f"tensor {q} of dtype {dtype} and shape {shape} needs {bits / 8:g} bytes but its offsets "
                    f"span {end - begin}",
                )
            )
            continue
        n_elements += count
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            problems.append(
                ("safetensors.tensor_overlap", f"tensor {quote_name(name)} overlaps the one before it")
            )
        elif begin > position:
            problems.append(
                (
                    "safetensors.coverage",
                    f"data bytes [{position}, {begin}) before tensor {quote_name(name)} belong to no tensor",
                )
            )
        position = max(position, end)
    if not problems and position != data_size:
        problems.append(
            ("safetensors.coverage", f"data bytes [{position}, {data_size}) at the end belong to no tensor")
        )
    return problems, len(spans), n_elements


def inspect_safetensors(path: Path, file: str) -> tuple[dict[str, int] | None, list[Finding]]:
    """Validate one safetensors file; return ({tensor_count, parameter_count} or None, findings).

    Raises OSError when the file cannot be opened.
    """
    try:
        header, data_start, size = _read_header(path)
    except _HeaderError as exc:
        return None, [Finding(file, exc.check, "structure", exc.message)]
    problems, n_tensors, n_elements = _check_tensors(header, size - data_start)
    if not problems:
        try:
            with safetensors.safe_open(str(path), framework="numpy") as st:
                st.keys()
        except Exception as exc:  # the library's own verdict; its error types are not public API
            problems.append(
                ("safetensors.load", f"the safetensors library refuses the file ({type(exc).__name__})")
            )
    findings = [Finding(file, check, "structure", msg) for check, msg in problems[:MAX_FINDINGS]]
    if len(problems) > MAX_FINDINGS:
        findings.append(
            Finding(
                file,
                problems[MAX_FINDINGS][0],  # the check of the first one left out
                "structure",
                f"{len(problems) - MAX_FINDINGS} more problems not listed",
            )
        )
    if findings:
        return None, findings
    return {"tensor_count": n_tensors, "parameter_count": n_elements}, []


def check_shard_index(files: Mapping[str, Path], index_name: str) -> list[Finding]:
    """A sharded model's index must name only shards that are part of the model."""
    try:
        index = load_json(files[index_name], index_name)
    except Unprocessable as exc:
        return [Finding(index_name, "safetensors.index", "structure", exc.message)]
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        return [Finding(index_name, "safetensors.index", "structure", "the index has no weight_map object")]
    base = PurePosixPath(index_name).parent
    missing = sorted({str(v) for v in weight_map.values() if str(base / str(v)) not in files})
    return [
        Finding(
            index_name,
            "safetensors.index",
            "structure",
            f"the index names shard {quote_name(m)}, which is not part of the model",
        )
        for m in missing[:MAX_FINDINGS]
    ]


def load_json(path: Path, name: str) -> Any:
    """Read a small JSON side file (config.json ...); Unprocessable when too big or invalid."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_JSON_BYTES:
            raise Unprocessable(
                f"{name}: {size} bytes is too large for a JSON side file", details={"file": name}
            )
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except OSError as exc:
        raise Unprocessable(
            f"{name}: cannot be read ({exc.strerror or type(exc).__name__})", details={"file": name}
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Unprocessable(f"{name}: not valid UTF-8 JSON", details={"file": name}) from exc


_CONFIG_KEYS = (
    "architectures",
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_size",
    "torch_dtype",
)


def weight_files(files: Mapping[str, Path]) -> list[str]:
    return sorted(name for name in files if name.endswith(".safetensors"))


def read_safetensors_metadata(files: Mapping[str, Path]) -> dict[str, Any]:
    """Read the catalog's metadata from a safetensors model's files.

    From `config.json`: architectures, model_type, hidden_size, num_hidden_layers,
    num_attention_heads, intermediate_size, max_position_embeddings, vocab_size, torch_dtype
    (absent keys are None); from `sentence_bert_config.json` (sentence-transformers models):
    max_seq_length; from `tokenizer_config.json`: chat_template (when a string); from the
    weight headers: tensor_count and parameter_count. `context_length` is max_seq_length
    when given, else max_position_embeddings.
    Raises Unprocessable when the model has no .safetensors file, a weight file is invalid, or
    a side file is not valid JSON.
    """
    names = weight_files(files)
    if not names:
        raise Unprocessable(
            "the model has no .safetensors weight file (a directory without weights cannot be imported)"
        )
    tensor_count = 0
    parameter_count = 0
    for name in names:
        try:
            counts, findings = inspect_safetensors(files[name], name)
        except OSError as exc:
            raise Unprocessable(
                f"{name}: cannot be read ({exc.strerror or type(exc).__name__})", details={"file": name}
            ) from exc
        if counts is None:
            raise Unprocessable(
                f"{name}: not a valid safetensors file: {findings[0].message}",
                details={
                    "file": name,
                    "check": findings[0].check,
                    "findings": [f.to_dict() for f in findings],
                },
            )
        tensor_count += counts["tensor_count"]
        parameter_count += counts["parameter_count"]

    config: dict[str, Any] = {}
    if "config.json" in files:
        loaded = load_json(files["config.json"], "config.json")
        if not isinstance(loaded, dict):
            raise Unprocessable("config.json: not a JSON object", details={"file": "config.json"})
        config = loaded
    meta: dict[str, Any] = {"format": "safetensors"}
    meta.update({k: config.get(k) for k in _CONFIG_KEYS})
    max_seq = None
    if "sentence_bert_config.json" in files:
        sbert = load_json(files["sentence_bert_config.json"], "sentence_bert_config.json")
        if isinstance(sbert, dict) and isinstance(sbert.get("max_seq_length"), int):
            max_seq = sbert["max_seq_length"]
    meta["max_seq_length"] = max_seq
    meta["context_length"] = max_seq if max_seq is not None else config.get("max_position_embeddings")
    chat_template = None
    if "tokenizer_config.json" in files:
        tok = load_json(files["tokenizer_config.json"], "tokenizer_config.json")
        if isinstance(tok, dict) and isinstance(tok.get("chat_template"), str):
            chat_template = tok["chat_template"]
    meta["chat_template"] = chat_template
    meta["tensor_count"] = tensor_count
    meta["parameter_count"] = parameter_count
    return meta
