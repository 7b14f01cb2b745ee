"""Strict structural validation of GGUF files, and the metadata the catalog reads from them.

Hand-written on purpose: `gguf.GGUFReader` maps the whole file and trusts the offsets and
lengths it reads (a truncated file surfaces as a numpy error deep inside it, or not at all), and
it decodes every array eagerly, which takes about 5 s on the bundled 98 MB model. This parser
reads only the header through an mmap (tensor data is never touched, so memory stays flat),
checks every count, length and offset against the file size before using it, and takes the
type tables (value types, tensor types with their block and type sizes) from the pinned `gguf`
package so that the format's constants are not duplicated here.

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
kv_count x (string key, u32 type, value), tensor_count x (string name, u32 n_dims,
n_dims x u64 dims, u32 type, u64 offset), padding to `general.alignment`, tensor data.
Strings are a u64 byte length followed by UTF-8 bytes; arrays are u32 item type, u64 count, items.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from modelport.catalog.scanning.report import Finding, quote_name
from modelport.errors import NotFound, Unprocessable

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: ggml's GGML_MAX_DIMS; llama.cpp refuses tensors with more dimensions.
MAX_DIMS = 4
#: ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL.
MAX_TENSOR_NAME = 63
#: Report at most this many tensor problems one by one; the rest are counted in one finding.
MAX_TENSOR_FINDINGS = 10

# Smallest possible encodings, used to refuse counts that cannot fit in the file before looping.
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset

_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<B"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: String arrays whose values are kept (the vocabulary, to name the BOS/EOS tokens). Every other
#: array is walked for validation and summarised as `GGUFArray(type, count)`.
KEEP_ARRAYS = frozenset({"tokenizer.ggml.tokens"})


class GGUFFormatError(Exception):
    """Internal: the header cannot be parsed any further. Always converted to a Finding or to
    Unprocessable before it leaves this package."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


@dataclass(frozen=True)
class GGUFArray:
    """An array value that was validated but not kept (its item type and length)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    dims: tuple[int, ...]
    dtype: int
    offset: int  # relative to the start of the data section
    n_bytes: int
    n_elements: int


@dataclass
class GGUFHeader:
    version: int
    file_size: int
    alignment: int
    data_offset: int
    kv: dict[str, Any] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)


class _Cursor:
    """Bounds-checked reads from the mapped file: every read says what it was reading, so the
    error for a truncated or corrupt file names the field and the offset."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            raise GGUFFormatError(
                "gguf.header",
                f"{what} at byte {self.pos} needs {n} bytes but the file ends at byte {self.size} "
                "(truncated or corrupt header)",
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        return fmt.unpack_from(self.buf, self.take(fmt.size, what))[0]

    def string(self, what: str) -> bytes:
        n = self.unpack(_U64, f"length of {what}")
        if n > self.size - self.pos:
            raise GGUFFormatError(
                "gguf.header",
                f"{what} at byte {self.pos} claims {n} bytes but only {self.size - self.pos} remain "
                "in the file (bogus string length or truncated file)",
            )
        start = self.take(n, what)
        return bytes(self.buf[start : start + n])


def _value_type(raw: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise GGUFFormatError("gguf.kv_type", f"{what} has unknown value type {raw}") from None


def _string_array(cur: _Cursor, count: int, key: str, keep: bool) -> list[str]:
    """Walk (and when `keep`, decode) an array of strings. The hot loop of the parser (a
    vocabulary has ~50k-250k entries), so it is inlined; messages are built only on error."""
    buf, pos, size = cur.buf, cur.pos, cur.size
    unpack = _U64.unpack_from
    out: list[str] = []
    for i in range(count):
        if size - pos < 8:
            cur.pos = pos
            cur.take(8, f"length of item #{i} of array {quote_name(key)}")  # raises
        (n,) = unpack(buf, pos)
        pos += 8
        if n > size - pos:
            raise GGUFFormatError(
                "gguf.header",
                f"item #{i} of array {quote_name(key)} at byte {pos} claims {n} bytes but only "
                f"{size - pos} remain in the file (bogus string length or truncated file)",
            )
        if keep:
            out.append(buf[pos : pos + n].decode("utf-8", errors="replace"))
        pos += n
    cur.pos = pos
    return out


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str, keep: bool) -> Any:
    what = f"value of key {quote_name(key)}"
    if vtype == GGUFValueType.STRING:
        return cur.string(what).decode("utf-8", errors="replace")
    if vtype == GGUFValueType.ARRAY:
        item_type = _value_type(cur.unpack(_U32, f"item type of {what}"), f"array {quote_name(key)}")
        if item_type == GGUFValueType.ARRAY:
            raise GGUFFormatError(
                "gguf.kv_type", f"array {quote_name(key)} nests arrays, which GGUF does not allow"
            )
        count = cur.unpack(_U64, f"length of {what}")
        if item_type == GGUFValueType.STRING:
            if count * 8 > cur.remaining():
                raise GGUFFormatError(
                    "gguf.header",
                    f"array {quote_name(key)} claims {count} strings, more than the "
                    f"{cur.remaining()} remaining bytes can hold (truncated or corrupt header)",
                )
            items = _string_array(cur, count, key, keep)
            return items if keep else GGUFArray(int(item_type), count)
        item = _SCALARS[item_type]
        cur.take(count * item.size, f"{count} items of array {quote_name(key)}")
        return GGUFArray(int(item_type), count)
    value = cur.unpack(_SCALARS[vtype], what)
    if vtype == GGUFValueType.BOOL:
        if value not in (0, 1):
            raise GGUFFormatError("gguf.kv_type", f"boolean key {quote_name(key)} holds {value}, not 0 or 1")
        return bool(value)
    return value


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int]:
    raw_name = cur.string(f"name of tensor #{index}")
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise GGUFFormatError("gguf.tensor_info", f"name of tensor #{index} is not valid UTF-8") from None
    if len(raw_name) > MAX_TENSOR_NAME:
        raise GGUFFormatError(
            "gguf.tensor_info", f"tensor {quote_name(name)} has a name longer than {MAX_TENSOR_NAME} bytes"
        )
    n_dims = cur.unpack(_U32, f"dimension count of tensor {quote_name(name)}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFFormatError(
            "gguf.tensor_info",
            f"tensor {quote_name(name)} has {n_dims} dimensions (allowed: 1 to {MAX_DIMS})",
        )
    dims = tuple(cur.unpack(_U64, f"dimension of tensor {quote_name(name)}") for _ in range(n_dims))
    dtype = cur.unpack(_U32, f"type of tensor {quote_name(name)}")
    offset = cur.unpack(_U64, f"data offset of tensor {quote_name(name)}")
    return name, dims, dtype, offset


def _parse(buf: mmap.mmap | bytes, size: int, keep_arrays: frozenset[str]) -> tuple[GGUFHeader, list[tuple]]:
    cur = _Cursor(buf, size)
    magic = bytes(buf[: min(4, size)])
    if magic != GGUF_MAGIC:
        raise GGUFFormatError(
            "gguf.header", "the file does not start with the GGUF magic bytes (not a GGUF file)"
        )
    cur.take(4, "magic")
    version = cur.unpack(_U32, "version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = (
            " (a big-endian GGUF, which llama.cpp cannot load here)" if swapped in SUPPORTED_VERSIONS else ""
        )
        raise GGUFFormatError("gguf.header", f"unsupported GGUF version {version}{hint}; supported: 2 and 3")
    n_tensors = cur.unpack(_U64, "tensor count")
    n_kv = cur.unpack(_U64, "key-value count")
    if n_kv * _MIN_KV_BYTES > cur.remaining():
        raise GGUFFormatError(
            "gguf.header", f"header declares {n_kv} key-value pairs, more than a {size}-byte file can hold"
        )
    if n_tensors * _MIN_TENSOR_INFO_BYTES > cur.remaining():
        raise GGUFFormatError(
            "gguf.header", f"header declares {n_tensors} tensors, more than a {size}-byte file can hold"
        )

    kv: dict[str, Any] = {}
    for i in range(n_kv):
        raw_key = cur.string(f"key #{i}")
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError("gguf.kv_key", f"key #{i} is not valid UTF-8") from None
        if key in kv:
            raise GGUFFormatError("gguf.kv_key", f"key {quote_name(key)} appears more than once")
        vtype = _value_type(cur.unpack(_U32, f"type of key {quote_name(key)}"), f"key {quote_name(key)}")
        kv[key] = _read_value(cur, vtype, key, key in keep_arrays)

    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise GGUFFormatError("gguf.alignment", "general.alignment must be a power of two")

    infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
    data_offset = -(-cur.pos // alignment) * alignment
    header = GGUFHeader(version=version, file_size=size, alignment=alignment, data_offset=data_offset, kv=kv)
    return header, infos


def _check_tensors(header: GGUFHeader, infos: list[tuple], file: str) -> list[Finding]:
    """Check every tensor's type, shape/size agreement, alignment, bounds and overlap, collecting
    findings rather than stopping at the first so that a truncated file reports where it ends."""
    problems: list[tuple[str, str]] = []
    data_size = header.file_size - header.data_offset
    if data_size < 0:
        problems.append(
            (
                "gguf.tensor_bounds",
                f"the tensor data section should start at byte {header.data_offset} but the file is only "
                f"{header.file_size} bytes (truncated)",
            )
        )
    seen: set[str] = set()
    for name, dims, dtype, offset in infos:
        q = quote_name(name)
        if name in seen:
            problems.append(("gguf.tensor_info", f"tensor {q} is declared more than once"))
            continue
        seen.add(name)
        try:
            qtype = GGMLQuantizationType(dtype)
            block_size, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            problems.append(("gguf.tensor_type", f"tensor {q} has unknown tensor type {dtype}"))
            continue
        n_elements = 1
        for d in dims:
            n_elements *= d
        if n_elements >= 2**63:
            problems.append(("gguf.tensor_info", f"tensor {q} has a shape whose element count overflows"))
            continue
        if dims[0] % block_size:
            problems.append(
                (
                    "gguf.tensor_info",
                    f"tensor {q} of type {qtype.name} has a first dimension of {dims[0]}, "
                    f"not a multiple of its block size {block_size}",
                )
            )
            continue
        n_bytes = n_elements // block_size * type_size
        if offset % header.alignment:
            problems.append(
                (
                    "gguf.tensor_bounds",
                    f"tensor {q} starts at data offset {offset}, not a multiple of the "
                    f"alignment {header.alignment}",
                )
            )
            continue
        start = header.data_offset + offset
        end = start + n_bytes
        if end > header.file_size:
            problems.append(
                (
                    "gguf.tensor_bounds",
                    f"tensor {q} occupies bytes [{start}, {end}) but the file has only {header.file_size} "
                    "bytes (truncated file or tensor offset out of bounds)",
                )
            )
            continue
        header.tensors.append(
            GGUFTensor(
                name=name, dims=dims, dtype=dtype, offset=offset, n_bytes=n_bytes, n_elements=n_elements
            )
        )
    ordered = sorted(header.tensors, key=lambda t: t.offset)
    for prev, cur in itertools.pairwise(ordered):
        if prev.offset + prev.n_bytes > cur.offset:
            problems.append(
                (
                    "gguf.tensor_overlap",
                    f"tensors {quote_name(prev.name)} and {quote_name(cur.name)} overlap in the data section",
                )
            )
    if not infos:
        problems.append(
            ("gguf.tensor_info", "the file declares no tensors (a vocabulary-only GGUF is not a model)")
        )

    findings = [Finding(file, check, "structure", msg) for check, msg in problems[:MAX_TENSOR_FINDINGS]]
    if len(problems) > MAX_TENSOR_FINDINGS:
        findings.append(
            Finding(
                file,
                problems[MAX_TENSOR_FINDINGS][0],  # the check of the first one left out
                "structure",
                f"{len(problems) - MAX_TENSOR_FINDINGS} more tensor problems not listed",
            )
        )
    return findings


def inspect_gguf(
    path: Path, file: str, *, keep_arrays: frozenset[str] = KEEP_ARRAYS
) -> tuple[GGUFHeader | None, list[Finding]]:
    """Parse and validate one GGUF file; return its header (None when unparseable) and findings.

    `file` is the relative name used in findings. Raises OSError when the file cannot be opened.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return None, [Finding(file, "gguf.header", "structure", "the file is empty")]
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                header, infos = _parse(buf, size, keep_arrays)
            except GGUFFormatError as exc:
                return None, [Finding(file, exc.check, "structure", exc.message)]
    findings = _check_tensors(header, infos, file)
    return header, findings


def chat_templates(header: GGUFHeader) -> dict[str, str]:
    """Every chat template in the header: `tokenizer.chat_template` and named variants
    (`tokenizer.chat_template.tool_use` ...), keyed by their GGUF key."""
    return {
        k: v
        for k, v in header.kv.items()
        if (k == "tokenizer.chat_template" or k.startswith("tokenizer.chat_template.")) and isinstance(v, str)
    }


def _int(kv: dict[str, Any], key: str) -> int | None:
    v = kv.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(kv: dict[str, Any], key: str) -> str | None:
    v = kv.get(key)
    return v if isinstance(v, str) else None


def _token(kv: dict[str, Any], id_key: str) -> str | None:
    tokens = kv.get("tokenizer.ggml.tokens")
    idx = _int(kv, id_key)
    if isinstance(tokens, list) and idx is not None and 0 <= idx < len(tokens):
        return tokens[idx]
    return None


def _quantization(header: GGUFHeader) -> str | None:
    """The file type's name (`Q4_1`), from `general.file_type`, else the most common tensor type."""
    ft = _int(header.kv, "general.file_type")
    if ft is not None:
        try:
            return LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    if not header.tensors:
        return None
    counts: dict[int, int] = {}
    for t in header.tensors:
        counts[t.dtype] = counts.get(t.dtype, 0) + t.n_bytes
    return GGMLQuantizationType(max(counts, key=counts.__getitem__)).name


def metadata_from_header(header: GGUFHeader) -> dict[str, Any]:
    kv = header.kv
    arch = _str(kv, "general.architecture")
    return {
        "format": "gguf",
        "gguf_version": header.version,
        "architecture": arch,
        "name": _str(kv, "general.name"),
        "license": _str(kv, "general.license"),
        "context_length": _int(kv, f"{arch}.context_length") if arch else None,
        "embedding_length": _int(kv, f"{arch}.embedding_length") if arch else None,
        "chat_template": _str(kv, "tokenizer.chat_template"),
        "bos_token": _token(kv, "tokenizer.ggml.bos_token_id"),
        "eos_token": _token(kv, "tokenizer.ggml.eos_token_id"),
        "file_type": _int(kv, "general.file_type"),
        "quantization": _quantization(header),
        "tensor_count": len(header.tensors),
        "parameter_count": sum(t.n_elements for t in header.tensors),
    }


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Read the catalog's metadata from a GGUF file, validating its structure on the way.

    Returns architecture, name, license, context_length, embedding_length, chat_template,
    bos_token/eos_token (the token strings, when the vocabulary names them), file_type,
    quantization (e.g. "Q4_1"), tensor_count and parameter_count (sum of tensor elements).
    Raises NotFound for a missing file and Unprocessable for an unreadable, truncated or
    otherwise invalid one; the message names the file and what is wrong.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise NotFound(f"{name}: no such GGUF file; check the path", details={"file": name})
    try:
        header, findings = inspect_gguf(path, name)
    except OSError as exc:
        raise Unprocessable(
            f"{name}: the GGUF file cannot be read ({exc.strerror or type(exc).__name__})",
            details={"file": name},
        ) from exc
    if findings or header is None:
        first = findings[0]
        raise Unprocessable(
            f"{name}: not a valid GGUF file: {first.message}",
            details={"file": name, "check": first.check, "findings": [f.to_dict() for f in findings]},
        )
    return metadata_from_header(header)
