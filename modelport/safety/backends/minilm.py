"""The default backend: the bundled MiniLM with fine-tuned top layers (see safety/classifier.py).

A text of up to 128 tokens is scored in one forward pass over its tokens (mean + max pooling,
so one harmful sentence in benign context is not diluted away); a longer text is scored as
overlapping token windows of 64 tokens (overlap 32, see `scores`) and gets, per output, the
highest score of its windows. All windows of a batch run as one or two padded batches.

Runtimes (`runtime=`):
- "onnx" (the default where onnxruntime is installed): at load, the float32 encoder (shipped
  delta applied to the bundled base) is exported to ONNX in memory and its matrix products are
  quantized to int8 with dynamic activation scales (`dtype="int8"`, the default; 7-bit weights,
  so that every CPU computes the same integers) or kept in float32 (`dtype="float32"`); ONNX
  Runtime runs it on `threads` threads. The graph is kept in the installation's
  `BackendSettings.cache_dir` (Settings.cache_dir / "safety") under a key of the shipped delta
  and library versions, so only the first load pays for export and quantization (about 7 s);
  without a cache directory every load does. Only model weights are written there, never a
  screened text.
- "torch": float32 eager, or bfloat16 traced + frozen with torch.jit where the CPU computes
  bfloat16 natively (AVX512-BF16 / AMX; `dtype="auto"|"float32"|"bfloat16"`).
The thresholds are calibrated on the default path (tools/safety/train.py scores its calibration slice
through this backend), so other paths give scores that differ by a few hundredths; tests
compare every path with float32 eager.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelport.offload import run_blocking
from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis, BackendSettings, Severity
from modelport.safety.classifier import (
    MAX_TOKENS,
    META_FILE,
    MODEL_DIR,
    OUTPUTS,
    WEIGHTS_FILE,
    LoadedModel,
    load_shipped,
)

_STRIDE = 32
LONG_WINDOW = 64
DTYPES = ("auto", "float32", "bfloat16")
RUNTIMES = ("auto", "onnx", "torch")
ONNX_DTYPES = ("auto", "int8", "float32")
GRAPH_VERSION = "fused-2"  # part of the onnx cache key: changes when _build_graph builds another graph


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


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


class _DropFrom(logging.Filter):
    """Drops records logged from a package's own files (by path), lets every other record pass."""

    def __init__(self, package: str) -> None:
        super().__init__()
        self._part = f"/{package}/"

    def filter(self, record: logging.LogRecord) -> bool:
        return self._part not in record.pathname


class OnnxEncoder:
    """The encoder as an ONNX Runtime session: called like the torch module (ids, mask -> logits).

    `per_text`: run each row alone, without its padding. Dynamic int8 quantization scales the
    activations of a whole call by their largest value, so in a batch one text's scores would
    depend on the other texts (measured: 0.25 alone, 0.33 in a batch); a verdict must not depend
    on what else is screened at the same time, so the int8 graph sees one text per call."""

    def __init__(self, session: Any, per_text: bool) -> None:  # an onnxruntime.InferenceSession (untyped library)
        self._session = session
        self.per_text = per_text

    def _call(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (logits,) = self._session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        return logits

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = input_ids.numpy().astype(np.int64, copy=False)
        mask = attention_mask.numpy().astype(np.int64, copy=False)
        if not self.per_text:
            return torch.from_numpy(self._call(ids, mask))
        rows = []
        for i, n in enumerate(mask.sum(1).tolist()):
            rows.append(self._call(ids[i : i + 1, :n], mask[i : i + 1, :n]))
        return torch.from_numpy(np.concatenate(rows))


def export_onnx(model: LoadedModel) -> bytes:
    """The float32 encoder as an ONNX graph (batch size and sequence length dynamic)."""
    encoder = Encoder(model).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0, 0]])
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is legacy
        torch.onnx.export(
            # torch.onnx.export writes to a file object as well as to a path; its annotation names paths only
            encoder, (ids, (ids != 0).long()), buf,  # type: ignore[arg-type]
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "logits": {0: "batch"}},
        )
    return buf.getvalue()


def onnx_cache_key(model_dir: Path, dtype: str) -> str:
    """Changes with the shipped delta, its metadata and the exporting library versions."""
    import onnx
    import onnxruntime as ort

    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, META_FILE):
        h.update((model_dir / name).read_bytes())
    h.update(f"{dtype} {GRAPH_VERSION} torch {torch.__version__} onnx {onnx.__version__} ort {ort.__version__}"
             .encode())
    return h.hexdigest()[:32]


def build_onnx(model: LoadedModel, dtype: str = "auto", threads: int | None = None,
               cache: Path | None = None) -> tuple[OnnxEncoder, str]:
    """An ONNX Runtime encoder and the dtype of its matrix products ("int8" or "float32").

    int8: weights per output channel, activations with dynamic scales, every MatMul but the
    output layer (whose 14 logits stay float32). `cache`: a file to read the graph from, or to
    write it to (atomically) after building it; export and quantization take about 7 s, loading
    the file well under one."""
    import onnxruntime as ort

    if dtype not in ONNX_DTYPES:
        raise ValueError(f"dtype for the onnx runtime must be one of {ONNX_DTYPES}, not {dtype!r}")
    chosen = "int8" if dtype == "auto" else dtype
    graph = cache.read_bytes() if cache is not None and cache.is_file() else _build_graph(model, chosen)
    if cache is not None and not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, prefix=".tmp-", delete=False) as f:
            try:
                f.write(graph)
                f.close()
                os.replace(f.name, cache)
            except BaseException:
                Path(f.name).unlink(missing_ok=True)  # no half-written graph left behind
                raise
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # no busy-waiting between calls: a screened text is a short burst of work on a core the
    # gateway's event loop shares (its threads spun on that core and slowed the rest of the request)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return OnnxEncoder(session, per_text=chosen == "int8"), chosen


def _build_graph(model: LoadedModel, dtype: str) -> bytes:
    """The exported encoder with ONNX Runtime's BERT fusions applied (each residual + layer norm
    one SkipLayerNormalization, each bias + GELU one BiasGelu: about 470 nodes become 270, and a
    short text, whose cost is mostly per node, runs about a fifth faster), then, for int8, its
    matrix products quantized."""
    import onnx
    from onnxruntime.transformers import optimizer

    graph = export_onnx(model)
    hidden = model.head.out.in_features // 2
    # a BertLayer's submodules by attribute: torch types every attribute of a Module as Tensor | Module
    heads = model.head.layers[0].attention.self.num_attention_heads  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="modelport-safety-") as tmp:
        src, fused, dst = Path(tmp) / "encoder.onnx", Path(tmp) / "encoder.fused.onnx", Path(tmp) / "encoder.int8.onnx"
        src.write_bytes(graph)
        # the quantizer logs advice to the root logger, the optimizer's modules to loggers of their own
        quiet = _DropFrom("onnxruntime")
        loggers = [logging.getLogger(), *_package_loggers("onnxruntime")]
        for logger in loggers:
            logger.addFilter(quiet)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden,
                                         opt_level=1).save_model_to_file(str(fused))
                graph = fused.read_bytes()
                if dtype == "int8":
                    from onnxruntime.quantization import QuantType, quantize_dynamic

                    proto = onnx.load_from_string(graph)
                    keep = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and "/out/" in n.name]
                    # 7-bit weights (reduce_range): without VNNI, ONNX Runtime's uint8 x int8 products
                    # saturate in pairs at 32,767 and full-range weights gave host-dependent scores;
                    # with |w| <= 64 every CPU computes the same integers
                    quantize_dynamic(fused, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                                     nodes_to_exclude=keep,
                                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
                    graph = dst.read_bytes()
        finally:
            for logger in loggers:
                logger.removeFilter(quiet)
    return graph


def _package_loggers(package: str) -> list[logging.Logger]:
    """The loggers named after modules loaded from `package`'s files (onnxruntime's transformer
    optimizer imports its modules under top-level names such as `onnx_model`)."""
    part = f"/{package}/"
    names = [name for name, module in list(sys.modules.items())
             if part in (getattr(module, "__file__", None) or "") and name in logging.Logger.manager.loggerDict]
    return [logging.getLogger(name) for name in names]


class MiniLMBackend:
    """Fine-tuned MiniLM classifier; loads lazily (a few seconds with the onnx runtime: export
    and quantization) and is safe to share between threads.

    `runtime`: "auto" (onnx where onnxruntime is installed, else torch), "onnx" or "torch".
    `dtype`: with onnx "auto" (= "int8") or "float32"; with torch "auto" (bfloat16 where the CPU
    supports it natively, else float32), "float32" or "bfloat16". `trace` (torch only): None
    (trace when bfloat16), True or False. `threads`: onnx intra-op threads (default 1: a screened
    text is tens of tokens, too little work to split, and splitting it on a gateway pinned to one
    core cost a thread switch per graph node; concurrent requests run in parallel instead, each
    in its own worker thread). `settings.cache_dir`: where the exported ONNX graph is kept
    between processes (None: built at every load)."""

    name = "minilm"

    def __init__(self, model_dir: Path | None = None, base_dir: Path | None = None, *,
                 runtime: str = "auto", dtype: str = "auto", trace: bool | None = None,
                 threads: int | None = None, settings: BackendSettings | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.runtime = ("onnx" if onnx_available() else "torch") if runtime == "auto" else runtime
        allowed = ONNX_DTYPES if self.runtime == "onnx" else DTYPES
        if dtype not in allowed:
            raise ValueError(f"dtype for the {self.runtime} runtime must be one of {allowed}, not {dtype!r}")
        self._model_dir = model_dir
        self._base_dir = base_dir
        self.requested_dtype = dtype
        self._trace = trace
        self._threads = threads
        self._cache_dir = settings.cache_dir if settings is not None else None
        self.dtype: str | None = None  # what the loaded encoder computes in
        self._model: LoadedModel | None = None
        self._encoder: nn.Module | OnnxEncoder | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> LoadedModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    model = load_shipped(self._model_dir, self._base_dir)
                    if self.runtime == "onnx":
                        dtype = "int8" if self.requested_dtype == "auto" else self.requested_dtype
                        cache = self.onnx_cache_file(dtype)
                        self._encoder, self.dtype = build_onnx(model, dtype, self._threads, cache)
                    else:
                        self._encoder, self.dtype = build_encoder(model, self.requested_dtype, self._trace)
                    self._model = model
        return self._model

    def onnx_cache_file(self, dtype: str) -> Path | None:
        """Where this backend keeps its exported graph of `dtype` (None: no cache directory)."""
        if self._cache_dir is None:
            return None
        return self._cache_dir / f"minilm-{onnx_cache_key(self._model_dir or MODEL_DIR, dtype)}.onnx"

    def warm_up(self) -> None:
        """Load the model and run a few texts, so the first request does not pay for it (a traced
        graph optimises itself on its first calls)."""
        for _ in range(3):
            self.classify(["warm up", "a second, somewhat longer text to warm up the batch path."])

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        """The SafetyBackend method: `classify` in a worker thread, off the event loop."""
        return await run_blocking(self.classify, texts)

    def _encode(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Token windows of `texts`, `max_length` tokens each, overlapping by _STRIDE."""
        return self._loaded().tokenizer(
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
            severities: dict[str, Severity] = {}
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
