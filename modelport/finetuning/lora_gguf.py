"""HF/peft LoRA weights -> a llama.cpp LoRA adapter GGUF, built in memory.

Why an adapter and not a merged model: the bundled base is Q4_1, and re-quantising a merged
fine-tune to Q4_1 erases what a short fine-tune learned (measured), while llama.cpp serves the
unchanged base plus a ~10 MB f32 adapter at full speed (`Llama(lora_path=...)`).

llama.cpp's own converter (convert_lora_to_gguf.py) is not in the installed wheel, so this is
the small part of it that llama-architecture models need, written with the `gguf` package:

- metadata: general.architecture (must match the base), general.type="adapter",
  adapter.type="lora", adapter.lora.alpha (llama.cpp scales by alpha / rank, as peft does);
- tensors `blk.N.<llama.cpp name>.weight.lora_a` with numpy shape (rank, in) and `.lora_b` with
  (out, rank): GGUF reverses dimensions, so ne(a) = [in, rank] and ne(b) = [rank, out], which is
  what llama.cpp checks against the base tensor's ne = [in, out];
- Q and K: llama.cpp's llama arch stores q_proj/k_proj rows permuted for its rotary layout
  (convert_hf_to_gguf's `permute`); transformers undoes that when it loads a GGUF, so the
  trained B matrices are in HF row order and get the same permutation here. Only B: the
  permutation reorders output rows, and A acts on the input side.

The GGUF is written to a memfd (never a file on disk) and returned as bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

# HF module name -> llama.cpp tensor name inside a block.
MODULE_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
TARGET_MODULES = tuple(MODULE_NAMES)
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's `permute`: interleaved rotary halves, per head, on the rows."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def adapter_tensors(state: Mapping[str, Any], *, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """llama.cpp-named f32 arrays from a peft state dict (tensors or arrays, any prefix)."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        m = _KEY.search(key)
        if m is None:
            continue
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        if module not in MODULE_NAMES:
            raise ValueError(f"LoRA on module {module!r} has no llama.cpp mapping")
        arr = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if which == "B" and module == "q_proj":
            arr = permute_rows(arr, n_head)
        elif which == "B" and module == "k_proj":
            arr = permute_rows(arr, n_head_kv)
        out[f"blk.{layer}.{MODULE_NAMES[module]}.weight.lora_{which.lower()}"] = np.ascontiguousarray(arr)
    if not out:
        raise ValueError("no LoRA tensors found in the state dict")
    return out


def build_adapter_gguf(
    state: Mapping[str, Any], *, arch: str, alpha: float, n_head: int, n_head_kv: int, name: str = "adapter"
) -> bytes:
    """The adapter GGUF's bytes (written through a memfd, so nothing reaches the disk)."""
    import gguf

    tensors = adapter_tensors(state, n_head=n_head, n_head_kv=n_head_kv)
    fd = os.memfd_create("modelport-adapter", os.MFD_CLOEXEC)
    try:
        writer = gguf.GGUFWriter(f"/proc/self/fd/{fd}", arch)
        writer.add_string("general.type", "adapter")
        writer.add_string("general.name", name)
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(alpha))
        for tname in sorted(tensors):
            writer.add_tensor(tname, tensors[tname])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while size > 0:
            chunk = os.read(fd, min(size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
