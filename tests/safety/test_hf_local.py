"""The Hugging Face local-path backend, with a tiny BERT classifier created in the test."""

from __future__ import annotations

from asyncio import run
from pathlib import Path

import pytest
import torch

from modelport.errors import Unprocessable
from modelport.safety.backends import create_backend
from modelport.safety.backends.base import CATEGORIES, Analysis
from modelport.safety.backends.hf_local import HFLocalBackend
from modelport.safety.config import ContentFilterConfig
from modelport.safety.screening import SafetyUnavailable, Screener

LABELS = ["safe", "violence", "hate:high", "jailbreak"]


def make_tiny_classifier(root: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "kill", "the", "process", "you"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                        problem_type="multi_label_classification")
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # make "violence" fire on every input, "hate:high" never
        model.classifier.bias.copy_(torch.tensor([0.0, 8.0, -8.0, -8.0]))
        model.classifier.weight.zero_()
    out = root / "clf"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (root / "vocab.txt").unlink()
    return out


def test_tiny_classifier_is_scanned_loaded_and_mapped(tmp_path: Path) -> None:
    path = make_tiny_classifier(tmp_path / "m")
    backend = create_backend("hf-local", path=path)
    assert isinstance(backend, HFLocalBackend)
    analyses = run(backend.analyze(["hello world", "kill the process"]))
    assert len(analyses) == 2 and all(isinstance(a, Analysis) for a in analyses)
    for a in analyses:
        assert set(a.severities) == set(CATEGORIES)
        assert a.severities["violence"] == "high"  # sigmoid(8) is above the high cutoff
        assert a.severities["hate"] == "safe" and not a.jailbreak
    verdict = run(Screener(backend, ContentFilterConfig()).screen_prompt("hello"))
    assert verdict.filtered and verdict.filtered_reasons == ("violence",)


def test_label_map_renames_labels(tmp_path: Path) -> None:
    path = make_tiny_classifier(tmp_path / "m")
    backend = HFLocalBackend(path, label_map={"violence": "self_harm:medium"})
    (a,) = backend.classify(["hello"])
    assert a.severities["self_harm"] == "medium" and a.severities["violence"] == "safe"


def test_a_model_that_fails_the_scan_is_refused_and_screening_fails_closed(tmp_path: Path) -> None:
    path = make_tiny_classifier(tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)  # not a safetensors file any more
    backend = HFLocalBackend(path)
    with pytest.raises(Unprocessable, match="artifact scan"):
        backend.load()
    with pytest.raises(SafetyUnavailable):
        run(Screener(backend, ContentFilterConfig()).screen_prompt("hello"))
