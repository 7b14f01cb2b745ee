"""The HF LoRA -> llama.cpp adapter GGUF conversion, checked against the reference readers.

The end-to-end check (llama.cpp serving base + adapter answers like the trained model) is in
test_finetune_e2e.py; these pin the layout that makes it work, in milliseconds.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from modelport.finetuning.lora_gguf import build_adapter_gguf, permute_rows


def test_q_k_permutation_is_the_inverse_of_transformers_gguf_loader() -> None:
    """transformers un-permutes Q/K when it loads a llama GGUF; we must permute LoRA B back."""
    # Imported here: it loads torch (~2.4 s CPU), which every process collecting this module paid.
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    w = rng.standard_normal((576, 16)).astype(np.float32)
    undo = LlamaTensorProcessor.__new__(LlamaTensorProcessor)._reverse_permute_weights
    assert np.array_equal(undo(permute_rows(w, 9), 9, 9), w)
    k = rng.standard_normal((192, 16)).astype(np.float32)
    assert np.array_equal(undo(permute_rows(k, 3), 9, 3), k)
    assert not np.array_equal(permute_rows(w, 9), w)


def test_adapter_gguf_metadata_names_and_shapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    prefix = "base_model.model.model.layers.0"
    state = {
        f"{prefix}.self_attn.q_proj.lora_A.default.weight": rng.standard_normal((4, 576)).astype(np.float32),
        f"{prefix}.self_attn.q_proj.lora_B.default.weight": rng.standard_normal((576, 4)).astype(np.float32),
        f"{prefix}.mlp.down_proj.lora_A.default.weight": rng.standard_normal((4, 1536)).astype(np.float32),
        f"{prefix}.mlp.down_proj.lora_B.default.weight": rng.standard_normal((576, 4)).astype(np.float32),
    }
    data = build_adapter_gguf(state, arch="llama", alpha=8, n_head=9, n_head_kv=3)
    path = tmp_path / "a.gguf"
    path.write_bytes(data)
    reader = gguf.GGUFReader(path)
    fields = {name: reader.fields[name].contents() for name in
              ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha")}
    assert fields == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                      "adapter.lora.alpha": 8.0}
    tensors = {t.name: t for t in reader.tensors}
    # ne order (llama.cpp): A is [in, rank], B is [rank, out]
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [576, 4]
    assert list(tensors["blk.0.attn_q.weight.lora_b"].shape) == [4, 576]
    assert list(tensors["blk.0.ffn_down.weight.lora_a"].shape) == [1536, 4]
    b = np.asarray(tensors["blk.0.attn_q.weight.lora_b"].data).reshape(576, 4)
    assert np.array_equal(b, permute_rows(state[f"{prefix}.self_attn.q_proj.lora_B.default.weight"], 9))
    down_b = np.asarray(tensors["blk.0.ffn_down.weight.lora_b"].data).reshape(576, 4)
    assert np.array_equal(down_b, state[f"{prefix}.mlp.down_proj.lora_B.default.weight"])


def test_unknown_module_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no llama\.cpp mapping"):
        build_adapter_gguf({"layers.0.self_attn.qkv_proj.lora_A.weight": np.zeros((2, 2), np.float32)},
                           arch="llama", alpha=1, n_head=1, n_head_kv=1)
