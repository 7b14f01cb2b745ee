"""The default backend: the bundled MiniLM with fine-tuned top layers (see safety/model.py).

A text of up to 128 tokens is scored in one forward pass over its tokens (mean + max pooling,
so one harmful sentence in benign context is not diluted away); a longer text is scored as
overlapping token windows of 64 tokens (overlap 32, see `scores`) and gets, per output, the
highest score of its windows. All windows of a batch run as one or two padded batches.

Inference path (`dtype="auto"`, the default): where the CPU computes bfloat16 natively
(AVX512-BF16 / AMX, `torch.ops.mkldnn._is_mkldnn_bf16_supported()`), the whole encoder is cast to
bfloat16 and traced + frozen with torch.jit (about 2.4x faster than float32 eager on one core;
scores differ by at most a few hundredths, and the thresholds are calibrated on this same path
by train.py); elsewhere it runs float32 eager. The traced graph follows batch size and
sequence length (tests/safety/test_classifier.py compares it with eager outputs).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis
from modelport.safety.model import MAX_TOKENS, OUTPUTS, LoadedModel, load_shipped

_STRIDE = 32
LONG_WINDOW = 64
DTYPES = ("auto", "float32", "bfloat16")


def bf16_supported() -> bool:
    """True when this CPU computes bfloat16 matrix products natively (oneDNN's check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Encoder(nn.Module):
    """Frozen bottom + tuned head as one module: token ids and mask in, output logits out."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.bottom = model.bottom
        self.head = model.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.bottom(input_ids, attention_mask), attention_mask).float()


def build_encoder(model: LoadedModel, dtype: str = "auto", trace: bool | None = None) -> tuple[nn.Module, str]:
    """The inference module and the dtype it computes in ("float32" or "bfloat16").

    `dtype="auto"` picks bfloat16 where `bf16_supported()`; `trace=None` traces exactly when the
    module computes in bfloat16 (where tracing + freezing measurably pays off)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    chosen = ("bfloat16" if bf16_supported() else "float32") if dtype == "auto" else dtype
    encoder = Encoder(model).eval()
    if chosen == "bfloat16":
        encoder = copy.deepcopy(encoder).to(torch.bfloat16)  # `model` itself stays float32
    if trace is None:
        trace = chosen == "bfloat16"
    if not trace:
        return encoder, chosen
    # traced on a batch of two different lengths (padding inside), then frozen (constant
    # weights folded, oneDNN weight layouts prepacked). torch.jit is in maintenance mode and
    # warns about it; the warnings are silenced for these two calls only.
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, (ids, mask), check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    return frozen, chosen


class MiniLMBackend:
    """Fine-tuned MiniLM classifier; loads lazily (about 1 s) and is safe to share between threads.

    `dtype`: "auto" (bfloat16 where the CPU supports it natively, else float32), "float32" or
    "bfloat16"; `trace`: None (trace when bfloat16), True or False."""

    name = "minilm"

    def __init__(self, model_dir: Path | None = None, base_dir: Path | None = None, *,
                 dtype: str = "auto", trace: bool | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
        self._model_dir = model_dir
        self._base_dir = base_dir
        self.requested_dtype = dtype
        self._trace = trace
        self.dtype: str | None = None  # what the loaded encoder computes in
        self._model: LoadedModel | None = None
        self._encoder: nn.Module | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> LoadedModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    model = load_shipped(self._model_dir, self._base_dir)
                    self._encoder, self.dtype = build_encoder(model, self.requested_dtype, self._trace)
                    self._model = model
        return self._model

    def warm_up(self) -> None:
        """Load the model and run a few texts, so the first request does not pay for it (a traced
        graph optimises itself on its first calls)."""
        for _ in range(3):
            self.classify(["warm up", "a second, somewhat longer text to warm up the batch path."])

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        """The SafetyBackend method: `classify` in a worker thread, off the event loop."""
        return await asyncio.to_thread(self.classify, texts)

    def _encode(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Token windows of `texts`, `max_length` tokens each, overlapping by _STRIDE."""
        return self._loaded().tokenizer(  # type: ignore[operator, no-any-return]
            texts, padding=True, truncation=True, max_length=max_length, stride=_STRIDE,
            return_overflowing_tokens=True, return_tensors="pt",
        )

    def _run(self, enc: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        """Sigmoid scores per text of `enc`'s `n` texts: the max over each text's windows."""
        assert self._encoder is not None
        probs = torch.sigmoid(self._encoder(enc["input_ids"], enc["attention_mask"]))
        if probs.shape[0] == n:  # one window per text
            return probs
        mapping = enc["overflow_to_sample_mapping"]
        return torch.stack([probs[mapping == i].amax(0) for i in range(n)])

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> torch.Tensor:
        """Per text, the sigmoid of every output in `OUTPUTS` order (max over its windows).

        A text that fits the 128-token window is scored in one pass; a longer one as windows of
        LONG_WINDOW tokens overlapping by 32, so that a harmful sentence keeps at most about 60
        tokens of benign context around it (in a 128-token window after 90 benign tokens a
        threat scored 0.96, under the 0.99 violence threshold). Texts are tokenized once in the
        common case (every text fits); only a batch with long texts is tokenized again."""
        enc = self._encode(texts, MAX_TOKENS)
        windows = torch.bincount(enc["overflow_to_sample_mapping"], minlength=len(texts)).tolist()
        if all(k == 1 for k in windows):
            return self._run(enc, len(texts))
        short = [i for i, k in enumerate(windows) if k == 1]
        long = [i for i, k in enumerate(windows) if k > 1]
        out = torch.empty(len(texts), len(OUTPUTS))
        if short:
            out[short] = self._run(self._encode([texts[i] for i in short], MAX_TOKENS), len(short))
        out[long] = self._run(self._encode([texts[i] for i in long], LONG_WINDOW), len(long))
        return out

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
