"""The default backend: the bundled MiniLM with fine-tuned top layers (see safety/model.py).

The classifier pools over all tokens of its input, so one harmful sentence inside a long
benign text gets diluted (measured: a death threat after three benign sentences scored 0.16
instead of 1.0). So a text of more than two sentences is scored as overlapping pairs of
consecutive sentences, and each piece longer than the model's window (128 tokens) as
overlapping token windows (stride 32); the text gets, per output, the highest score of its
pieces. All pieces of a batch run as one padded batch.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import warnings
from pathlib import Path

import torch

from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis
from modelport.safety.model import MAX_TOKENS, OUTPUTS, LoadedModel, load_shipped

_STRIDE = 32
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def pieces(text: str) -> list[str]:
    """The text itself when it has at most two sentences, else every pair of consecutive sentences."""
    sentences = [s for s in _SENTENCE.split(text) if s.strip()]
    if len(sentences) <= 2:
        return [text]
    return [f"{a} {b}" for a, b in itertools.pairwise(sentences)]


def _quantized(model: LoadedModel) -> LoadedModel:
    """Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per
    batch): faster on CPU at a small cost in scores; measured by evaluate.py --int8 and the benchmark.
    torch marks this eager-mode API deprecated in favour of torchao, which is not a dependency
    here; the warning is silenced for this call only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bottom = torch.ao.quantization.quantize_dynamic(model.bottom, {torch.nn.Linear}, dtype=torch.qint8)
        head = torch.ao.quantization.quantize_dynamic(model.head, {torch.nn.Linear}, dtype=torch.qint8)
    return LoadedModel(tokenizer=model.tokenizer, bottom=bottom, head=head, thresholds=model.thresholds)


class MiniLMBackend:
    """Fine-tuned MiniLM classifier; loads lazily (about 1 s) and is safe to share between threads."""

    name = "minilm"

    def __init__(self, model_dir: Path | None = None, base_dir: Path | None = None, *, int8: bool = False) -> None:
        self._model_dir = model_dir
        self._base_dir = base_dir
        self.int8 = int8
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> LoadedModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    model = load_shipped(self._model_dir, self._base_dir)
                    self._model = _quantized(model) if self.int8 else model
        return self._model

    def warm_up(self) -> None:
        """Load the model and run one text, so the first request does not pay for it."""
        self.classify(["warm up"])

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        """The SafetyBackend method: `classify` in a worker thread, off the event loop."""
        return await asyncio.to_thread(self.classify, texts)

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> torch.Tensor:
        """Per text, the sigmoid of every output in `OUTPUTS` order (max over its windows)."""
        m = self._loaded()
        owner: list[int] = []
        flat: list[str] = []
        for i, text in enumerate(texts):
            for piece in pieces(text):
                owner.append(i)
                flat.append(piece)
        enc = m.tokenizer(  # type: ignore[operator]
            flat, padding=True, truncation=True, max_length=MAX_TOKENS, stride=_STRIDE,
            return_overflowing_tokens=True, return_tensors="pt",
        )
        hidden = m.bottom(enc["input_ids"], enc["attention_mask"])
        probs = torch.sigmoid(m.head(hidden, enc["attention_mask"]))
        mapping = torch.tensor(owner)[enc["overflow_to_sample_mapping"]]
        if probs.shape[0] == len(texts):  # one piece, one window per text
            return probs
        return torch.stack([probs[mapping == i].amax(0) for i in range(len(texts))])

    def classify(self, texts: list[str]) -> list[Analysis]:
        """Synchronous analysis of a batch (one padded forward pass over all windows)."""
        if not texts:
            return []
        m = self._loaded()
        thr = m.thresholds
        results = []
        for row in self.scores(texts).tolist():
            score = dict(zip(OUTPUTS, row, strict=True))
            severities = {}
            for cat in CATEGORIES:
                level = 0
                for k in (1, 2, 3):
                    name = f"{cat}>={SEVERITIES[k]}"
                    if score[name] >= thr[name]:
                        level = k  # highest level that passes: a confident "high" is never downgraded
                severities[cat] = SEVERITIES[level]
            results.append(
                Analysis(
                    severities=severities,
                    jailbreak=score["jailbreak"] >= thr["jailbreak"],
                    profanity=score["profanity"] >= thr["profanity"],
                    scores=score,
                )
            )
        return results
