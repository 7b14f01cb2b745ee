"""Builders of malicious and broken model artifacts for the scanning tests.

Everything is generated into a test's tmp_path; nothing here is ever unpickled or loaded by the
tests except through the code under test. Gadget payloads only touch a marker file, so that a
test can prove a payload did not run, and would do no harm if one did.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tests.support.models import MINILM_DIR, SMOLLM2_GGUF


def real_gguf() -> Path:
    return SMOLLM2_GGUF


def real_minilm_files() -> dict[str, Path]:
    return {p.relative_to(MINILM_DIR).as_posix(): p for p in sorted(MINILM_DIR.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- pickles


class _Gadget:
    """Pickles as a call of `func(*args)` at load time: the classic __reduce__ payload."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def gadgets(marker: Path) -> dict[str, Any]:
    """Gadget objects by the global they import; each payload would only create `marker`."""
    import builtins
    import cProfile
    import os
    import pydoc
    import timeit

    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Gadget(os.system, f"touch {marker}"),
        "builtins.exec": _Gadget(builtins.exec, touch),
        "builtins.eval": _Gadget(builtins.eval, touch),
        "timeit.timeit": _Gadget(timeit.timeit, touch, "pass", timeit.default_timer, 1),
        "pydoc.pipepager": _Gadget(pydoc.pipepager, "x", f"touch {marker}"),
        "cProfile.run": _Gadget(cProfile.run, touch),
    }


def gadget_pickle(obj: Any, protocol: int = 4) -> bytes:
    """Pickle a gadget inside an innocent-looking state dict."""
    return pickle.dumps({"weight": [0.0, 1.0], "bias": obj}, protocol=protocol)


#: A protocol-0 pickle with a GLOBAL opcode, as a hand-written exploit would look (no \x80 magic).
PROTOCOL0_OS_SYSTEM = b"cos\nsystem\n(S'touch /nonexistent/pwned'\ntR."


def torch_style_zip(path: Path, data_pkl: bytes) -> Path:
    """A zip laid out like torch.save's format ("archive/data.pkl" plus side entries)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/data/0", b"\x00" * 16)
    return path


# ---------------------------------------------------------------- GGUF

SMALL_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_gguf(
    path: Path,
    *,
    chat_template: str | None = SMALL_TEMPLATE,
    extra_kv: dict[str, str] | None = None,
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A small, valid GGUF written by the reference writer (gguf.GGUFWriter)."""
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_file_type(0)
    w.add_token_list(["<unk>", "<s>", "</s>", "hello"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, value in (extra_kv or {}).items():
        w.add_string(key, value)
    if tensors is None:
        tensors = {
            "token_embd.weight": np.arange(32, dtype=np.float32).reshape(4, 8),
            "output_norm.weight": np.ones(8, dtype=np.float32),
        }
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tensor_info_offset(data: bytes, name: str) -> tuple[int, int]:
    """(position of n_dims, n_dims) for the tensor info of `name`, found independently of the
    code under test: the info is the name's bytes followed by u32 n_dims, dims, u32 type, u64 offset."""
    encoded = name.encode()
    pos = data.find(struct.pack("<Q", len(encoded)) + encoded)
    assert pos > 0, name
    at = pos + 8 + len(encoded)
    (n_dims,) = struct.unpack_from("<I", data, at)
    return at, n_dims


def patch_tensor(
    path: Path, name: str, *, dtype: int | None = None, offset: int | None = None, n_dims: int | None = None
) -> None:
    data = bytearray(path.read_bytes())
    at, dims = tensor_info_offset(bytes(data), name)
    type_at = at + 4 + 8 * dims
    if dtype is not None:
        struct.pack_into("<I", data, type_at, dtype)
    if offset is not None:
        struct.pack_into("<Q", data, type_at + 4, offset)
    if n_dims is not None:
        struct.pack_into("<I", data, at, n_dims)
    path.write_bytes(bytes(data))


def tensor_data_offset(path: Path, name: str) -> int:
    data = path.read_bytes()
    at, dims = tensor_info_offset(data, name)
    (off,) = struct.unpack_from("<Q", data, at + 4 + 8 * dims + 4)
    return off


def patch_bytes(path: Path, at: int, raw: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + len(raw)] = raw
    path.write_bytes(bytes(data))


def truncated_copy(src: Path, dst: Path, n_bytes: int) -> Path:
    with open(src, "rb") as fh:
        dst.write_bytes(fh.read(n_bytes))
    return dst


#: The first key's length field sits right after magic (4), version (4), tensor count (8), kv count (8).
FIRST_KEY_LENGTH_AT = 24
UNKNOWN_GGML_TYPE = 4  # Q4_2, removed from ggml; not in GGMLQuantizationType
assert UNKNOWN_GGML_TYPE not in {t.value for t in GGMLQuantizationType}


# ---------------------------------------------------------------- safetensors


def write_raw_safetensors(path: Path, header: dict[str, Any], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def valid_safetensors(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((2, 3), dtype=np.float32), "b": np.ones(4, dtype=np.float16)}, str(path))
    return path


def declare_member_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size a zip's central directory declares for `member` (what a
    zip bomb lies about); the local header is left alone."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = data.find(b"PK\x01\x02")
    while at != -1:
        (name_len,) = struct.unpack_from("<H", data, at + 28)
        if bytes(data[at + 46 : at + 46 + name_len]) == name:
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{member} not in {path}")
