"""A backend that runs an operator-supplied Hugging Face text-classification model from a local path.

For operators with a stronger classifier than the bundled one. The directory is scanned like
any model artifact (`scan_model(files, "safetensors")`: structure, pickles, templates) and
refused when the scan fails; weights load from safetensors only, no remote code, no hub.

Label mapping (`label_map`): a model label name -> "hate" | "sexual" | "violence" |
"self_harm" | "jailbreak" | "profanity", or "<category>:<severity>" for models that predict a
severity directly; unmapped labels (e.g. "safe", "neutral") are ignored. Without a map the
model's own label names are used when they are those names. A category label's probability
becomes a severity through `severity_cutoffs` (probability >= cutoff), defaults low 0.35,
medium 0.5, high 0.8. Multi-label models (problem_type multi_label_classification) use a
sigmoid per label, others a softmax.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from modelport.catalog.scanning import scan_model
from modelport.errors import Unprocessable
from modelport.offload import run_blocking
from modelport.safety.backends.base import (
    CATEGORIES,
    SEVERITIES,
    Analysis,
    BackendSettings,
    severity_rank,
)

_TARGETS = (*CATEGORIES, "jailbreak", "profanity")
DEFAULT_CUTOFFS = {"low": 0.35, "medium": 0.5, "high": 0.8}
_MAX_FILES = 1000


def _model_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path
            if len(files) > _MAX_FILES:
                raise Unprocessable(f"the classifier directory has more than {_MAX_FILES} files", field="path")
    return files


class HFLocalBackend:
    """Text-classification model from a local directory, scanned before it is loaded."""

    name = "hf-local"

    def __init__(self, path: str | Path, *, label_map: Mapping[str, str] | None = None,
                 severity_cutoffs: Mapping[str, float] | None = None, max_tokens: int = 256,
                 batch_size: int = 32, settings: BackendSettings | None = None) -> None:
        del settings  # the operator's model is loaded as it is: nothing derived is kept between processes
        self.path = Path(path)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.cutoffs = dict(severity_cutoffs or DEFAULT_CUTOFFS)
        if set(self.cutoffs) != {"low", "medium", "high"}:
            raise ValueError("severity_cutoffs needs exactly low, medium and high")
        self._label_map = dict(label_map) if label_map is not None else None
        self._lock = threading.Lock()
        self._loaded: tuple[object, object, dict[int, tuple[str, str | None]], bool] | None = None

    def load(self) -> None:
        """Scan, then load. Raises Unprocessable when the directory is not a clean safetensors model."""
        if not self.path.is_dir():
            raise Unprocessable("the classifier path is not a directory", field="path")
        report = scan_model(_model_files(self.path), "safetensors")
        if not report.passed:
            checks = sorted({f.check for f in report.findings})
            raise Unprocessable(f"the classifier failed the artifact scan ({', '.join(checks)}); it was not loaded",
                                field="path", details={"scan": report.to_dict()})
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(self.path), local_files_only=True, use_safetensors=True, trust_remote_code=False
        ).eval()
        mapping: dict[int, tuple[str, str | None]] = {}
        for idx, label in model.config.id2label.items():
            target = (self._label_map or {}).get(label, label if self._label_map is None else None)
            if target is None:
                continue
            cat, _, sev = str(target).partition(":")
            if cat not in _TARGETS or (sev and sev not in SEVERITIES[1:]):
                continue
            mapping[int(idx)] = (cat, sev or None)
        if not mapping:
            raise Unprocessable("none of the classifier's labels maps to a safety category; give a label_map",
                                field="label_map")
        multi = model.config.problem_type == "multi_label_classification"
        self._loaded = (tokenizer, model, mapping, multi)

    def _ensure(self) -> tuple[Any, Any, dict[int, tuple[str, str | None]], bool]:  # transformers' tokenizer, model
        with self._lock:
            if self._loaded is None:
                self.load()
        assert self._loaded is not None
        return self._loaded

    def _severity(self, p: float) -> str:
        level = "safe"
        for sev in ("low", "medium", "high"):
            if p >= self.cutoffs[sev]:
                level = sev
        return level

    @torch.inference_mode()
    def classify(self, texts: list[str]) -> list[Analysis]:
        tokenizer, model, mapping, multi = self._ensure()
        out: list[Analysis] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens,
                            return_tensors="pt")
            logits = model(**enc).logits
            probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
            for row in probs.tolist():
                sev: dict[str, str] = dict.fromkeys(CATEGORIES, "safe")
                flags = {"jailbreak": False, "profanity": False}
                scores = {}
                for idx, (cat, fixed) in mapping.items():
                    p = row[idx]
                    scores[f"{cat}:{fixed}" if fixed else cat] = p
                    if cat in flags:
                        flags[cat] = flags[cat] or p >= self.cutoffs["medium"]
                        continue
                    level = (fixed if p >= self.cutoffs["medium"] else "safe") if fixed else self._severity(p)
                    if severity_rank(level) > severity_rank(sev[cat]):
                        sev[cat] = level
                # the label map's severities were checked at load; Analysis checks every one again
                out.append(Analysis(severities=sev, scores=scores, jailbreak=flags["jailbreak"],  # type: ignore[arg-type]
                                    profanity=flags["profanity"]))
        return out

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        return await run_blocking(self.classify, texts)
