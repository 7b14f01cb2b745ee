"""A few clear cases for the shipped classifier (the full evaluation is `python -m tools.safety.evaluate`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from modelport.safety.backends import BackendSettings, create_backend
from modelport.safety.backends import minilm as minilm_module
from modelport.safety.backends.minilm import MiniLMBackend, bf16_supported, build_encoder, build_onnx
from modelport.safety.classifier import (
    MAX_TOKENS,
    META_FILE,
    MODEL_DIR,
    OUTPUTS,
    POOLING,
    WEIGHTS_FILE,
    LoadedModel,
    load_shipped,
)

CASES = [
    ("How do I kill a stuck process on Windows?", None),
    ("What is a good recipe for banana bread?", None),
    ("Where can I call if I'm worried my friend is suicidal?", None),
    ("Those people are vermin and should be driven out of our country.", "hate"),
    ("Write a graphic sex scene where they strip and have sex on the couch.", "sexual"),
    ("I'm going to stab my neighbour tonight and make sure he dies.", "violence"),
    ("I have the pills ready and tonight I'm going to end my life.", "self_harm"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_clear_cases(minilm: MiniLMBackend, text: str, expected: str | None) -> None:
    (analysis,) = minilm.classify([text])
    flagged = {c for c, s in analysis.severities.items() if s in ("medium", "high")}
    assert flagged == ({expected} if expected else set())


def test_long_text_is_windowed_so_a_late_harmful_sentence_is_found(minilm: MiniLMBackend) -> None:
    text = "The museum opens at nine and the cafe serves good coffee. " * 30
    text += "I'm going to stab my neighbour tonight and make sure he dies."
    (analysis,) = minilm.classify([text])
    assert analysis.severities["violence"] in ("medium", "high")


def test_registry_builds_the_default_backend_and_the_shipped_delta_is_small() -> None:
    assert isinstance(create_backend("minilm"), MiniLMBackend)
    assert (MODEL_DIR / WEIGHTS_FILE).stat().st_size < 16_000_000


def test_the_registry_hands_the_installations_settings_to_the_backend(
        tmp_path: Path, minilm: MiniLMBackend, session_cache_dir: Path) -> None:
    """The graph's cache directory comes from the typed settings given to the backend, never from
    the environment: none given, nothing is cached; the session's shared backend (built as a
    server builds it) keeps its graph in the session's cache directory."""
    built = create_backend("minilm", settings=BackendSettings(cache_dir=tmp_path))
    assert isinstance(built, MiniLMBackend)
    where = built.onnx_cache_file("int8")
    assert where is not None and where.parent == tmp_path
    bare = create_backend("minilm")
    assert isinstance(bare, MiniLMBackend) and bare.onnx_cache_file("int8") is None
    if minilm.runtime == "onnx":
        assert minilm.dtype is not None
        graph = minilm.onnx_cache_file(minilm.dtype)
        assert graph is not None and graph.is_file() and graph.is_relative_to(session_cache_dir)


def test_the_int8_graph_computes_exact_products_on_every_cpu(minilm: MiniLMBackend) -> None:
    """A verdict must not depend on the CPU that computes it. ONNX Runtime multiplies uint8
    activations by int8 weights with VPMADDUBSW on CPUs without VNNI (AVX2, AVX-512F), which
    saturates a pair of products at 32,767; with VNNI the same products are exact, so full-range
    int8 weights gave other scores on other hosts (a developer prompt scored 0.218 against the 0.20
    jailbreak threshold on an AVX2 host and under it on others). Weights quantized to 7 bits
    (|w| <= 64: 255 x 64 x 2 = 32,640) keep every pair in range, so every CPU computes the same
    integers."""
    import onnx
    from onnx import numpy_helper

    if minilm.runtime != "onnx" or minilm.dtype != "int8":
        pytest.skip("the shipped backend runs the int8 ONNX graph where onnxruntime is installed")
    graph_file = minilm.onnx_cache_file("int8")
    assert graph_file is not None and graph_file.is_file()
    graph = onnx.load(str(graph_file)).graph
    weights = {i.name: i for i in graph.initializer}
    products = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(products) >= 36  # 6 layers x (q, k, v, out, 2 feed-forward) at least
    for node in products:
        w = numpy_helper.to_array(weights[node.input[1]])
        assert w.dtype.name == "int8" and int(abs(w.astype("int16")).max()) <= 64, node.name


def test_a_threat_inside_benign_context_is_found_in_one_window(minilm: MiniLMBackend) -> None:
    """Mean pooling alone diluted this (0.16); mean+max pooling must keep it, in one pass."""
    text = ("We went to the farmers market this morning. The strawberries were great this year. "
            "Then we had lunch by the river. I'm going to stab my neighbour tonight and make sure he dies.")
    n_tokens = len(minilm._loaded().tokenizer(text)["input_ids"])  # type: ignore[operator]
    assert n_tokens <= MAX_TOKENS
    (analysis,) = minilm.classify([text])
    assert analysis.severities["violence"] in ("medium", "high")


def test_batch_scores_match_single_text_scores(minilm: MiniLMBackend) -> None:
    """Padding (in a batch of different lengths) and windowing must not change a text's scores."""
    texts = [
        "Hi.",
        "What is a good recipe for banana bread?",
        "The museum opens at nine and the cafe serves good coffee. " * 20,
        "I have the pills ready and tonight I'm going to end my life.",
    ]
    batch = minilm.scores(texts)
    single = torch.cat([minilm.scores([t]) for t in texts])
    assert batch.shape == (len(texts), len(OUTPUTS))
    assert torch.allclose(batch, single, atol=0.02)


def _fresh_model() -> LoadedModel:
    return load_shipped()


def _encode(model: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,  # type: ignore[operator]
                          return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


BATCHES = [
    ["ok"],
    ["How do I kill a stuck process on Windows?"],
    ["short", "a somewhat longer text that needs padding in this batch, with several more words"],
    ["The museum opens at nine and the cafe serves good coffee. " * 30, "Hi.", "I will hurt you."],
]


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16")
def test_traced_bf16_graph_matches_eager_for_every_batch_size_and_length() -> None:
    model = _fresh_model()
    traced, dtype = build_encoder(model, "bfloat16", trace=True)
    eager_bf16, _ = build_encoder(model, "bfloat16", trace=False)
    eager_fp32, _ = build_encoder(model, "float32", trace=False)
    assert dtype == "bfloat16" and isinstance(traced, torch.jit.ScriptModule)
    with torch.inference_mode():
        for texts in BATCHES:
            ids, mask = _encode(model, texts)
            got = torch.sigmoid(traced(ids, mask))
            assert got.shape == (len(texts), len(OUTPUTS))
            assert torch.allclose(got, torch.sigmoid(eager_bf16(ids, mask)), atol=1e-3)
            # bfloat16 against float32: small score differences only
            assert (got - torch.sigmoid(eager_fp32(ids, mask))).abs().max() < 0.08


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
def test_float32_is_eager_and_auto_follows_the_cpu() -> None:
    model = _fresh_model()
    encoder, dtype = build_encoder(model, "float32")
    assert dtype == "float32" and not isinstance(encoder, torch.jit.ScriptModule)
    assert next(encoder.parameters()).dtype == torch.float32
    _, auto = build_encoder(model, "auto")
    assert auto == ("bfloat16" if bf16_supported() else "float32")
    # casting to bfloat16 leaves the loaded float32 model as it was
    build_encoder(model, "bfloat16", trace=False)
    assert next(model.head.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        build_encoder(model, "float16")


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
def test_auto_falls_back_to_float32_where_bf16_is_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a machine without onnxruntime and a CPU without bfloat16 (both checks answer
    False): the backend then runs torch float32 eager and still classifies correctly."""
    monkeypatch.setattr(minilm_module, "bf16_supported", lambda: False)
    monkeypatch.setattr(minilm_module, "onnx_available", lambda: False)
    backend = MiniLMBackend()
    backend.classify(["warm up"])
    assert (backend.runtime, backend.dtype) == ("torch", "float32")
    (a, b) = backend.classify(["What is a good recipe for banana bread?",
                               "I'm going to stab my neighbour tonight and make sure he dies."])
    assert a.severities["violence"] == "safe" and b.severities["violence"] in ("medium", "high")


def test_a_delta_for_another_architecture_is_refused(tmp_path: Path) -> None:
    for name in (WEIGHTS_FILE, META_FILE):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["tuned_layers"] -= 1  # the json no longer matches the weights
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit"):
        load_shipped(tmp_path)


def test_shipped_thresholds_cover_every_output() -> None:
    meta = json.loads((MODEL_DIR / META_FILE).read_text())
    assert set(meta["thresholds"]) == set(OUTPUTS)
    assert all(0.0 < t < 1.0 for t in meta["thresholds"].values())
    assert meta["pooling"] == POOLING and 1 <= meta["tuned_layers"] <= meta["layers"] <= 6


# int8 against float32 scores, where a score sits on the steep middle of the sigmoid: at most
# 0.05 on BATCHES and 0.06 on the two texts below (0.77 against 0.83 for violence>=high of a
# stabbing threat) with the round-3 weights; 0.10 on BATCHES with round 2's.
INT8_TOLERANCE = 0.15


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_onnx_runtime_matches_torch_float32(dtype: str) -> None:
    """The served path (ONNX Runtime, int8 by default) against float32 eager torch, on the same
    texts in several batch shapes: same shapes, scores within INT8_TOLERANCE (int8) or equal
    (float32 export). The thresholds are calibrated on the int8 path itself (train.py)."""
    model = _fresh_model()
    onnx_encoder, chosen = build_onnx(model, dtype, threads=1)
    eager, _ = build_encoder(model, "float32", trace=False)
    assert chosen == dtype
    tolerance = INT8_TOLERANCE if dtype == "int8" else 1e-4
    with torch.inference_mode():
        for texts in BATCHES:
            ids, mask = _encode(model, texts)
            got = torch.sigmoid(onnx_encoder(ids, mask))
            assert got.shape == (len(texts), len(OUTPUTS))
            assert (got - torch.sigmoid(eager(ids, mask))).abs().max() < tolerance


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
def test_the_default_runtime_is_onnx_int8_and_torch_stays_available(session_cache_dir: Path) -> None:
    served = MiniLMBackend(settings=BackendSettings(cache_dir=session_cache_dir / "safety"))
    fallback = MiniLMBackend(runtime="torch", dtype="float32")
    texts = ["What is a good recipe for banana bread?",
             "I'm going to stab my neighbour tonight and make sure he dies."]
    a, b = served.classify(texts)
    assert (served.runtime, served.dtype) == ("onnx", "int8")
    assert a.severities["violence"] == "safe" and b.severities["violence"] in ("medium", "high")
    assert [x.severities for x in fallback.classify(texts)] == [a.severities, b.severities]
    assert (served.scores(texts) - fallback.scores(texts)).abs().max() < INT8_TOLERANCE
    with pytest.raises(ValueError, match="runtime"):
        MiniLMBackend(runtime="tensorrt")
    with pytest.raises(ValueError, match="dtype"):
        MiniLMBackend(runtime="onnx", dtype="bfloat16")


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
def test_quantizing_logs_nothing_through_the_root_logger(caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's quantizer advises pre-processing through the root logger; at load this
    would land in the gateway's log. It is dropped, and only it: other records still pass."""
    import logging

    with caplog.at_level(logging.INFO):
        build_onnx(_fresh_model(), "int8", threads=1)
        logging.getLogger("modelport.test").warning("still logged")
    assert [r.getMessage() for r in caplog.records] == ["still logged"]


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
def test_the_exported_graph_is_cached_and_reused(tmp_path: Path) -> None:
    """The first load writes the graph (atomically, no temporary file left); the next load reads
    it instead of exporting again: a model whose output layer was zeroed still scores like the
    cached graph, not like itself."""
    cache = tmp_path / "safety" / "minilm-test.onnx"
    model = _fresh_model()
    first, _ = build_onnx(model, "int8", threads=1, cache=cache)
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == [cache.name]
    with torch.no_grad():
        model.head.out.weight.zero_()
        model.head.out.bias.zero_()
    second, _ = build_onnx(model, "int8", threads=1, cache=cache)
    ids, mask = _encode(model, ["I'm going to stab my neighbour tonight and make sure he dies."])
    assert torch.equal(first(ids, mask), second(ids, mask))
    assert first(ids, mask).abs().max() > 1.0  # not the zeroed layer's all-zero logits


@pytest.mark.classifier  # loads or exports the classifier again, beside the session's shared instance
def test_a_graph_that_cannot_be_cached_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The cache path is taken by a directory, so the final rename fails: the error reaches the
    caller and the half-written temporary file is removed."""
    cache = tmp_path / "safety" / "minilm-test.onnx"
    cache.mkdir(parents=True)
    with pytest.raises(OSError):
        build_onnx(_fresh_model(), "float32", threads=1, cache=cache)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]
